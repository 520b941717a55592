// Which sm90 kernel variant runs a call: the binding's policy (flash_api.cpp, run_sm90), kept in a
// host-only header so that tests/data/sm90_dispatch_check.cu can print it on a CPU machine.
// Each threshold is a measurement on an H200; docs/kernel-notes.md has the tables. The -D switches
// move the thresholds for A/Bs (the build passes -D flags to the binding's host compile too).
#pragma once

#include "../flash_fwd.h"

// D=64 non-causal runs its short-keys variant, which skips the GEMMs of idle consumers, up to this
// many keys: +4.6 % at S=512, equal at 2048, 1-3 % slower from 4096 on (v11).
#ifndef SK_SM90_D64_FULL_SHORT_KEYS_MAX
#define SK_SM90_D64_FULL_SHORT_KEYS_MAX 2048
#endif
// D=64 causal has three kernels.
// - The short-keys variant up to 1024 keys: two consumers, 128-key blocks (0.78 -> 0.87 of SDPA
//   at S=512 against key blocks of 192, v8), four K/V stages, two Q slots, the stagger, the half
//   softmax.
// - The mid-keys variant from 1025 to 2048 keys: the short-keys traits on three consumers, so one
//   Q slot and no stagger (both need two consumers). Against two consumers: +8 % at S=2048, +12.5 %
//   at 1536, +3.5 % at 1280, -7 % at 1024 (v22). Against the long-keys kernel at 2048: +3 %.
//   Only where seq_len_q is above 1024 as well: its 192-row tiles on short query lengths lost
//   15-22 % against the short-keys variant (seq_len_q of 1-256 over 1536-2048 keys, bottom-right),
//   and were equal at 512 and 1024 queries (after v22).
// - Above that, the long-keys kernel: three consumers, two stages, 128-key blocks (v21).
#ifndef SK_SM90_D64_CAUSAL_SHORT_KEYS_MAX
#define SK_SM90_D64_CAUSAL_SHORT_KEYS_MAX 1024
#endif
#ifndef SK_SM90_D64_CAUSAL_MID_KEYS_MAX
#define SK_SM90_D64_CAUSAL_MID_KEYS_MAX 2048
#endif
#ifndef SK_SM90_D64_CAUSAL_MID_QUERIES_MIN
#define SK_SM90_D64_CAUSAL_MID_QUERIES_MIN 1025
#endif
// Shorter query lengths run the short-keys variant up to this many keys (its range before v22).
#ifndef SK_SM90_D64_CAUSAL_FEW_QUERIES_KEYS_MAX
#define SK_SM90_D64_CAUSAL_FEW_QUERIES_KEYS_MAX 2048
#endif
// D=128 causal runs its short-keys variant (two Q slots) up to this many keys: two slots measured
// +3.5 % at S=512, equal at 1024 and 1 % slower from 2048 on (v12).
#ifndef SK_SM90_D128_CAUSAL_SHORT_KEYS_MAX
#define SK_SM90_D128_CAUSAL_SHORT_KEYS_MAX 1024
#endif
// D=128 non-causal runs its long-keys variant (key blocks of 176) from this many keys: +2-3 % of
// SDPA at 8192 and 16384 keys (v10); at 2048-4096 keys it lost 2.5-4.3 % on v22's kernels.
#ifndef SK_SM90_D128_LONG_KEYS_MIN
#define SK_SM90_D128_LONG_KEYS_MIN 8192
#endif

namespace sessionkit {
namespace sm90 {

// The variant of the sm90 forward that runs a call of this head dim (64, 96, 128 or 256), mask,
// query and key lengths (>= 1); `split` is a split-KV call (non-causal decode shapes,
// FlashFwdParams::num_splits). Returns only the variants generate_kernels.py instantiates:
// kShortKeys at D=64 and at D=128 causal, kMidKeys at D=64 causal, kLongKeys at D=128
// non-causal, kSplitKV for split calls (non-causal), kDefault otherwise.
inline Sm90Variant pick_variant(int head_dim, bool causal, bool split, int seqlen_q,
                                int seqlen_k) {
  if (split && !causal) return Sm90Variant::kSplitKV;
  if (head_dim == 64) {
    if (!causal) {
      return seqlen_k <= SK_SM90_D64_FULL_SHORT_KEYS_MAX ? Sm90Variant::kShortKeys
                                                         : Sm90Variant::kDefault;
    }
    if (seqlen_k <= SK_SM90_D64_CAUSAL_SHORT_KEYS_MAX) return Sm90Variant::kShortKeys;
    if (seqlen_q >= SK_SM90_D64_CAUSAL_MID_QUERIES_MIN) {
      return seqlen_k <= SK_SM90_D64_CAUSAL_MID_KEYS_MAX ? Sm90Variant::kMidKeys
                                                         : Sm90Variant::kDefault;
    }
    // fewer queries than the mid-keys kernel's minimum
    return seqlen_k <= SK_SM90_D64_CAUSAL_FEW_QUERIES_KEYS_MAX ? Sm90Variant::kShortKeys
                                                               : Sm90Variant::kDefault;
  }
  if (head_dim == 128) {
    if (causal) {
      return seqlen_k <= SK_SM90_D128_CAUSAL_SHORT_KEYS_MAX ? Sm90Variant::kShortKeys
                                                            : Sm90Variant::kDefault;
    }
    return seqlen_k >= SK_SM90_D128_LONG_KEYS_MIN ? Sm90Variant::kLongKeys : Sm90Variant::kDefault;
  }
  return Sm90Variant::kDefault;
}

}  // namespace sm90
}  // namespace sessionkit

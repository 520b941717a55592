// Tile shapes and the shared-memory plan of the sm90 family, per head dim.
#pragma once

#include <cstdint>

#include "../flash_fwd.h"

namespace sessionkit {
namespace sm90 {

// Tile shapes per (head dim, mask), chosen by measurement on an H200 (docs/kernel-notes.md):
// consumers (warpgroups of 64 query rows) and the key block. Each is overridable with -D for
// experiments; the defaults are what ships.
#ifndef SK_SM90_CONSUMERS_D64_FULL
#define SK_SM90_CONSUMERS_D64_FULL 3
#endif
#ifndef SK_SM90_BLOCK_N_D64_FULL
#define SK_SM90_BLOCK_N_D64_FULL 128
#endif
#ifndef SK_SM90_CONSUMERS_D64_CAUSAL
#define SK_SM90_CONSUMERS_D64_CAUSAL 3  // long keys (v21; two before, with key block 192)
#endif
#ifndef SK_SM90_CONSUMERS_D64_CAUSAL_SHORT
#define SK_SM90_CONSUMERS_D64_CAUSAL_SHORT 2  // the short-keys variant (seq_len_k <= 1024)
#endif
#ifndef SK_SM90_CONSUMERS_D64_CAUSAL_MID
#define SK_SM90_CONSUMERS_D64_CAUSAL_MID 3  // the mid-keys variant (1025-2048 keys)
#endif
#ifndef SK_SM90_BLOCK_N_D64_CAUSAL
#define SK_SM90_BLOCK_N_D64_CAUSAL 128
#endif
#ifndef SK_SM90_BLOCK_N_D64_CAUSAL_SHORT
#define SK_SM90_BLOCK_N_D64_CAUSAL_SHORT 128  // the short- and mid-keys variants (seq_len_k <= 2048)
#endif
#ifndef SK_SM90_CONSUMERS_D128
#define SK_SM90_CONSUMERS_D128 2
#endif
#ifndef SK_SM90_BLOCK_N_D128_FULL
#define SK_SM90_BLOCK_N_D128_FULL 128
#endif
#ifndef SK_SM90_BLOCK_N_D128_FULL_LONG
#define SK_SM90_BLOCK_N_D128_FULL_LONG 176  // the long-keys variant (seq_len_k >= 8192)
#endif
#ifndef SK_SM90_BLOCK_N_D128_CAUSAL
#define SK_SM90_BLOCK_N_D128_CAUSAL 128
#endif
#ifndef SK_SM90_BLOCK_N_D96
#define SK_SM90_BLOCK_N_D96 128
#endif
#ifndef SK_SM90_BLOCK_N_D256
#define SK_SM90_BLOCK_N_D256 80  // FlashAttention-3's tile; builds without spills only with per-block Q descriptors
#endif
#ifndef SK_SM90_STAGES
#define SK_SM90_STAGES 2
#endif
#ifndef SK_SM90_STAGES_D64
#define SK_SM90_STAGES_D64 SK_SM90_STAGES  // K/V ring depth at D=64 (room for 4 at every D=64 shape)
#endif
#ifndef SK_SM90_STAGES_D64_CAUSAL_SHORT
#define SK_SM90_STAGES_D64_CAUSAL_SHORT 4  // D=64 causal's short- and mid-keys variants (measured +1-2.5 %; six drop the mid-keys variant's O staging)
#endif
#ifndef SK_SM90_STAGES_D128
#define SK_SM90_STAGES_D128 SK_SM90_STAGES  // at D=128 but the 176-key block (3 fit with one Q slot, no O staging)
#endif
#ifndef SK_SM90_Q_STAGES
#define SK_SM90_Q_STAGES 1  // 2: two Q slots where shared memory has room (the next tile's Q loads early)
#endif
#ifndef SK_SM90_Q_STAGES_D128
#define SK_SM90_Q_STAGES_D128 2  // the same at D=128 non-causal and D=128 causal short keys, where it is on
#endif
#ifndef SK_SM90_PINGPONG
#define SK_SM90_PINGPONG 1
#endif
#ifndef SK_SM90_SNAKE
#define SK_SM90_SNAKE 0  // 1: alternate the slot order of the persistent rounds (measured slower)
#endif
#ifndef SK_SM90_DYNAMIC_CAUSAL
#define SK_SM90_DYNAMIC_CAUSAL 1  // causal tiles handed out by an atomic counter (else static)
#endif
#ifndef SK_SM90_L2_SECTION_MB
#define SK_SM90_L2_SECTION_MB 32  // K and V bytes of the (batch, head) pairs of one L2 section
#endif
#ifndef SK_SM90_HEAD_MAJOR_FULL
#define SK_SM90_HEAD_MAJOR_FULL 1  // non-causal two-consumer tiles in (batch, head)-major order
#endif
#ifndef SK_SM90_SKIP_IDLE_ROWS
#define SK_SM90_SKIP_IDLE_ROWS 1  // idle consumers skip their GEMMs (short-keys D64 full only)
#endif
#ifndef SK_SM90_Q_DESC_PER_BLOCK
#define SK_SM90_Q_DESC_PER_BLOCK 0  // 1: rebuild Q's wgmma descriptors per key block (kernel.cuh)
#endif
#ifndef SK_SM90_Q_DESC_PER_BLOCK_D256
#define SK_SM90_Q_DESC_PER_BLOCK_D256 1  // the same at D=256, where it is on by default
#endif
#ifndef SK_SM90_CAUSAL_HALF_FIRST
#define SK_SM90_CAUSAL_HALF_FIRST 0  // 1: half-width Q K^T on a consumer's masked-half first block
#endif
#ifndef SK_SM90_CAUSAL_HALF_SOFTMAX
#define SK_SM90_CAUSAL_HALF_SOFTMAX -1  // -1: per shape; 0 or 1: off or on in every causal kernel
#endif
#ifndef SK_SM90_SOFTMAX_FENCE
#define SK_SM90_SOFTMAX_FENCE -1  // -1: per shape; 1: the wait for P V after the softmax in the SASS
#endif
#ifndef SK_SM90_UNIFORM
#define SK_SM90_UNIFORM -1  // -1: per shape (Traits::kUniform); 0 or 1: off or on in every kernel
#endif
#ifndef SK_SM90_TAIL_SPLIT
#define SK_SM90_TAIL_SPLIT -1  // -1: per shape (Traits::kTailSplit); 0 or 1: off or on in every non-causal kernel
#endif
#ifndef SK_SM90_TAIL_MIN_SAVED
#define SK_SM90_TAIL_MIN_SAVED 4  // the tail split runs when it saves each CTA this many key blocks or more
#endif
#ifndef SK_SM90_STMATRIX_O
#define SK_SM90_STMATRIX_O 0  // 1: O into its TMA staging by stmatrix.x4 instead of 4-byte stores
#endif
#ifndef SK_SM90_WIDE_STORE_O
#define SK_SM90_WIDE_STORE_O -1  // -1: per shape (Traits::kWideStoreO); 0 or 1: O's plain stores 4 or 16 bytes wide
#endif
#ifndef SK_SM90_EARLY_FINALIZE
#define SK_SM90_EARLY_FINALIZE -1  // -1: per shape; 0: in the epilogue; 1: under the tile's last P V; 2: before its waits
#endif
#ifndef SK_SM90_PREFETCH_NEXT
#define SK_SM90_PREFETCH_NEXT 0  // 1: the producer prefetches the next tile's Q and first key blocks into L2; 2: and causal draws its next ticket a tile early
#endif
#ifndef SK_SM90_PREFETCH_BLOCKS
#define SK_SM90_PREFETCH_BLOCKS 2  // key blocks of the next tile that SK_SM90_PREFETCH_NEXT prefetches
#endif
#ifndef SK_SM90_WARP_STORE_O
#define SK_SM90_WARP_STORE_O 0  // 1: each warp stages and TMA-stores its own 16 rows of O (no warpgroup barriers)
#endif
#ifndef SK_SM90_STAGGER
#define SK_SM90_STAGGER -1  // -1: per shape (1 in D64 causal short keys); L >= 0: that many pingpong turns
#endif
#ifndef SK_SM90_Q_PER_CONSUMER
#define SK_SM90_Q_PER_CONSUMER 0  // 1: each consumer's 64 rows of Q in a slot of its own, with its own barriers
#endif
#ifndef SK_SM90_STAGGER_D128
#define SK_SM90_STAGGER_D128 0  // 1: D128 full's consumers one turn apart, O staged in each one's Q rows
#endif
#ifndef SK_SM90_TMA_STORE_O
#define SK_SM90_TMA_STORE_O 1  // O through shared memory and TMA where the shape allows it
#endif

template <int kHeadDim_, bool kCausal_, Sm90Variant kVariant_ = Sm90Variant::kDefault>
struct Traits {
  // The variant for short key sequences (chosen by the binding, sm90/dispatch.h): D=64 causal
  // uses a smaller key block there, where the causal diagonal's waste dominates; D=64 non-causal
  // lets the consumers of a query block's rows past seqlen_q skip their GEMMs (kSkipIdleRows);
  // D=128 causal (seq_len_k <= 1024) has two Q slots (kQStages).
  // The mid-keys variant (D=64 causal, 1025-2048 keys and queries, chosen by the binding) is the
  // short-keys variant on three consumers (SK_SM90_CONSUMERS_D64_CAUSAL_MID): at 2048 keys three
  // measured +8 % over two, at 512-1024 keys 5-7 % slower (docs/kernel-notes.md, v21 and v22).
  // Every other short-keys choice holds for it; the stagger and the two Q slots need two
  // consumers.
  static constexpr bool kMidKeys = kVariant_ == Sm90Variant::kMidKeys;
  static constexpr bool kShortKeys = kVariant_ == Sm90Variant::kShortKeys || kMidKeys;
  // The split-KV variant (decode-shaped calls, non-causal): each tile is one range of key blocks
  // and writes float32 partial results (FlashFwdParams::num_splits). Two consumers at every head
  // dim: the three-consumer D=64 shape has no registers left for the split's bookkeeping.
  static constexpr bool kSplitKV = kVariant_ == Sm90Variant::kSplitKV;
  // The variant for long key sequences (seq_len_k >= 8192, chosen by the binding): D=128
  // non-causal runs key blocks of 176 there (FlashAttention-3's tile), which leaves no shared
  // memory for the TMA store of O; measured +2-3 % at 8k-16k keys and 4-13 % slower at 512-2048.
  static constexpr bool kLongKeys = kVariant_ == Sm90Variant::kLongKeys;
  // Experiment (off; docs/kernel-notes.md, Next hypotheses 0f): D128 full's two consumers one
  // pingpong turn apart (kStagger), on a three-stage ring with per-consumer Q rows
  // (kQPerConsumer), each consumer staging its O in its own Q rows (kOInQ), which it frees for
  // the next tile only after the TMA store of O has read them. That is what fits: three stages
  // (192 KB) and one Q slot (32 KB) leave no room for a separate O staging.
  static constexpr bool kStaggerD128 = SK_SM90_STAGGER_D128 != 0 && kHeadDim_ == 128 &&
                                       !kCausal_ && kVariant_ == Sm90Variant::kDefault;
  static constexpr bool kOInQ = kStaggerD128;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr bool kCausal = kCausal_;
  // D=64 causal of long keys: three consumers (192-row tiles) and 128-key blocks since v21, as
  // D=64 full has; v3 measured three consumers there at 0.89-0.91 of SDPA against 0.96-0.99 for
  // two with 192-key blocks, but with v21's TMA store of O and twenty versions between, three
  // measured +8 % at S=4096, +10 % at 8192 and +9 % at 16384 (docs/kernel-notes.md, v21).
  static constexpr int kConsumerWarpgroups =
      kSplitKV ? 2
      : kHeadDim == 64 ? (kCausal ? (kMidKeys     ? SK_SM90_CONSUMERS_D64_CAUSAL_MID
                                     : kShortKeys ? SK_SM90_CONSUMERS_D64_CAUSAL_SHORT
                                                  : SK_SM90_CONSUMERS_D64_CAUSAL)
                                  : SK_SM90_CONSUMERS_D64_FULL)
      : kHeadDim == 128 ? SK_SM90_CONSUMERS_D128
                        : 2;
  static constexpr int kBlockM = 64 * kConsumerWarpgroups;  // 64 query rows per consumer warpgroup
  static constexpr int kBlockN =
      kHeadDim == 64    ? (kCausal ? (kShortKeys ? SK_SM90_BLOCK_N_D64_CAUSAL_SHORT
                                                 : SK_SM90_BLOCK_N_D64_CAUSAL)
                                   : SK_SM90_BLOCK_N_D64_FULL)
      : kHeadDim == 128 ? (kCausal    ? SK_SM90_BLOCK_N_D128_CAUSAL
                           : kLongKeys ? SK_SM90_BLOCK_N_D128_FULL_LONG
                                       : SK_SM90_BLOCK_N_D128_FULL)
      : kHeadDim == 96  ? SK_SM90_BLOCK_N_D96
                        : SK_SM90_BLOCK_N_D256;
  // K/V ring depth. -DSK_SM90_STAGES_D64=4 (say) deepens the D=64 ring alone: a global
  // -DSK_SM90_STAGES=3 does not fit D=256. Two Q slots and the O staging give way where a deeper
  // ring leaves them no room (kQStages, kTmaStoreO below). D=64 causal's short- and mid-keys
  // variants ship four stages: their tiles hold 1-16 key blocks, and with two the producer could load only
  // one block ahead, so the next tile's first blocks waited for the slots of the one before.
  // Measured in two A/B runs (docs/kernel-notes.md, v13): +2.3 % at S=2048, +0.3-2.4 % at 1024,
  // 0-2 % at 512, both dtypes; six stages lost 0.5-1 %, and four on the other D=64 shapes did
  // nothing (full 512/1024 -0.8 %, 16k equal).
  // (The one-consumer experiment shape, two CTAs per SM at 113 KB each, keeps the D=64 depth.)
  static constexpr int kStages = kHeadDim == 64 && kCausal_ && kShortKeys && kConsumerWarpgroups > 1
                                     ? SK_SM90_STAGES_D64_CAUSAL_SHORT
                                 : kHeadDim == 64                ? SK_SM90_STAGES_D64
                                 : kStaggerD128                  ? 3
                                 : kHeadDim == 128 && !kLongKeys ? SK_SM90_STAGES_D128
                                                                 : SK_SM90_STAGES;
  // A consumer whose 64 rows all lie past seqlen_q skips its GEMMs (see kernel.cuh). The three-
  // consumer D=64 tile is 192 rows, so at S=512 and 1024 the last query block of each head has an
  // idle consumer (11 % of the GEMM work); measured +4.6 % there. Only in the short-keys variant:
  // the extra branch changes the scheduling of the key-block loop (it grew by 3-5 % of its
  // instructions), and long sequences measured 1-5 % slower with it (docs/kernel-notes.md, v11).
  // Q's wgmma descriptors rebuilt per key block instead of held in 2 registers per k-step across
  // the loop (32 registers at D=256): with it, D=256's key block of 80 builds without spills and
  // measured +4-7 % over key block 64 (v12). Elsewhere it measured 1-2.5 % slower (D=64 full and
  // D=128 full at 4096-16384 keys), so only D=256 has it (docs/kernel-notes.md, v12).
  static constexpr bool kQDescPerBlock =
      kHeadDim == 256 ? SK_SM90_Q_DESC_PER_BLOCK_D256 != 0 : SK_SM90_Q_DESC_PER_BLOCK != 0;
  // Causal: a consumer whose first (diagonal) key block has its second half past its last row
  // issues that block's Q K^T at half width (kernel.cuh). Not yet timed: off by default.
  static constexpr bool kCausalHalfFirst =
      SK_SM90_CAUSAL_HALF_FIRST != 0 && kCausal && kBlockN / 2 >= 64 && (kBlockN / 2) % 16 == 0;
  // Causal: on a consumer's first (diagonal) key block whose second half lies wholly past its
  // last row (the first of two consumers when kBlockM = kBlockN: half its keys of that block are
  // masked), the mask and the softmax run on the first half alone and the second half's P is 0,
  // with no exponential of a masked score (kernel.cuh). Measured (docs/kernel-notes.md, v15): D64
  // causal short keys +1.3-2.7 % (S=512-2048, both dtypes), where that block is 20 % of a
  // consumer's blocks at S=512; D64 causal with key block 192 within +-0.5 %, D128 causal -0.5 to
  // -1.6 %, D256 causal equal. Shipped in D64 causal's short-keys variant only.
  static constexpr bool kCausalHalfSoftmaxShipped = kHeadDim == 64 && kShortKeys;
  static constexpr bool kCausalHalfSoftmax =
      (SK_SM90_CAUSAL_HALF_SOFTMAX < 0 ? kCausalHalfSoftmaxShipped
                                       : SK_SM90_CAUSAL_HALF_SOFTMAX != 0) &&
      kCausal && (kBlockN / 2) % 8 == 0;
  // The softmax of key block j overlapping the warpgroup's own P V of block j-1 in the SASS, not
  // only in the source (kernel.cuh). Every two-consumer shape builds without spills with it (the
  // static schedule reading its tiles from the tile ring, kTileRing below); the three-consumer
  // D=64 shape, at 160 registers a thread, spills 4-12 bytes and keeps the plain loop. Measured on
  // the vector-register loop (v14): -1 to -6 %, +3 % at D256 causal. On the uniform loop (v15, two
  // calls): D=128 -0.5 to -2.5 %, D256 full equal and causal -3 %, D64 causal short keys within
  // +-1 %; D64 causal with key block 192, where the uniform loop alone lost 3.6 % (the HGMMAs
  // issued back to back starved the other consumer's exponentials), the two together gain
  // +2.2 % (S=4096), +2.8 % (8192), +3.7 % (16384). Shipped there, with kUniform, only; since
  // v21 that kernel has three consumers and 128-key blocks, so it is in effect nowhere (back with
  // -DSK_SM90_CONSUMERS_D64_CAUSAL=2 -DSK_SM90_BLOCK_N_D64_CAUSAL=192, v20's shape);
  // SK_SM90_SOFTMAX_FENCE=1 or 0 forces it.
  static constexpr bool kSoftmaxFenceShipped = kHeadDim == 64 && kCausal && !kShortKeys && !kSplitKV;
  static constexpr bool kSoftmaxFence =
      (SK_SM90_SOFTMAX_FENCE < 0 ? kSoftmaxFenceShipped : SK_SM90_SOFTMAX_FENCE != 0) &&
      kConsumerWarpgroups <= 2;
  // The consumers' tile index and warpgroup broadcast from lane 0, so that ptxas keeps the ring
  // slots and the K and V descriptors of the key-block loop in uniform registers (K's and V's
  // advanced from their slot's first descriptor by constants): the loop's integer work and its
  // moves to uniform registers (R2UR) before each HGMMA go, 9-18 % of its instructions, and the P V
  // HGMMAs issue back to back. Measured (docs/kernel-notes.md, v14): D=128 and 256 +0.5-9 %
  // (D256 causal 1.00 -> 1.10), D64 causal short keys +1 %; D64 causal with key block 192 -3.6 %
  // alone and +2-4 % with kSoftmaxFence (v15), so it had both (until v21 gave that kernel three
  // consumers and 128-key blocks, where the fence does not apply: the uniform loop alone there, as
  // measured in v21); D64 full 16k -1.4 %, so D64 full kept the vector-register loop. v16: D96 non-causal +4.3 % (S=4096, 1.09 -> 1.14 of SDPA),
  // so it has it; v17: D96 causal +0.7 % (S=2048) and +2.4 % (S=4096, 1.19 -> 1.22 of SDPA), so
  // it has it too; the split-KV kernels (decode, +0.3 %) do not. v20: D64 full, short and long
  // keys, with the tail split that it lets build without spills (kTailSplitShipped): +2.3-2.7 %
  // at S=2048, +1.2-1.8 % at 4096, equal at 1024, -0.2 to -0.4 % at 512, 8192 and 16384.
  static constexpr bool kUniformShipped = !kSplitKV;
  static constexpr bool kUniform = SK_SM90_UNIFORM < 0 ? kUniformShipped : SK_SM90_UNIFORM != 0;
  static constexpr bool kSkipIdleRows = SK_SM90_SKIP_IDLE_ROWS != 0 && kShortKeys && !kCausal;
  // Non-causal tiles are all as long, so the static schedule's last round runs T mod (CTAs) tiles
  // while the other CTAs idle: D=128 at B*S = 16384 tokens and 16 heads is 2048 tiles, 15.5
  // rounds of 132. With the tail split (tail_split.cuh), the last round's tiles are cut by key
  // blocks so that every CTA gets the same number of them; each piece writes its float32 O, row
  // max and row sum to scratch memory, and the last piece of a tile to finish (a counter per tile
  // and consumer) merges them in a fixed order and runs the normal epilogue (kernel.cuh).
  // The host plans it (launch.cuh) and runs it only where each CTA saves at least
  // SK_SM90_TAIL_MIN_SAVED key blocks. In the three-consumer D=64 tile (128 registers a thread
  // at compile time) only on the uniform loop: on the vector-register loop the pieces' first key
  // block, a runtime value where it was 0, spills 16 bytes and takes the loop's slots out of the
  // uniform registers (v16, -3 to -5 %); on the uniform loop it builds without spills (v20).
  static constexpr bool kTailSplitShipped =
      !kCausal && !kSplitKV && (kConsumerWarpgroups == 2 || kUniform);
  static constexpr bool kTailSplit =
      (SK_SM90_TAIL_SPLIT < 0 ? kTailSplitShipped : SK_SM90_TAIL_SPLIT != 0) && !kCausal &&
      !kSplitKV && SK_SM90_SNAKE == 0;
  // The softmax's finalize (row sums across the quad, 1 / sum, the LSE) between the issue of a
  // tile's last P V and the wait for it, instead of after that wait in the epilogue. v17's
  // wait profile put the finalize at 4-5 % of a consumer's time on 512-key tiles, on the pingpong
  // turn's critical path (docs/kernel-notes.md, v18). A merging piece of the tail split finalizes
  // again after its merge. Not in the three-consumer D=64 kernels of long keys, full and (since
  // v21) causal: at 128 registers a thread D64 full's spills 4 bytes with it, and its epilogue is
  // under 1 % of a tile (not measured in the causal one, which v21 timed without it).
  static constexpr bool kEarlyFinalize =
      SK_SM90_EARLY_FINALIZE != 0 && (kConsumerWarpgroups <= 2 || kShortKeys);
  // Where the early finalize goes: 1, after the last P V's issue (ptxas interleaves it with that
  // P V's HGMMAs); 2, before that P V's waits for V and for the pingpong turn, so that its
  // HGMMAs issue back to back and its latency overlaps the waits. 2 at D=64 causal on two
  // consumers, since v21 the short-keys kernel only (measured +0.3-1.7 % at 512-4096 keys in two
  // A/B runs, docs/kernel-notes.md v19), 1 elsewhere (D128 full S=512 measured 1 % slower with 2;
  // the three-consumer D=64 kernel of short keys spills 4 bytes with it).
  static constexpr int kFinalizeSlot =
      !kEarlyFinalize ? 0
      : SK_SM90_EARLY_FINALIZE > 0 ? SK_SM90_EARLY_FINALIZE
      : (kHeadDim == 64 && kCausal && kConsumerWarpgroups == 2) ? 2 : 1;
  // Experiment (off): when the producer learns its next tile (at the start of the current one
  // with the static schedule, at its ticket with the dynamic one), it asks for that tile's Q and
  // first SK_SM90_PREFETCH_BLOCKS key blocks of K and V to be brought into L2, so that with a
  // cold L2 their loads do not wait on HBM (docs/kernel-notes.md, "Next hypotheses" 0).
  // Not in the long-keys D=64 kernels, whose consumers spill with it (their tiles are long, so
  // the prefetch has little to hide there).
  static constexpr bool kPrefetchNext =
      SK_SM90_PREFETCH_NEXT != 0 && !(kHeadDim_ == 64 && !kShortKeys && !kSplitKV);
  // Consumers take turns on the GEMMs (two or three of them in one CTA).
  static constexpr bool kPingpong = SK_SM90_PINGPONG != 0 && kConsumerWarpgroups > 1;
  // One consumer (an experiment shape: -DSK_SM90_CONSUMERS_D64_CAUSAL=1, say): 64-row tiles and
  // two CTAs per SM, each walking its own tiles, so that one CTA's first Q K^T, masked diagonal
  // block and epilogue run under the other's GEMMs (cuDNN's D=64 kernel works on 64-row tiles).
  static constexpr int kBlocksPerSm = kConsumerWarpgroups == 1 ? 2 : 1;
  // Causal tiles differ in length (the last query block visits every key block, the first one
  // block), so a static round robin leaves some CTAs with up to 15 % more work than the mean; a
  // CTA that finishes takes the next tile of the list from a counter instead (see kernel.cuh).
  static constexpr bool kDynamicSchedule = kCausal && SK_SM90_DYNAMIC_CAUSAL != 0;
  // The consumers read each tile's index from the producer (a two-slot ring in shared memory)
  // with the dynamic schedule, and with kSoftmaxFence in the static one too: computed in the
  // consumers, the static schedule's next tiles kept registers live across the key-block loop,
  // and with the fence every non-causal shape spilled (116-1168 bytes, C7512); read from the ring,
  // none does.
  static constexpr bool kTileRing = kDynamicSchedule || kSoftmaxFence;
  // Non-causal tiles are all as long, so their order only decides what shares L2. Head-major
  // (the query blocks of one (batch, head) pair are neighbours, FlashAttention's grid order): the
  // 132 running CTAs read the K and V of a few heads, against up to 132 heads in rank-major order
  // (32 MB at S=512), which measured 0.89 -> 0.98 of SDPA at D=128 S=512. The three-consumer D=64
  // shape measured mixed (-15 % to +3 %) and keeps the sections.
  static constexpr bool kHeadMajor =
      !kCausal && SK_SM90_HEAD_MAJOR_FULL != 0 && kConsumerWarpgroups == 2;
  static constexpr int kThreads = 128 * (1 + kConsumerWarpgroups);  // warpgroup 0 produces
  static constexpr int kRegistersPerSm = 65536 / kBlocksPerSm;
  // setmaxnreg budgets within the CTA's registers (the pool setmaxnreg draws from): with two
  // consumers 24 * 128 + 240 * 256 = 64512 of 65536, with three 32 * 128 + 160 * 384 = 65536,
  // with one (two CTAs per SM) 24 * 128 + 232 * 128 = 32768.
  // (SK_SM90_PREFETCH_NEXT=2 gives a two-consumer producer 32: 32 * 128 + 240 * 256 = 65536;
  // with 24 its early ticket spills.)
  static constexpr int kProducerRegisters =
      kConsumerWarpgroups == 3 || (kConsumerWarpgroups == 2 && kPrefetchNext &&
                                   SK_SM90_PREFETCH_NEXT == 2) ? 32 : 24;
  static constexpr int kConsumerRegisters =
      kConsumerWarpgroups == 1 ? 232 : kConsumerWarpgroups == 2 ? 240 : 160;

  // Tiles are stored as column chunks of swizzle-wide rows (one TMA box each): 64 columns of
  // 128 bytes with the 128-byte swizzle when the head dim is a multiple of 64, else 32 columns of
  // 64 bytes with the 64-byte swizzle (D=96).
  static constexpr int kSwizzleBytes = kHeadDim % 64 == 0 ? 128 : 64;
  static constexpr int kChunkCols = kSwizzleBytes / 2;
  static constexpr int kChunks = kHeadDim / kChunkCols;
  static constexpr int kQChunkBytes = kBlockM * kSwizzleBytes;
  static constexpr int kKVChunkBytes = kBlockN * kSwizzleBytes;
  static constexpr int kQBytes = kQChunkBytes * kChunks;
  static constexpr int kKVBytes = kKVChunkBytes * kChunks;  // one K or one V tile
  static constexpr int kRowGroupBytes = 8 * kSwizzleBytes;  // descriptor stride of 8-row groups

  // 228 KB per SM, 1 KB of it reserved per CTA: 227 KB for one CTA, 113 KB each for two.
  static constexpr int kSmemPerBlockMax = kBlocksPerSm == 1 ? 227 * 1024 : 113 * 1024;
  // The output tile of each consumer (64 rows, chunked and swizzled like Q) for the TMA store.
  static constexpr int kOChunkBytes = 64 * kSwizzleBytes;
  static constexpr int kOBytesPerConsumer = kOChunkBytes * kChunks;
  // O leaves through shared memory and TMA with the 128-byte swizzle, where shared memory has
  // room; otherwise (D=96; D=256 and the 176-key block: no shared memory to spare; split-KV:
  // float32 partials) in plain stores. The three-consumer D=64 tiles had plain stores until v21
  // (thought to have no registers to spare; they build without spills with the TMA store, and
  // its key-block loop is 5 instructions shorter): D64 full +4.5 % at S=512, +2.2 % at 1024,
  // +0.9 % at 2048, equal at 16384 (docs/kernel-notes.md, v21).
  static constexpr bool kTmaStoreOShape = SK_SM90_TMA_STORE_O != 0 && !kSplitKV &&
                                          kSwizzleBytes == 128 && kHeadDim <= 128;
  // Experiment (off; docs/kernel-notes.md, Next hypotheses 0f): each consumer's 64 rows of Q in a
  // slot of their own, loaded by a 64-row TMA box behind that consumer's own full and empty
  // barriers, instead of the tile's whole Q behind shared ones. The same bytes as one Q slot; a
  // consumer's rows of the next tile load as soon as that consumer has issued its last Q K^T, so
  // the stagger no longer needs the second Q slot (nor its slot arithmetic in the key-block loop).
  // Not in the causal kernels at D=96-256, which spill 4 bytes with it.
  static constexpr bool kQPerConsumer =
      (SK_SM90_Q_PER_CONSUMER != 0 && (kHeadDim_ == 64 || !kCausal_)) || kStaggerD128;
  // Full/empty barrier pairs of Q: one per Q slot, or one per consumer.
  static constexpr int q_barrier_pairs(int q_stages) {
    return kQPerConsumer ? kConsumerWarpgroups : q_stages;
  }
  // Shared memory of the plan with q_stages Q slots, with or without the O staging: Q slots, the
  // K and V rings, O, the mbarriers (q full/empty per Q slot, k and v full/empty per stage, the
  // tile ring's full/empty), the tile ring's two indices, and 1024 bytes for rounding the dynamic
  // shared-memory base up to the 1024-byte swizzle alignment.
  static constexpr int smem_bytes(int q_stages, bool o_staging) {
    return q_stages * kQBytes + 2 * kStages * kKVBytes +
           (o_staging && !kOInQ ? kConsumerWarpgroups * kOBytesPerConsumer : 0) +
           8 * (2 * q_barrier_pairs(q_stages) + 4 * kStages + 4) + 8 + 1024;
  }
  // Q slots: with two, the producer loads the next tile's Q (and then its first key blocks) while
  // the consumers still read the current one; with one it waits for their last Q K^T of the tile.
  // Only where both slots fit next to everything a single slot would have (the O staging
  // included). Measured (docs/kernel-notes.md, v12): D=128 +0.5-1 % non-causal, +3.5 % causal at
  // S=512 and -1 % causal from S=2048 on; D=64 -2 to -3 % (full S=1024, causal S=16384). So two
  // slots ship at D=128 non-causal (the default variant) and in D=128 causal's short-keys variant,
  // and in D64 causal's short-keys variant for the stagger below.
  // The stagger (shipped in D64 causal short keys, v20): the two consumers of a tile share its Q
  // and its key stream, so they reach the tile's end together and their epilogues, Q waits and
  // first Q K^Ts (nothing of a consumer's own overlaps those) coincide, with the tensor cores
  // idle. With kStagger = L the second consumer starts L pingpong turns (about L key blocks)
  // behind the first and keeps that lag, so each one's tile boundary falls in the other's steady
  // state (kernel.cuh). Needs two Q
  // slots (the first consumer loads the next tile's Q while the second still reads this one) and
  // a ring of L + 2 stages or more (the producer refills a stage only when both consumers have
  // freed it; L + 1 would do, L + 2 leaves the producer a block of lead); only in D64 causal's
  // short-keys kernel (four stages, two consumers), whose tiles of up to 2048 keys are short chains. Every tile takes
  // at least one turn in each consumer (a tile with no key block passes one), so the lag stays
  // within the two-slot tile ring.
  // Measured (v20, first A/B): L = 1 +3.6 % at S=512 (bf16; fp16 +1.7 %), -0.8 % at 1024 and
  // -0.4 % at 2048; L = 2 equal at 512 and -2 % at 1024. Timed again after v20 (shipped build
  // against -DSK_SM90_STAGGER=0, same call): +2.0 % at S=512 (fp16 +1.6 %), +0.3 % at 1024,
  // -0.3 % at 2048. L = 1 ships there.
  // (-DSK_SM90_STAGGER_D128=1 takes one turn at D128 full whatever SK_SM90_STAGGER says.)
  static constexpr int kStaggerTurns = kStaggerD128 || SK_SM90_STAGGER < 0 ? 1 : SK_SM90_STAGGER;
  // L <= 2 only: the turn accounting (and the per-consumer Q slots' producer order) is argued and
  // model-checked for that (tests/test_sm90_protocol.py); L = 3 with 5 stages hangs on two
  // key-less tiles before a long one.
  static constexpr bool kStaggerWanted =
      (kStaggerD128 || (kHeadDim_ == 64 && kCausal_ && kVariant_ == Sm90Variant::kShortKeys)) &&
      kStaggerTurns > 0 && kStaggerTurns <= 2 && kConsumerWarpgroups == 2 && kPingpong &&
      kStages >= kStaggerTurns + 2;
  static constexpr int kQStagesWanted =
      kQPerConsumer ? 1
      : kStaggerWanted ? 2
      : kHeadDim == 128 && ((!kCausal_ && kVariant_ == Sm90Variant::kDefault) ||
                            (kCausal_ && kVariant_ == Sm90Variant::kShortKeys))
          ? SK_SM90_Q_STAGES_D128
          : SK_SM90_Q_STAGES;
  static constexpr int kQStages =
      kQStagesWanted >= 2 &&
              smem_bytes(2, kTmaStoreOShape && smem_bytes(1, true) <= kSmemPerBlockMax) <=
                  kSmemPerBlockMax
          ? 2
          : 1;
  static constexpr bool kTmaStoreO =
      kTmaStoreOShape && smem_bytes(kQStages, true) <= kSmemPerBlockMax;
  static constexpr int kStagger =
      kStaggerWanted && (kQStages == 2 || kQPerConsumer) ? kStaggerTurns : 0;
  static constexpr int kQBarrierPairs = q_barrier_pairs(kQStages);
  static constexpr int kQBoxRows = kQPerConsumer ? 64 : kBlockM;  // rows of Q's TMA box
  // The epilogue's stores of O into that staging: per thread 2 * kDTiles 4-byte shared stores
  // (16 at D=64, 32 at D=128), or kDTiles / 2 stmatrix.x4 (the accumulator layout is stmatrix's
  // fragment layout). At D64 causal S=512 the epilogue is 11 % of a tile (v15's wait profile).
  // Not yet timed: off.
  static constexpr bool kStmatrixO = SK_SM90_STMATRIX_O != 0 && kTmaStoreO;
  // Experiment (off): each warp of a consumer writes only its own 16 rows of the O staging (in
  // both store forms above), so with kWarpStoreO each warp waits for its own previous store, syncs
  // with __syncwarp and has its lane 0 issue the TMA store of its 16 rows (a 16-row box), instead
  // of the two 128-thread named barriers around the warpgroup's 64-row store. Those barriers were
  // 1.5-2.2 % of a 512-key tile in v14's and v18's wait profiles (`ostore`, `osync`).
  static constexpr bool kWarpStoreO = SK_SM90_WARP_STORE_O != 0 && kTmaStoreO;
  static constexpr int kOBoxRows = kWarpStoreO ? 16 : 64;  // rows of the TMA store's box of O
  // The O staging's column-chunk stride: its own 64-row chunks, or Q's chunks with kOInQ.
  static constexpr int kOStageChunkBytes = kOInQ ? kQChunkBytes : kOChunkBytes;
  // Where O leaves in plain stores (D=96, D=256, the 176-key block, or a caller's out that TMA
  // cannot describe; the three-consumer D=64 tiles too until v21), each thread's 4-byte stores write 8 rows x 16 bytes a
  // warp instruction, so the epilogue queues 2 * kDTiles of them per thread (64 at D=256). With
  // kWideStoreO a 4 x 4 transpose in each quad (4 shuffles) gives every lane eight contiguous
  // columns and the stores become 16-byte ones, a quarter as many (kernel.cuh; the binding's
  // out must then be 16-byte aligned with strides of multiples of 8 elements, Sm90Args::o_wide).
  // Measured (docs/kernel-notes.md, v17): D=256 full +4.2 % bf16 (1.00 -> 1.04 of SDPA) and
  // +3.8 % fp16, D=256 causal +4.8 %, D=96 full +0.9 %; D=64 full within the spread (and 4-32
  // bytes of spill outside the loop; measured when its O left in plain stores, before v21), D=128's 176-key block -0.5 to -1.2 %. Shipped at D=96 and
  // 256; SK_SM90_WIDE_STORE_O=1 or 0 forces it on or off everywhere.
  static constexpr bool kWideStoreOShipped = kHeadDim == 96 || kHeadDim == 256;
  static constexpr bool kWideStoreO =
      (SK_SM90_WIDE_STORE_O < 0 ? kWideStoreOShipped : SK_SM90_WIDE_STORE_O != 0) && !kSplitKV &&
      kHeadDim % 32 == 0;
  static constexpr int kQOffset = 0;
  static constexpr int kKOffset = kQOffset + kQStages * kQBytes;
  static constexpr int kVOffset = kKOffset + kStages * kKVBytes;
  static constexpr int kOOffset = kVOffset + kStages * kKVBytes;
  static constexpr int kBarriers = 2 * kQBarrierPairs + 4 * kStages + 4;
  static constexpr int kBarrierOffset =
      kOOffset + (kTmaStoreO && !kOInQ ? kConsumerWarpgroups * kOBytesPerConsumer : 0);
  // The tile ring: two int32 tile indices the producer passes to the consumers.
  static constexpr int kTileSlotOffset = kBarrierOffset + 8 * kBarriers;
  // +1024: the dynamic shared-memory base is rounded up to the 1024-byte swizzle alignment.
  static constexpr int kSmemBytes = kTileSlotOffset + 8 + 1024;

  static_assert(kConsumerWarpgroups >= 1 && kConsumerWarpgroups <= 3, "one to three consumers");
  static_assert(!kOInQ || (kQPerConsumer && kTmaStoreO && !kWarpStoreO && kStagger == 1),
                "O staged in Q rows: per-consumer rows, one warpgroup store, the D=128 stagger");
  static_assert(!kQPerConsumer || kBlockM == 64 * kConsumerWarpgroups,
                "per-consumer Q slots need 64 rows per consumer");
  static_assert(kProducerRegisters * 128 + kConsumerRegisters * 128 * kConsumerWarpgroups <=
                    kRegistersPerSm,
                "setmaxnreg budgets exceed the CTA's registers");
  static_assert(!(kSplitKV && kCausal), "split-KV kernels are non-causal");
  static_assert(!(kLongKeys && kCausal), "the long-keys variant is non-causal");
  static_assert(kHeadDim % 32 == 0, "head dim must be a multiple of 32");
  static_assert(kBlockN % 16 == 0 && kBlockN <= 256, "key block must be a wgmma n");
  static_assert(kSmemBytes == smem_bytes(kQStages, kTmaStoreO), "the plan and its size disagree");
  static_assert(kSmemBytes <= kSmemPerBlockMax,
                "shared memory plan exceeds the 227 KB per block (113 KB with two CTAs per SM)");
};

}  // namespace sm90
}  // namespace sessionkit

// Prints the shared-memory plan of each sm90 tile shape (csrc/sm90/traits.cuh) on the host:
// one line per shape: name, query rows, key block, Q slots, TMA store of O (0/1), bytes, the most
// bytes, K/V ring stages, the consumers' stagger in pingpong turns.
#include <cstdio>

#include "sm90/traits.cuh"

using sessionkit::Sm90Variant;
using sessionkit::sm90::Traits;

template <int D, bool kCausal, Sm90Variant V>
void show(const char* name) {
  using T = Traits<D, kCausal, V>;
  std::printf("%s %d %d %d %d %d %d %d %d\n", name, T::kBlockM, T::kBlockN, T::kQStages,
              static_cast<int>(T::kTmaStoreO), T::kSmemBytes, T::kSmemPerBlockMax, T::kStages,
              T::kStagger);
}

int main() {
  show<64, true, Sm90Variant::kShortKeys>("d64_causal_shortkeys");
  show<64, true, Sm90Variant::kMidKeys>("d64_causal_midkeys");
  show<64, true, Sm90Variant::kDefault>("d64_causal");
  show<64, false, Sm90Variant::kDefault>("d64_noncausal");
  show<64, false, Sm90Variant::kShortKeys>("d64_noncausal_shortkeys");
  show<64, false, Sm90Variant::kSplitKV>("d64_noncausal_splitkv");
  show<96, true, Sm90Variant::kDefault>("d96_causal");
  show<96, false, Sm90Variant::kDefault>("d96_noncausal");
  show<128, true, Sm90Variant::kDefault>("d128_causal");
  show<128, true, Sm90Variant::kShortKeys>("d128_causal_shortkeys");
  show<128, false, Sm90Variant::kDefault>("d128_noncausal");
  show<128, false, Sm90Variant::kLongKeys>("d128_noncausal_longkeys");
  show<128, false, Sm90Variant::kSplitKV>("d128_noncausal_splitkv");
  show<256, true, Sm90Variant::kDefault>("d256_causal");
  show<256, false, Sm90Variant::kDefault>("d256_noncausal");
  show<256, false, Sm90Variant::kSplitKV>("d256_noncausal_splitkv");
  return 0;
}

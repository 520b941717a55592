// Prints sm90::pick_variant (csrc/sm90/dispatch.h) over a grid of calls on the host: one line per
// call: head dim, causal (0/1), split (0/1), seq_len_q, seq_len_k, the variant's number
// (Sm90Variant: 0 default, 1 short keys, 2 split-KV, 3 long keys, 4 mid keys).
#include <cstdio>

#include "sm90/dispatch.h"

int main() {
  const int dims[] = {64, 96, 128, 256};
  const int lengths[] = {1, 64, 128, 256, 512, 1023, 1024, 1025, 1280, 1536, 2047, 2048, 2049,
                         4096, 8191, 8192, 16384, 131072};
  for (int d : dims) {
    for (int causal = 0; causal < 2; ++causal) {
      for (int split = 0; split < 2; ++split) {
        for (int sq : lengths) {
          for (int sk : lengths) {
            const auto v = sessionkit::sm90::pick_variant(d, causal != 0, split != 0, sq, sk);
            std::printf("%d %d %d %d %d %d\n", d, causal, split, sq, sk, static_cast<int>(v));
          }
        }
      }
    }
  }
  return 0;
}

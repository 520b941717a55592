// Host check of smem_desc_advance (csrc/sm90/ptx.cuh, the source the kernels compile): for every
// 1024-byte-aligned tile base in shared memory and every Q K^T k-step offset of every head dim
// and tile shape the sm90 traits allow, advancing the base's descriptor equals building the
// descriptor of base + offset. Prints the number of cases and of mismatches.
#include <cstdint>
#include <cstdio>

#include "sm90/ptx.cuh"

template <int kSwizzleBytes>
static long check(long* cases) {
  long bad = 0;
  constexpr uint32_t kRowGroupBytes = 8 * kSwizzleBytes;
  constexpr int kChunkCols = kSwizzleBytes / 2;
  for (int head_dim = 32; head_dim <= 256; head_dim += 32) {
    if ((head_dim % 64 == 0) != (kSwizzleBytes == 128)) continue;
    const int chunks = head_dim / kChunkCols;
    for (int block_m = 64; block_m <= 192; block_m += 64) {
      const uint32_t chunk_bytes = block_m * kSwizzleBytes;
      for (int consumer = 0; consumer * 64 < block_m; ++consumer) {
        for (uint32_t base = 0; base + chunks * chunk_bytes <= 228u * 1024u; base += 1024) {
          const uint32_t q_base = base + consumer * 64 * kSwizzleBytes;
          const uint64_t desc0 = sessionkit::sm90::make_smem_desc<kSwizzleBytes>(q_base, 16,
                                                                                 kRowGroupBytes);
          for (int kk = 0; kk < head_dim / 16; ++kk) {
            const int c = kk / (kChunkCols / 16);
            const uint32_t off = c * chunk_bytes + (kk % (kChunkCols / 16)) * 32;
            const uint64_t want = sessionkit::sm90::make_smem_desc<kSwizzleBytes>(
                q_base + off, 16, kRowGroupBytes);
            ++*cases;
            if (sessionkit::sm90::smem_desc_advance(desc0, off) != want) ++bad;
          }
        }
      }
    }
  }
  return bad;
}

int main() {
  long cases = 0;
  const long bad = check<128>(&cases) + check<64>(&cases);
  std::printf("cases %ld mismatches %ld\n", cases, bad);
  return 0;
}

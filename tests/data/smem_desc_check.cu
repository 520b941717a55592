// Host check of smem_desc_advance (csrc/sm90/ptx.cuh, the source the kernels compile): for every
// 1024-byte-aligned tile base in shared memory and every k-step offset of every head dim and tile
// shape the sm90 traits allow (Q and K of Q K^T, V of P V), advancing the base's descriptor equals
// building the descriptor of base + offset. Prints the number of cases and of mismatches.
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

// K (K-major, the Q K^T B operand) and V (N-major, the P V B operand) of a key block of block_n
// rows: a ring slot's descriptor advanced to each k-step (SK_SM90_DESC_ADVANCE).
template <int kSwizzleBytes>
static long check_kv(long* cases) {
  long bad = 0;
  constexpr uint32_t kRowGroupBytes = 8 * kSwizzleBytes;
  constexpr int kChunkCols = kSwizzleBytes / 2;
  for (int head_dim = 32; head_dim <= 256; head_dim += 32) {
    if ((head_dim % 64 == 0) != (kSwizzleBytes == 128)) continue;
    const int chunks = head_dim / kChunkCols;
    for (int block_n = 16; block_n <= 256; block_n += 16) {
      const uint32_t chunk_bytes = block_n * kSwizzleBytes;
      for (uint32_t base = 0; base + chunks * chunk_bytes <= 228u * 1024u; base += 1024) {
        const uint64_t k0 = sessionkit::sm90::make_smem_desc<kSwizzleBytes>(base, 16, kRowGroupBytes);
        for (int kk = 0; kk < head_dim / 16; ++kk) {
          const uint32_t off = (kk / (kChunkCols / 16)) * chunk_bytes + (kk % (kChunkCols / 16)) * 32;
          ++*cases;
          if (sessionkit::sm90::smem_desc_advance(k0, off) !=
              sessionkit::sm90::make_smem_desc<kSwizzleBytes>(base + off, 16, kRowGroupBytes)) {
            ++bad;
          }
        }
        const uint64_t v0 =
            sessionkit::sm90::make_smem_desc<kSwizzleBytes>(base, chunk_bytes, kRowGroupBytes);
        for (int kk = 0; kk < block_n / 16; ++kk) {
          const uint32_t off = kk * 16 * kSwizzleBytes;
          ++*cases;
          if (sessionkit::sm90::smem_desc_advance(v0, off) !=
              sessionkit::sm90::make_smem_desc<kSwizzleBytes>(base + off, chunk_bytes,
                                                              kRowGroupBytes)) {
            ++bad;
          }
        }
      }
    }
  }
  return bad;
}

int main() {
  long cases = 0;
  const long bad = check<128>(&cases) + check<64>(&cases) + check_kv<128>(&cases) +
                   check_kv<64>(&cases);
  std::printf("cases %ld mismatches %ld\n", cases, bad);
  return 0;
}

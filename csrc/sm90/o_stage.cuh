// Where a consumer's 64 x head_dim tile of O sits in shared memory before its TMA store: column
// chunks of 64 b16 (128 bytes a row, one TMA box each) with the 128-byte swizzle TMA expects
// (16-byte group c of row r at c ^ (r % 8)). Plain arithmetic shared by the device and a host
// check (tests/data/o_stage_check.cu).
#pragma once

#include <cstdint>

#include "host_device.cuh"

namespace sessionkit {
namespace sm90 {

// Byte offset of the 16-byte group holding columns [8 * n8, 8 * n8 + 8) of `row` (0..63), with
// chunk_bytes = 64 rows * 128 bytes per 64-column chunk.
SK_HOST_DEVICE inline uint32_t o_stage_group(int row, int n8, int chunk_bytes) {
  return static_cast<uint32_t>((n8 / 8) * chunk_bytes + row * 128 + (((n8 % 8) ^ (row % 8)) << 4));
}

// stmatrix.x4 of the n8 tiles i and i + 1 of a warp's 16 rows (warp 0..3 of the consumer): lane
// gives row l % 8 of matrix l / 8, where matrices 0 and 1 are rows 0-7 and 8-15 of tile i and 2
// and 3 the same of tile i + 1. The row within the consumer's 64 and the n8 tile of that lane:
SK_HOST_DEVICE inline int o_stage_stmatrix_row(int warp, int lane) {
  return warp * 16 + (lane % 8) + 8 * ((lane / 8) % 2);
}
SK_HOST_DEVICE inline int o_stage_stmatrix_n8(int i, int lane) { return i + lane / 16; }

// O straight to global memory in 16-byte stores (Traits::kWideStoreO): the 4 x 4 transpose of
// 32-bit words across the 4 lanes of a quad (lanes t = 0..3 of one accumulator row). Before it,
// lane t holds w[k] = its two columns (2 t and 2 t + 1, packed) of n8 tile i0 + k; after it, lane
// t holds the eight columns of n8 tile i0 + t in order (w[j] = columns 2 j and 2 j + 1), so that
// one 16-byte store writes them. Two steps: step m (1, then 2) swaps bit m of the lane with bit m
// of the index, in two shuffles of pairs (a, a | m) of indices: a lane with bit m set sends w[a]
// and receives w[a]; a lane with it clear sends w[a | m] and receives w[a | m]. Split into what
// a lane sends and what it keeps, so that the host check (tests/data/o_stage_check.cu) can run
// the exchange for four lanes without shuffles.
SK_HOST_DEVICE inline int quad_pair_low(int m, int s) { return m == 1 ? 2 * s : s; }
SK_HOST_DEVICE inline uint32_t quad_send(const uint32_t (&w)[4], int t, int m, int s) {
  const int a = quad_pair_low(m, s);
  return (t & m) ? w[a] : w[a | m];
}
SK_HOST_DEVICE inline void quad_receive(uint32_t (&w)[4], int t, int m, int s, uint32_t got) {
  const int a = quad_pair_low(m, s);
  if (t & m) {
    w[a] = got;
  } else {
    w[a | m] = got;
  }
}

}  // namespace sm90
}  // namespace sessionkit

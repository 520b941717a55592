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

}  // namespace sm90
}  // namespace sessionkit

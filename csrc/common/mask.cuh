// Attention masks on score accumulators in the tensor-core C layout, shared by both families.
//
// Layout (mma.sync m16n8 and wgmma m64nN alike): a thread holds, for each n8 tile i of a 16-row
// slice, s[i][0..3] = rows (g, g, g+8, g+8) and columns (8i+2t, 8i+2t+1, 8i+2t, 8i+2t+1), with
// g = lane / 4 and t = lane % 4.
#pragma once

#include <cmath>

namespace sessionkit {
namespace fwd {

// Does the key block [col0, col0 + block_n) need any masking for query rows [row0, row0 + rows)?
// Blocks that need none run the loop body without mask code.
template <bool kCausal>
__device__ __forceinline__ bool block_needs_mask(int col0, int block_n, int row0, int seqlen_k,
                                                 int causal_offset) {
  const bool tail = col0 + block_n > seqlen_k;
  return tail || (kCausal && col0 + block_n - 1 > row0 + causal_offset);
}

// Sets to -inf every score whose key is past seqlen_k or, when causal, after row + causal_offset.
// row_g: the query row of this thread's s[i][0]; col_t: the key column of s[0][0].
template <bool kCausal, int kNTiles>
__device__ __forceinline__ void apply_mask(float (&s)[kNTiles][4], int row_g, int col_t,
                                           int seqlen_k, int causal_offset) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    // Columns col_t + c are kept while c < limit.
    int limit = seqlen_k - col_t;
    if constexpr (kCausal) limit = min(limit, row_g + 8 * r + causal_offset + 1 - col_t);
#pragma unroll
    for (int i = 0; i < kNTiles; ++i) {
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        if (i * 8 + c >= limit) s[i][2 * r + c] = -INFINITY;
      }
    }
  }
}

}  // namespace fwd
}  // namespace sessionkit

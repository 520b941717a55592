// The merge of split-KV partial results (both kernel families' binding launches it after an sm90
// split-KV launch; see FlashFwdParams::num_splits).
//
// Each key range s of a row left O_s (normalised over its own keys) and LSE_s, in float32. The
// row's LSE over all keys is log(sum_s exp(LSE_s)), and its O is sum_s exp(LSE_s - LSE) O_s: the
// weights are each range's share of the softmax denominator. Ranges that saw no key have
// LSE_s = -inf and weight 0; a row whose ranges all saw none gets O = 0 and LSE = -inf.
// Method: FlashAttention 2's split-KV combine ("flash-decoding", Dao et al., 2023).
//
// One warp per row: the lanes take the splits for the max and the sum, then two columns each.
#pragma once

#include <cstdint>

#include "utils.cuh"

namespace sessionkit {
namespace fwd {

constexpr int kCombineWarps = 4;

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

template <DType kDtype>
__device__ __forceinline__ void flash_combine_body(const FlashFwdParams& p, int head_dim) {
  using T = typename Elem<kDtype>::type;
  const int lane = threadIdx.x % 32;
  const int64_t rows = static_cast<int64_t>(p.batch) * p.heads * p.seqlen_q;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kCombineWarps + threadIdx.x / 32;
  if (row >= rows) return;
  const int i = static_cast<int>(row % p.seqlen_q);
  const int64_t pair = row / p.seqlen_q;
  const int head = static_cast<int>(pair % p.heads);
  const int batch = static_cast<int>(pair / p.heads);
  const float* lse_s = p.lse_accum + row;  // split s at lse_s[s * rows]
  const float* o_s = p.o_accum + row * head_dim;  // split s at o_s[s * rows * head_dim]

  float m = -INFINITY;
  for (int s = lane; s < p.num_splits; s += 32) m = fmaxf(m, lse_s[s * rows]);
  m = warp_max(m);
  float sum = 0.f;
  if (m != -INFINITY) {
    for (int s = lane; s < p.num_splits; s += 32) sum += expf(lse_s[s * rows] - m);
  }
  sum = warp_sum(sum);
  const float lse = m == -INFINITY ? -INFINITY : m + logf(sum);

  T* out = static_cast<T*>(p.out) + batch * p.o_batch_stride + head * p.o_head_stride +
           static_cast<int64_t>(i) * p.o_row_stride;
  for (int c = 2 * lane; c < head_dim; c += 64) {
    float x = 0.f, y = 0.f;
    if (m != -INFINITY) {
      for (int s = 0; s < p.num_splits; ++s) {
        const float l = lse_s[s * rows];
        if (l == -INFINITY) continue;
        const float w = expf(l - lse);
        const float2 o = *reinterpret_cast<const float2*>(o_s + s * rows * head_dim + c);
        x += w * o.x;
        y += w * o.y;
      }
    }
    *reinterpret_cast<uint32_t*>(out + c) = pack2<kDtype>(x, y);
  }
  if (lane == 0) {
    p.lse[batch * p.lse_batch_stride + head * p.lse_head_stride +
          static_cast<int64_t>(i) * p.lse_row_stride] = lse;
  }
}

}  // namespace fwd
}  // namespace sessionkit

// Defines, in one .cu file, the combine kernel `NAME` and run_flash_combine<DTYPE>.
#define SESSIONKIT_FLASH_COMBINE_INSTANCE(NAME, DTYPE)                                            \
  extern "C" __global__ void __launch_bounds__(32 * sessionkit::fwd::kCombineWarps)               \
      NAME(const __grid_constant__ sessionkit::FlashFwdParams params, int head_dim) {              \
    sessionkit::fwd::flash_combine_body<DTYPE>(params, head_dim);                                 \
  }                                                                                               \
  namespace sessionkit {                                                                          \
  template <>                                                                                     \
  cudaError_t run_flash_combine<DTYPE>(const FlashFwdParams& params, int head_dim,               \
                                       cudaStream_t stream) {                                     \
    if (params.num_splits < 1 || params.o_accum == nullptr || params.lse_accum == nullptr ||     \
        head_dim % 2 != 0 || head_dim > 256) {                                                    \
      return cudaErrorInvalidValue;                                                               \
    }                                                                                             \
    const int64_t rows = static_cast<int64_t>(params.batch) * params.heads * params.seqlen_q;    \
    if (rows == 0) return cudaSuccess;                                                            \
    const int64_t blocks = (rows + fwd::kCombineWarps - 1) / fwd::kCombineWarps;                  \
    if (blocks > INT32_MAX) return cudaErrorInvalidValue;                                         \
    NAME<<<static_cast<unsigned>(blocks), 32 * fwd::kCombineWarps, 0, stream>>>(params, head_dim); \
    return cudaGetLastError();                                                                    \
  }                                                                                               \
  }

// Parameters and entry points of the FlashAttention forward kernels.
//
// This header is shared by the kernel files (compiled by nvcc, no torch headers) and the torch
// binding (flash_api.cpp). It holds plain data only.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace sessionkit {

enum class DType : int { kFloat16 = 0, kBFloat16 = 1 };

// Strides are in elements; the last dimension of every tensor is contiguous.
struct FlashFwdParams {
  const void* q;
  const void* k;
  const void* v;
  void* out;
  float* lse;

  int64_t q_batch_stride, q_head_stride, q_row_stride;
  int64_t k_batch_stride, k_head_stride, k_row_stride;
  int64_t v_batch_stride, v_head_stride, v_row_stride;
  int64_t o_batch_stride, o_head_stride, o_row_stride;
  int64_t lse_batch_stride, lse_head_stride, lse_row_stride;

  int batch;
  int heads;
  int seqlen_q;
  int seqlen_k;

  float scale_log2;  // softmax scale times log2(e): the kernel works in base 2
};

// One explicit instantiation per (dtype, head dim, causal) lives in its own .cu file.
template <DType kDtype, int kHeadDim, bool kCausal>
cudaError_t run_flash_fwd(const FlashFwdParams& params, cudaStream_t stream);

}  // namespace sessionkit

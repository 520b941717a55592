// Device helpers shared by both kernel families: element types, conversions, exp2, and the
// per-device shared-memory limit.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include "../flash_fwd.h"

namespace sessionkit {
namespace fwd {

template <DType kDtype>
struct Elem;
template <>
struct Elem<DType::kFloat16> {
  using type = __half;
};
template <>
struct Elem<DType::kBFloat16> {
  using type = __nv_bfloat16;
};

__device__ __forceinline__ uint32_t smem_addr(const void* ptr) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(ptr));
}

// 2^x on the special-function unit (MUFU.EX2); exp2(-inf) = 0.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Two floats -> one register of two 16-bit values (lo = first).
template <DType kDtype>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  if constexpr (kDtype == DType::kFloat16) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  } else {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
}

// Kernels that use more than 48 KB of dynamic shared memory must raise their limit with
// cudaFuncSetAttribute, which acts on the current device only. Each kernel keeps one flag per
// device, so that the attribute is set once on every device it runs on; devices past the table
// set it on every launch (cheap, and correct).
constexpr int kMaxTrackedDevices = 64;

template <typename Kernel>
cudaError_t raise_smem_limit(Kernel kernel, int bytes, std::atomic<bool>* raised) {
  int device = 0;
  cudaError_t status = cudaGetDevice(&device);
  if (status != cudaSuccess) return status;
  const bool tracked = device >= 0 && device < kMaxTrackedDevices;
  if (tracked && raised[device].load(std::memory_order_acquire)) return cudaSuccess;
  status = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (status == cudaSuccess && tracked) raised[device].store(true, std::memory_order_release);
  return status;
}

}  // namespace fwd
}  // namespace sessionkit

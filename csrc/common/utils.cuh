// Device helpers shared by both kernel families: element types, conversions, exp2, and the
// per-device shared-memory limit.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <cstring>

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

// 1/x on the special-function unit (MUFU.RCP), within 1 ulp; subnormal inputs and results are
// flushed to zero. The IEEE division `1.f / x` adds a Newton step and a branch to a slow-path
// subroutine for extreme exponents (docs/kernel-notes.md, v18).
__device__ __forceinline__ float fast_rcp(float x) {
  float y;
  asm("rcp.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// 2^x for x <= 0 on the FMA and integer pipes, without the special-function unit: x is rounded
// to the nearest integer j by adding 1.5 * 2^23 (the sum's low mantissa bits then hold j), 2^(x - j)
// comes from a degree-3 polynomial on [-0.5, 0.5] (coefficients fitted for the least maximum
// relative error: 7.5e-5, below the rounding of P to fp16 or bf16), and j is added to the result's
// exponent bits. x < -125 (and -inf, a masked score) gives 0, as ex2.approx.ftz flushes it.
// Sharing the exponentials of a block between this and MUFU.EX2 (SK_SOFTMAX_POLY_EXP2_EIGHTHS in
// softmax.cuh) leaves the MUFU fewer to do where it limits the softmax (D=64). Method:
// FlashAttention-4's software exp2 (its answer to the MUFU bottleneck on Blackwell).
__host__ __device__ __forceinline__ float poly_exp2(float x) {
  constexpr float kRound = 12582912.f;  // 1.5 * 2^23
  const float clamped = fmaxf(x, -125.f);
  const float shifted = clamped + kRound;
  const float f = clamped - (shifted - kRound);  // in [-0.5, 0.5]
  float p = fmaf(0.05517166853f, f, 0.24261114001f);
  p = fmaf(p, f, 0.69326096773f);
  p = fmaf(p, f, 0.99992805719f);
#ifdef __CUDA_ARCH__
  const int shifted_bits = __float_as_int(shifted);
  const float y = __int_as_float(__float_as_int(p) + (shifted_bits << 23));
#else
  int shifted_bits, p_bits;
  memcpy(&shifted_bits, &shifted, 4);
  memcpy(&p_bits, &p, 4);
  const int y_bits = static_cast<int>(static_cast<unsigned>(p_bits) +
                                      (static_cast<unsigned>(shifted_bits) << 23));
  float y;
  memcpy(&y, &y_bits, 4);
#endif
  return x >= -125.f ? y : 0.f;
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

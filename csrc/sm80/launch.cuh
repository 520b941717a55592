// Launch code of the sm80 family: the instance macro that each generated .cu file expands once.
#pragma once

#include "kernel.cuh"

// Defines, in one .cu file, the sm80-family kernel `NAME` (a plain extern "C" symbol, so that ptxas and the
// profiler report it by that name), its shared-memory size as `NAME_smem_bytes`, and the launcher
// run_flash_fwd_sm80<DTYPE, HDIM, CAUSAL>.
#define SESSIONKIT_FLASH_FWD_SM80_INSTANCE(NAME, DTYPE, HDIM, CAUSAL)                                   \
  extern "C" __global__ void __launch_bounds__(                                                    \
      sessionkit::fwd::Traits<HDIM>::kThreads, sessionkit::fwd::Traits<HDIM>::kMinBlocksPerSm)     \
      NAME(const __grid_constant__ sessionkit::FlashFwdParams params) {                            \
    sessionkit::fwd::flash_fwd_body<DTYPE, HDIM, CAUSAL>(params);                                  \
  }                                                                                                \
  extern "C" const int NAME##_smem_bytes = sessionkit::fwd::Traits<HDIM>::kSmemBytes;              \
  namespace sessionkit {                                                                           \
  template <>                                                                                      \
  cudaError_t run_flash_fwd_sm80<DTYPE, HDIM, CAUSAL>(const FlashFwdParams& params,               \
                                                       cudaStream_t stream) {                           \
    using Tr = fwd::Traits<HDIM>;                                                                  \
    static std::atomic<bool> smem_raised[fwd::kMaxTrackedDevices];                                \
    const cudaError_t attr_status = fwd::raise_smem_limit(NAME, Tr::kSmemBytes, smem_raised);     \
    if (attr_status != cudaSuccess) return attr_status;                                            \
    const dim3 grid((params.seqlen_q + Tr::kBlockM - 1) / Tr::kBlockM * params.head_ratio,        \
                    params.heads_k, params.batch);                                                 \
    NAME<<<grid, Tr::kThreads, Tr::kSmemBytes, stream>>>(params);                                  \
    return cudaGetLastError();                                                                     \
  }                                                                                                \
  }

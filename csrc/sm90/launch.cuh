// Launch code of the sm90 family: TMA tensor maps on the host, the grid, and the instance macro
// that each generated .cu file expands once.
#pragma once

#include <cuda.h>
#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled

#include <atomic>
#include <algorithm>
#include <cstdint>
#include <limits>

#include "kernel.cuh"

namespace sessionkit {
namespace sm90 {

// cuTensorMapEncodeTiled from the driver, found through the runtime so that the extension does not
// link libcuda itself. Null if the driver does not offer it.
inline PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000, cudaEnableDefault,
                                         &found) != cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
      return static_cast<PFN_cuTensorMapEncodeTiled_v12000>(nullptr);
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(ptr);
  }();
  return fn;
}

// A tensor map for a (batch, heads, seq, head_dim) tensor with element strides (batch, head, row)
// and a contiguous last dimension, read as boxes of swizzle_bytes / 2 columns x box_rows rows with
// the 128- or 64-byte swizzle. Rows past seq are zero-filled by the hardware on loads and not
// written by stores. Returns false when TMA cannot describe the tensor (strides must be positive
// multiples of 16 bytes below 2^40).
inline bool make_tensor_map(CUtensorMap* map, const void* ptr, bool bf16, int64_t batch,
                            int64_t heads, int64_t seq, int64_t head_dim, int64_t batch_stride,
                            int64_t head_stride, int64_t row_stride, int box_rows,
                            int swizzle_bytes) {
  auto encode = tensor_map_encoder();
  if (encode == nullptr) return false;
  constexpr int64_t kElem = 2;
  // A dimension of extent 1 is never stepped over; give it a stride TMA accepts.
  if (seq == 1) row_stride = head_dim;
  if (heads == 1) head_stride = row_stride * seq;
  if (batch == 1) batch_stride = head_stride * heads;
  const int64_t strides_bytes[3] = {row_stride * kElem, head_stride * kElem, batch_stride * kElem};
  for (int64_t st : strides_bytes) {
    if (st <= 0 || st % 16 != 0 || st >= (int64_t(1) << 40)) return false;
  }
  if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0) return false;
  cuuint64_t dims[4] = {static_cast<cuuint64_t>(head_dim), static_cast<cuuint64_t>(seq),
                        static_cast<cuuint64_t>(heads), static_cast<cuuint64_t>(batch)};
  cuuint64_t strides[3] = {static_cast<cuuint64_t>(strides_bytes[0]),
                           static_cast<cuuint64_t>(strides_bytes[1]),
                           static_cast<cuuint64_t>(strides_bytes[2])};
  cuuint32_t box[4] = {static_cast<cuuint32_t>(swizzle_bytes / 2),
                       static_cast<cuuint32_t>(box_rows), 1, 1};
  cuuint32_t element_strides[4] = {1, 1, 1, 1};
  const CUresult res = encode(
      map, bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 4,
      const_cast<void*>(ptr), dims, strides, box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
      swizzle_bytes == 128 ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_64B,
      CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
      CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return res == CUDA_SUCCESS;
}

// The tail split (Traits::kTailSplit; tail_split.cuh): plans it for args.num_tiles tiles on
// `slots` CTAs and, where it runs, takes its scratch memory from p.scratch (per tail tile,
// plan.pieces slots of float32 partials, kDTiles + 1 float4s per consumer thread, and one
// counter per consumer, zeroed here on `stream`), sets args' tail fields and args.num_tiles to the
// whole tiles plus two rounds of pieces. tail_tiles stays 0 (whole tiles, as without the split)
// where the plan says no or no scratch memory is given.
template <class Tr>
cudaError_t plan_tail_split(Sm90Args& args, const FlashFwdParams& p, int64_t slots,
                            cudaStream_t stream) {
  args.tail_first = 0;
  args.tail_tiles = 0;
  args.tail_quota = 0;
  args.tail_pieces = 0;
  args.tail_partial = nullptr;
  args.tail_count = nullptr;
  if (p.scratch == nullptr) return cudaSuccess;
  const int64_t nb = (int64_t(p.seqlen_k) + Tr::kBlockN - 1) / Tr::kBlockN;
  const TailPlan plan = tail_plan(args.num_tiles, slots, nb, SK_SM90_TAIL_MIN_SAVED);
  if (plan.tail_tiles == 0) return cudaSuccess;
  // The list then runs to tail_first + 2 * slots: keep that, plus a round of slack, in 32 bits.
  if (int64_t(args.num_tiles) - plan.tail_tiles + 3 * slots > INT32_MAX) return cudaSuccess;
  constexpr int64_t kVecBytes = (Tr::kHeadDim / 8 + 1) * 16;  // per consumer thread
  const int64_t partial_bytes =
      int64_t(plan.tail_tiles) * plan.pieces * Tr::kConsumerWarpgroups * 128 * kVecBytes;
  const int64_t count_bytes = (int64_t(plan.tail_tiles) * Tr::kConsumerWarpgroups * 4 + 255) / 256 * 256;
  auto* mem = static_cast<unsigned char*>(
      p.scratch(p.scratch_ctx, static_cast<size_t>(count_bytes + partial_bytes)));
  if (mem == nullptr) return cudaSuccess;
  const cudaError_t zeroed = cudaMemsetAsync(mem, 0, static_cast<size_t>(count_bytes), stream);
  if (zeroed != cudaSuccess) return zeroed;
  args.tail_first = args.num_tiles - plan.tail_tiles;
  args.tail_tiles = plan.tail_tiles;
  args.tail_quota = plan.quota;
  args.tail_pieces = plan.pieces;
  args.tail_count = reinterpret_cast<int*>(mem);
  args.tail_partial = reinterpret_cast<float*>(mem + count_bytes);
  args.num_tiles = static_cast<int>(args.tail_first + 2 * slots);
  return cudaSuccess;
}

template <DType kDtype, int kHeadDim, bool kCausal, Sm90Variant kVariant, typename Kernel>
cudaError_t launch(Kernel kernel, const FlashFwdParams& p, cudaStream_t stream,
                   std::atomic<bool>* smem_raised) {
  using Tr = Traits<kHeadDim, kCausal, kVariant>;
  constexpr bool kBf16 = kDtype == DType::kBFloat16;
  // The dynamic schedule needs the zeroed tile counter (the binding allocates it).
  if (Tr::kDynamicSchedule && p.tile_counter == nullptr) return cudaErrorInvalidValue;
  Sm90Args args{};
  args.p = p;
  const bool ok =
      make_tensor_map(&args.tma_q, p.q, kBf16, p.batch, p.heads, p.seqlen_q, kHeadDim,
                      p.q_batch_stride, p.q_head_stride, p.q_row_stride, Tr::kQBoxRows,
                      Tr::kSwizzleBytes) &&
      make_tensor_map(&args.tma_k, p.k, kBf16, p.batch, p.heads_k, p.seqlen_k, kHeadDim,
                      p.k_batch_stride, p.k_head_stride, p.k_row_stride, Tr::kBlockN,
                      Tr::kSwizzleBytes) &&
      make_tensor_map(&args.tma_v, p.v, kBf16, p.batch, p.heads_k, p.seqlen_k, kHeadDim,
                      p.v_batch_stride, p.v_head_stride, p.v_row_stride, Tr::kBlockN,
                      Tr::kSwizzleBytes);
  if (!ok) return cudaErrorNotSupported;
  // O through TMA when its strides allow it (allocated by the binding they always do; a
  // caller's out may not), else plain stores.
  args.tma_store = Tr::kTmaStoreO && make_tensor_map(&args.tma_o, p.out, kBf16, p.batch, p.heads, p.seqlen_q,
                                   kHeadDim, p.o_batch_stride, p.o_head_stride, p.o_row_stride, Tr::kOBoxRows,
                                   Tr::kSwizzleBytes)
                       ? 1
                       : 0;
  // 16-byte plain stores of O (Traits::kWideStoreO) where every row of out starts 16-byte aligned
  // (elements are 2 bytes: 8 of them; the stride of a dimension of size 1 is never applied).
  const auto wide = [](int64_t stride, int size) { return size <= 1 || stride % 8 == 0; };
  args.o_wide = reinterpret_cast<uintptr_t>(p.out) % 16 == 0 && wide(p.o_batch_stride, p.batch) &&
                        wide(p.o_head_stride, p.heads) && wide(p.o_row_stride, p.seqlen_q)
                    ? 1
                    : 0;
  const cudaError_t attr = fwd::raise_smem_limit(kernel, Tr::kSmemBytes, smem_raised);
  if (attr != cudaSuccess) return attr;
  if constexpr (Tr::kBlocksPerSm > 1) {
    // Two CTAs of up to 113 KB need the whole 228 KB of the SM as shared memory.
    const cudaError_t carveout = cudaFuncSetAttribute(
        kernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared);
    if (carveout != cudaSuccess) return carveout;
  }
  // Persistent grid: kBlocksPerSm CTAs per SM (at most one per tile), each walking the tile list.
  const int64_t num_m_blocks = (p.seqlen_q + Tr::kBlockM - 1) / Tr::kBlockM;
  // Split-KV: the kSplitKV variant only, with its float32 partial buffers.
  if (Tr::kSplitKV != (p.num_splits >= 1 && p.o_accum != nullptr && p.lse_accum != nullptr)) {
    return cudaErrorInvalidValue;
  }
  const int64_t splits = Tr::kSplitKV ? p.num_splits : 1;
  const int64_t key_blocks = (int64_t(p.seqlen_k) + Tr::kBlockN - 1) / Tr::kBlockN;
  args.blocks_per_split = static_cast<int>((key_blocks + splits - 1) / splits);
  const int64_t num_tiles = num_m_blocks * p.heads * p.batch * splits;
  // Tile indices (plus one round of slack) must fit in 32 bits.
  if (num_tiles > INT32_MAX - 4096) return cudaErrorNotSupported;
  args.num_m_blocks = static_cast<int>(num_m_blocks);
  args.num_tiles = static_cast<int>(num_tiles);
  // L2 sections: as many (batch, head) pairs as keep their K and V within kL2SectionBytes (query
  // heads of one key/value head share it), rounded down to a power of two.
  constexpr int64_t kL2SectionBytes = int64_t(SK_SM90_L2_SECTION_MB) << 20;
  const int64_t kv_bytes_per_pair =
      std::max<int64_t>(1, int64_t(p.seqlen_k) * kHeadDim * 2 * 2 / p.head_ratio);
  const int64_t fit = std::max<int64_t>(1, kL2SectionBytes / kv_bytes_per_pair);
  int64_t pow2 = 1;
  while (pow2 * 2 <= fit) pow2 *= 2;
  args.section_pairs = static_cast<int>(std::min<int64_t>(pow2, int64_t(p.heads) * p.batch));
  int device = 0, sms = 0;
  cudaError_t status = cudaGetDevice(&device);
  if (status == cudaSuccess) status = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (status != cudaSuccess) return status;
  const int64_t slots = int64_t(sms) * Tr::kBlocksPerSm;  // persistent CTAs the SMs hold at once
  int ctas = static_cast<int>(num_tiles < slots ? num_tiles : slots);
  if constexpr (Tr::kTailSplit) {
    const cudaError_t planned = plan_tail_split<Tr>(args, p, slots, stream);
    if (planned != cudaSuccess) return planned;
    // The pieces are planned for `slots` CTAs and the kernel finds a CTA's pieces from gridDim.x
    // (tail_work_at): the grid must be exactly that.
    if (args.tail_tiles > 0) ctas = static_cast<int>(slots);
  }
  kernel<<<ctas, Tr::kThreads, Tr::kSmemBytes, stream>>>(args);
#if SK_SM90_WAIT_PROFILE
  if (cudaPeekAtLastError() == cudaSuccess) {
    print_wait_profile<<<1, 1, 0, stream>>>(ctas * Tr::kConsumerWarpgroups, Tr::kConsumerWarpgroups);
  }
#endif
  return cudaGetLastError();
}

}  // namespace sm90
}  // namespace sessionkit

// The body is compiled only for sm_90a (wgmma and setmaxnreg need the arch-specific target); for
// any other target the kernel is empty, and the binding never launches it there.
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define SESSIONKIT_SM90_BODY(DTYPE, HDIM, CAUSAL, VARIANT, ARGS)
#else
#define SESSIONKIT_SM90_BODY(DTYPE, HDIM, CAUSAL, VARIANT, ARGS) \
  sessionkit::sm90::flash_fwd_body<DTYPE, HDIM, CAUSAL, VARIANT>(ARGS);
#endif

// Defines, in one .cu file, the sm90-family kernel `NAME` (a plain extern "C" symbol, so that
// ptxas and the profiler report it by that name), its shared-memory size as `NAME_smem_bytes`,
// and the launcher run_flash_fwd_sm90<DTYPE, HDIM, CAUSAL, VARIANT> (an Sm90Variant).
#define SESSIONKIT_FLASH_FWD_SM90_INSTANCE(NAME, DTYPE, HDIM, CAUSAL, VARIANT)                      \
  extern "C" __global__ void __launch_bounds__(                                                  \
      sessionkit::sm90::Traits<HDIM, CAUSAL, VARIANT>::kThreads,                                 \
      sessionkit::sm90::Traits<HDIM, CAUSAL, VARIANT>::kBlocksPerSm)                             \
      NAME(const __grid_constant__ sessionkit::sm90::Sm90Args args) {                            \
    SESSIONKIT_SM90_BODY(DTYPE, HDIM, CAUSAL, VARIANT, args)                                     \
  }                                                                                              \
  extern "C" const int NAME##_smem_bytes =                                                       \
      sessionkit::sm90::Traits<HDIM, CAUSAL, VARIANT>::kSmemBytes;                               \
  namespace sessionkit {                                                                         \
  template <>                                                                                    \
  cudaError_t run_flash_fwd_sm90<DTYPE, HDIM, CAUSAL, VARIANT>(const FlashFwdParams& params,    \
                                                               cudaStream_t stream) {           \
    static std::atomic<bool> smem_raised[fwd::kMaxTrackedDevices];                              \
    return sm90::launch<DTYPE, HDIM, CAUSAL, VARIANT>(NAME, params, stream, smem_raised);       \
  }                                                                                              \
  }

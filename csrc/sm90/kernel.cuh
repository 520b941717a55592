// The sm90 family: a warp-specialized FlashAttention forward for Hopper (sm_90a).
//
// One CTA computes a kBlockM x D output tile for one (batch, head) with three warpgroups:
//   - warpgroup 0, the producer: one thread issues TMA loads of the Q tile and of the K and V
//     blocks into a kStages-deep shared-memory ring, each slot guarded by a full and an empty
//     mbarrier. The warpgroup gives most of its registers away (setmaxnreg).
//   - warpgroups 1 and 2, the consumers: each owns 64 query rows. Per key block it issues
//     S = Q K^T as wgmma with both operands in shared memory, runs the online softmax on S in
//     registers, and issues O += P V as wgmma with P from registers and V (N-major) from shared
//     memory, then releases the ring slot.
// Key blocks run from the last to the first, so the blocks that need a mask (the causal diagonal
// and the seqlen_k tail) come first and the bulk of the loop runs without mask code. Blocks above
// the causal diagonal are never loaded. CTAs take the heaviest query blocks first.
//
// Method: FlashAttention-3 (Shah et al., 2024), sections 3.1-3.2, without (yet) the pingpong
// schedule between consumers and the intra-warpgroup overlap of softmax and GEMMs.
#pragma once

#include <cstdint>

#include "../common/mask.cuh"
#include "../common/softmax.cuh"
#include "../common/utils.cuh"
#include "ptx.cuh"
#include "traits.cuh"
#include "wgmma.cuh"

namespace sessionkit {
namespace sm90 {

// Kernel parameters: the plain parameters plus one TMA tensor map per input, each describing a
// (B, H, S, D) tensor with its real strides as 4-D boxes of 64 columns x block rows.
struct Sm90Args {
  CUtensorMap tma_q;
  CUtensorMap tma_k;
  CUtensorMap tma_v;
  FlashFwdParams p;
};

template <class Tr>
struct SmemPlan {
  uint32_t q, k, v, bar;
  __device__ __forceinline__ uint32_t k_stage(int s) const { return k + s * Tr::kKVBytes; }
  __device__ __forceinline__ uint32_t v_stage(int s) const { return v + s * Tr::kKVBytes; }
  __device__ __forceinline__ uint32_t q_full() const { return bar; }
  __device__ __forceinline__ uint32_t k_full(int s) const { return bar + 8 * (1 + s); }
  __device__ __forceinline__ uint32_t k_empty(int s) const { return bar + 8 * (1 + Tr::kStages + s); }
  __device__ __forceinline__ uint32_t v_full(int s) const { return bar + 8 * (1 + 2 * Tr::kStages + s); }
  __device__ __forceinline__ uint32_t v_empty(int s) const { return bar + 8 * (1 + 3 * Tr::kStages + s); }
};

// How many key blocks the CTA whose first query row is row0 must visit: blocks [0, n).
template <class Tr, bool kCausal>
__device__ __forceinline__ int key_blocks(const FlashFwdParams& p, int row0) {
  int n = (p.seqlen_k + Tr::kBlockN - 1) / Tr::kBlockN;
  if constexpr (kCausal) {
    const int last_key = min(row0 + Tr::kBlockM, p.seqlen_q) - 1 + p.causal_offset;
    n = last_key < 0 ? 0 : min(n, last_key / Tr::kBlockN + 1);
  }
  return n;
}

template <DType kDtype, int kHeadDim, bool kCausal>
__device__ __forceinline__ void flash_fwd_body(const Sm90Args& args) {
  using Tr = Traits<kHeadDim>;
  using T = typename fwd::Elem<kDtype>::type;
  constexpr int kBlockM = Tr::kBlockM;
  constexpr int kBlockN = Tr::kBlockN;
  constexpr int kStages = Tr::kStages;
  constexpr int kNTiles = kBlockN / 8;    // n8 tiles of S per thread row pair
  constexpr int kDTiles = kHeadDim / 8;   // n8 tiles of O
  constexpr int kQKSteps = kHeadDim / 16;  // k16 steps of Q K^T
  constexpr int kPVSteps = kBlockN / 16;   // k16 steps of P V
  const FlashFwdParams& p = args.p;

  extern __shared__ unsigned char smem_raw[];
  const uint32_t base = (fwd::smem_addr(smem_raw) + 1023u) & ~1023u;
  const SmemPlan<Tr> sm{base + Tr::kQOffset, base + Tr::kKOffset, base + Tr::kVOffset,
                        base + Tr::kBarrierOffset};

  const int tid = threadIdx.x;
  const int warpgroup = tid / 128;
  const int m_block = gridDim.x - 1 - blockIdx.x;  // heaviest query blocks first
  const int head = blockIdx.y;
  const int batch = blockIdx.z;
  const int row0 = m_block * kBlockM;
  const int n_blocks = key_blocks<Tr, kCausal>(p, row0);

  if (tid == 0) {
    mbarrier_init(sm.q_full(), 1);
#pragma unroll
    for (int s = 0; s < kStages; ++s) {
      mbarrier_init(sm.k_full(s), 1);
      mbarrier_init(sm.v_full(s), 1);
      mbarrier_init(sm.k_empty(s), Tr::kConsumerWarpgroups);
      mbarrier_init(sm.v_empty(s), Tr::kConsumerWarpgroups);
    }
    fence_mbarrier_init();
  }
  __syncthreads();

  if (warpgroup == 0) {
    // ---- producer ----
    setmaxnreg_dec<Tr::kProducerRegisters>();
    if (tid == 0 && n_blocks > 0) {
      prefetch_tensormap(&args.tma_q);
      prefetch_tensormap(&args.tma_k);
      prefetch_tensormap(&args.tma_v);
      const int head_k = head / p.head_ratio;
      mbarrier_arrive_expect_tx(sm.q_full(), Tr::kQBytes);
#pragma unroll
      for (int c = 0; c < Tr::kChunks; ++c) {
        cp_async_bulk_tensor_4d_global_to_shared(sm.q + c * Tr::kQChunkBytes, &args.tma_q,
                                                 c * Tr::kChunkCols, row0, head, batch, sm.q_full());
      }
      for (int it = 0; it < n_blocks; ++it) {
        const int n = n_blocks - 1 - it;
        const int s = it % kStages;
        const uint32_t phase = (it / kStages) & 1;
        mbarrier_wait(sm.k_empty(s), phase ^ 1);
        mbarrier_arrive_expect_tx(sm.k_full(s), Tr::kKVBytes);
#pragma unroll
        for (int c = 0; c < Tr::kChunks; ++c) {
          cp_async_bulk_tensor_4d_global_to_shared(sm.k_stage(s) + c * Tr::kKVChunkBytes,
                                                   &args.tma_k, c * Tr::kChunkCols, n * kBlockN,
                                                   head_k, batch, sm.k_full(s));
        }
        mbarrier_wait(sm.v_empty(s), phase ^ 1);
        mbarrier_arrive_expect_tx(sm.v_full(s), Tr::kKVBytes);
#pragma unroll
        for (int c = 0; c < Tr::kChunks; ++c) {
          cp_async_bulk_tensor_4d_global_to_shared(sm.v_stage(s) + c * Tr::kKVChunkBytes,
                                                   &args.tma_v, c * Tr::kChunkCols, n * kBlockN,
                                                   head_k, batch, sm.v_full(s));
        }
      }
    }
    return;
  }

  // ---- consumers ----
  setmaxnreg_inc<Tr::kConsumerRegisters>();
  const int consumer = warpgroup - 1;
  const int warp = (tid / 32) % 4;  // warp within the warpgroup: 16 rows each
  const int lane = tid % 32;
  const int g = lane / 4;
  const int t = lane % 4;
  const int wg_row0 = row0 + consumer * 64;
  const int row_g = wg_row0 + warp * 16 + g;  // query row of this thread's s[i][0]
  const bool signals = (tid % 128) == 0;     // one thread per warpgroup releases ring slots

  float acc_o[kDTiles][4];
#pragma unroll
  for (int i = 0; i < kDTiles; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) acc_o[i][j] = 0.f;
  }
  fwd::OnlineSoftmax softmax;
  softmax.init();

  if (n_blocks > 0) mbarrier_wait(sm.q_full(), 0);
  const uint32_t q_base = sm.q + consumer * 64 * 128;  // this warpgroup's 64 rows of each chunk

  for (int it = 0; it < n_blocks; ++it) {
    const int n = n_blocks - 1 - it;
    const int s = it % kStages;
    const uint32_t phase = (it / kStages) & 1;

    // S = Q K^T: both operands K-major in shared memory.
    float acc_s[kNTiles][4];
    mbarrier_wait(sm.k_full(s), phase);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kQKSteps; ++kk) {
      const int c = kk / 4;               // 64-column chunk
      const uint32_t col_bytes = (kk % 4) * 32;  // 16 columns of 2 bytes
      const uint64_t desc_q = make_smem_desc_sw128(q_base + c * Tr::kQChunkBytes + col_bytes, 16, 1024);
      const uint64_t desc_k =
          make_smem_desc_sw128(sm.k_stage(s) + c * Tr::kKVChunkBytes + col_bytes, 16, 1024);
      wgmma_ss<kDtype, kBlockN, 0>(acc_s, desc_q, desc_k, kk > 0 ? 1 : 0);
    }
    wgmma_commit_group();
    wgmma_wait_group<0>();
    fence_registers(acc_s);
    if (signals) mbarrier_arrive(sm.k_empty(s));

    const int col0 = n * kBlockN;
    if (fwd::block_needs_mask<kCausal>(col0, kBlockN, wg_row0, p.seqlen_k, p.causal_offset)) {
      fwd::apply_mask<kCausal>(acc_s, row_g, col0 + 2 * t, p.seqlen_k, p.causal_offset);
    }
    softmax.update(acc_s, acc_o, p.scale_log2);
    uint32_t p_frag[kPVSteps][4];
    fwd::probs_to_a_frags<kDtype>(acc_s, p_frag);

    // O += P V: P from registers, V N-major (head dim contiguous) in shared memory.
    mbarrier_wait(sm.v_full(s), phase);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kPVSteps; ++kk) {
      const uint64_t desc_v =
          make_smem_desc_sw128(sm.v_stage(s) + kk * 16 * 128, Tr::kKVChunkBytes, 1024);
      wgmma_rs<kDtype, kHeadDim, 1>(acc_o, p_frag[kk], desc_v, 1);
    }
    wgmma_commit_group();
    wgmma_wait_group<0>();
    fence_registers(acc_o);
    fence_registers(p_frag);
    if (signals) mbarrier_arrive(sm.v_empty(s));
  }

  // Epilogue: normalise and store O and the LSE. Rows past seqlen_q are not stored.
  float inv_sum[2], row_lse[2];
  softmax.finalize(p.scale_log2, inv_sum, row_lse);
  T* out = static_cast<T*>(p.out) + batch * p.o_batch_stride + head * p.o_head_stride;
  float* lse = p.lse + batch * p.lse_batch_stride + head * p.lse_head_stride;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = row_g + 8 * r;
    if (row < p.seqlen_q) {
      T* orow = out + static_cast<int64_t>(row) * p.o_row_stride + 2 * t;
#pragma unroll
      for (int i = 0; i < kDTiles; ++i) {
        *reinterpret_cast<uint32_t*>(orow + i * 8) =
            fwd::pack2<kDtype>(acc_o[i][2 * r] * inv_sum[r], acc_o[i][2 * r + 1] * inv_sum[r]);
      }
      if (t == 0) lse[static_cast<int64_t>(row) * p.lse_row_stride] = row_lse[r];
    }
  }
}

}  // namespace sm90
}  // namespace sessionkit

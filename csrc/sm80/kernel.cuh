// The sm80 family: a FlashAttention-2 style forward kernel on mma.sync tensor cores. It runs on
// sm_80 and later, and is the path for GPUs without sm_90a (and for inputs TMA cannot describe).
//
// One CTA computes a kBlockM x D tile of the output for one (batch, head). Each of its warps owns 16
// query rows: its Q fragments stay in registers, and it walks the key/value tiles, computing
// S = Q K^T with m16n8k16 mma, an online softmax in base 2, and O += P V with P converted to 16-bit
// in registers. K and V tiles stream through a multi-stage cp.async pipeline in XOR-swizzled shared
// memory (16-byte chunks, chunk ^ (row & 7)), read with ldmatrix without bank conflicts.
//
// No torch headers here: the binding passes a FlashFwdParams and a cudaStream_t.
#pragma once

#include <cstdint>

#include "../common/mask.cuh"
#include "../common/softmax.cuh"
#include "../common/utils.cuh"

namespace sessionkit {
namespace fwd {

// Tuning knobs, overridable with -D for experiments (the defaults are what ships).
#ifndef SK_FWD_STAGES
#define SK_FWD_STAGES 2
#endif
#ifndef SK_FWD_BLOCK_N_D64
#define SK_FWD_BLOCK_N_D64 128
#endif
#ifndef SK_FWD_BLOCK_N_D128
#define SK_FWD_BLOCK_N_D128 128
#endif

// Tile shapes: 128 query rows (8 warps of 16), 128 keys per tile. At D=128 the 128-key tile needs
// 250-255 registers (no spills) and measured 8-10% faster than 64-key tiles (v3 in
// docs/kernel-notes.md); -DSK_FWD_BLOCK_N_D128=64 builds the earlier shape.
template <int kHeadDim_>
struct Traits {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = 128;
  static constexpr int kBlockN = kHeadDim == 64 ? SK_FWD_BLOCK_N_D64 : SK_FWD_BLOCK_N_D128;
  static constexpr int kWarps = kBlockM / 16;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kStages = SK_FWD_STAGES;
  static constexpr int kRowBytes = kHeadDim * 2;
  static constexpr int kChunksPerRow = kHeadDim / 8;  // 16-byte chunks
  static constexpr int kQBytes = kBlockM * kRowBytes;
  static constexpr int kTileBytes = kBlockN * kRowBytes;  // one K or one V tile
  static constexpr int kStageBytes = 2 * kTileBytes;
  static constexpr int kSmemBytes = kQBytes + kStages * kStageBytes;
  static constexpr int kMinBlocksPerSm = 1;

  static_assert(kHeadDim == 64 || kHeadDim == 128, "head dim must be 64 or 128");
  static_assert(kBlockN % 16 == 0 && kBlockM % 16 == 0, "tiles are multiples of 16");
  static_assert((kBlockM * kChunksPerRow) % kThreads == 0, "Q tile splits evenly over threads");
  static_assert((kBlockN * kChunksPerRow) % kThreads == 0, "K/V tile splits evenly over threads");
};

// ---------------------------------------------------------------------------------------------
// PTX wrappers

// 16-byte async copy global -> shared; when pred is false the destination is zero-filled and
// nothing is read (src must still be a valid address).
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool pred) {
  const int src_bytes = pred ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(src_bytes));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t addr, uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t addr, uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// D = A * B + D, m16n8k16, row-major A, column-major B, fp32 accumulators.
template <DType kDtype>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                          uint32_t b1) {
  if constexpr (kDtype == DType::kFloat16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Byte offset of 16-byte chunk `chunk` of row `row` in a swizzled tile.
template <int kRowBytes>
__device__ __forceinline__ uint32_t swz(int row, int chunk) {
  return static_cast<uint32_t>(row * kRowBytes + ((chunk ^ (row & 7)) << 4));
}

// Copy rows [row_start, row_start + kRows) of a (rows x D) matrix into a swizzled smem tile; rows at
// or past row_limit are zero-filled.
template <class Tr, int kRows, class T>
__device__ __forceinline__ void load_tile(uint32_t s_base, const T* g, int64_t row_stride,
                                          int row_start, int row_limit, int tid) {
  constexpr int kIters = kRows * Tr::kChunksPerRow / Tr::kThreads;
#pragma unroll
  for (int i = 0; i < kIters; ++i) {
    const int c = tid + i * Tr::kThreads;
    const int r = c / Tr::kChunksPerRow;
    const int ch = c % Tr::kChunksPerRow;
    const int grow = row_start + r;
    const bool ok = grow < row_limit;
    const T* src = g + (ok ? static_cast<int64_t>(grow) * row_stride : 0) + ch * 8;
    cp_async_16(s_base + swz<Tr::kRowBytes>(r, ch), src, ok);
  }
}

// ---------------------------------------------------------------------------------------------
// The kernel body; each .cu file wraps it in an extern "C" __global__ function with a plain name.

template <DType kDtype, int kHeadDim, bool kCausal>
__device__ __forceinline__ void flash_fwd_body(const FlashFwdParams& p) {
  using Tr = Traits<kHeadDim>;
  using T = typename Elem<kDtype>::type;
  constexpr int kBlockM = Tr::kBlockM;
  constexpr int kBlockN = Tr::kBlockN;
  constexpr int kStages = Tr::kStages;
  constexpr int kNTiles = kBlockN / 8;     // n8 tiles of S per warp
  constexpr int kDTiles = kHeadDim / 8;    // n8 tiles of O per warp
  constexpr int kQSteps = kHeadDim / 16;   // k16 steps of Q K^T
  constexpr int kPSteps = kBlockN / 16;    // k16 steps of P V

  extern __shared__ __align__(128) unsigned char smem[];

  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;
  // The grid is (query blocks x head_ratio, kv heads, batch): blockIdx.y is the key/value head
  // itself, so that the k and v addresses need no division (grouped-query attention maps query
  // head h to kv head h / head_ratio). Heaviest (last) query blocks first, so causal work
  // balances across waves.
  const int flat = gridDim.x - 1 - blockIdx.x;
  const int m_block = flat / p.head_ratio;
  const int head_k = blockIdx.y;
  const int head = head_k * p.head_ratio + flat % p.head_ratio;
  const int batch = blockIdx.z;
  const int row0 = m_block * kBlockM;
  const int seqlen_q = p.seqlen_q;
  const int seqlen_k = p.seqlen_k;

  const T* q = static_cast<const T*>(p.q) + batch * p.q_batch_stride + head * p.q_head_stride;
  const T* k = static_cast<const T*>(p.k) + batch * p.k_batch_stride + head_k * p.k_head_stride;
  const T* v = static_cast<const T*>(p.v) + batch * p.v_batch_stride + head_k * p.v_head_stride;

  int n_blocks = (seqlen_k + kBlockN - 1) / kBlockN;
  if constexpr (kCausal) {
    // Row i sees keys j <= i + offset: this CTA needs keys up to row0 + kBlockM - 1 + offset.
    const int last_key = row0 + kBlockM - 1 + p.causal_offset;
    n_blocks = last_key < 0 ? 0 : min(n_blocks, last_key / kBlockN + 1);
  }

  const uint32_t s_q = smem_addr(smem);
  const uint32_t s_kv = s_q + Tr::kQBytes;

  // Prologue: Q and the first kStages-1 K/V tiles, one commit group each.
  load_tile<Tr, kBlockM>(s_q, q, p.q_row_stride, row0, seqlen_q, tid);
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < n_blocks) {
      const uint32_t base = s_kv + s * Tr::kStageBytes;
      load_tile<Tr, kBlockN>(base, k, p.k_row_stride, s * kBlockN, seqlen_k, tid);
      load_tile<Tr, kBlockN>(base + Tr::kTileBytes, v, p.v_row_stride, s * kBlockN, seqlen_k, tid);
    }
    cp_async_commit();
  }

  float acc_o[kDTiles][4];
#pragma unroll
  for (int i = 0; i < kDTiles; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) acc_o[i][j] = 0.f;
  }
  OnlineSoftmax softmax;
  softmax.init();
  uint32_t q_frag[kQSteps][4];

  const int warp_row0 = row0 + warp * 16;
  const int g = lane >> 2;  // row within the 8-row group
  const int t = lane & 3;   // column pair within the quad

  // ldmatrix lane addressing (see the notes in docs/kernel-notes.md):
  //  A operand (Q) and trans B operand (V): row = lane & 15, chunk offset = lane >> 4
  //  B operand (K): row = (lane & 7) + ((lane >> 4) << 3), chunk offset = (lane >> 3) & 1
  const int a_row = lane & 15;
  const int a_chunk = lane >> 4;
  const int k_row = (lane & 7) + ((lane >> 4) << 3);
  const int k_chunk = (lane >> 3) & 1;

  for (int n = 0; n < n_blocks; ++n) {
    cp_async_wait<kStages - 2>();
    __syncthreads();
    // Every thread is past tile n-1: its stage can be refilled with tile n + kStages - 1.
    {
      const int nn = n + kStages - 1;
      if (nn < n_blocks) {
        const uint32_t base = s_kv + (nn % kStages) * Tr::kStageBytes;
        load_tile<Tr, kBlockN>(base, k, p.k_row_stride, nn * kBlockN, seqlen_k, tid);
        load_tile<Tr, kBlockN>(base + Tr::kTileBytes, v, p.v_row_stride, nn * kBlockN, seqlen_k,
                               tid);
      }
      cp_async_commit();
    }
    if (n == 0) {
#pragma unroll
      for (int kk = 0; kk < kQSteps; ++kk) {
        ldmatrix_x4(s_q + swz<Tr::kRowBytes>(warp * 16 + a_row, kk * 2 + a_chunk), q_frag[kk]);
      }
    }
    const int col0 = n * kBlockN;
    if constexpr (kCausal) {
      // All of this warp's rows lie before the tile's first key: nothing to add.
      if (col0 > warp_row0 + 15 + p.causal_offset) continue;
    }
    const uint32_t s_k = s_kv + (n % kStages) * Tr::kStageBytes;
    const uint32_t s_v = s_k + Tr::kTileBytes;

    // S = Q K^T for this warp's 16 rows and the tile's kBlockN keys.
    float acc_s[kNTiles][4];
#pragma unroll
    for (int i = 0; i < kNTiles; ++i) {
#pragma unroll
      for (int j = 0; j < 4; ++j) acc_s[i][j] = 0.f;
    }
#pragma unroll
    for (int kk = 0; kk < kQSteps; ++kk) {
#pragma unroll
      for (int j = 0; j < kNTiles / 2; ++j) {
        uint32_t b[4];
        ldmatrix_x4(s_k + swz<Tr::kRowBytes>(j * 16 + k_row, kk * 2 + k_chunk), b);
        mma_16816<kDtype>(acc_s[2 * j], q_frag[kk], b[0], b[1]);
        mma_16816<kDtype>(acc_s[2 * j + 1], q_frag[kk], b[2], b[3]);
      }
    }

    // Mask keys past the end and, when causal, after the row; then the online softmax.
    if (block_needs_mask<kCausal>(col0, kBlockN, warp_row0, seqlen_k, p.causal_offset)) {
      apply_mask<kCausal>(acc_s, warp_row0 + g, col0 + 2 * t, seqlen_k, p.causal_offset);
    }
    softmax.update(acc_s, acc_o, p.scale_log2);

    // O += P V, with P repacked from the S accumulators into A fragments.
#pragma unroll
    for (int kk = 0; kk < kPSteps; ++kk) {
      uint32_t a[4];
      probs_to_a_frag<kDtype>(acc_s, kk, a);
#pragma unroll
      for (int j = 0; j < kDTiles / 2; ++j) {
        uint32_t b[4];
        ldmatrix_x4_trans(s_v + swz<Tr::kRowBytes>(kk * 16 + a_row, j * 2 + a_chunk), b);
        mma_16816<kDtype>(acc_o[2 * j], a, b[0], b[1]);
        mma_16816<kDtype>(acc_o[2 * j + 1], a, b[2], b[3]);
      }
    }
  }
  cp_async_wait<0>();

  // Epilogue: finish the row sums across the quad, normalise, store O and the LSE.
  T* out = static_cast<T*>(p.out) + batch * p.o_batch_stride + head * p.o_head_stride;
  float* lse = p.lse + batch * p.lse_batch_stride + head * p.lse_head_stride;
  float inv_sum[2], row_lse[2];
  softmax.finalize(p.scale_log2, inv_sum, row_lse);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = warp_row0 + g + r * 8;
    if (row < seqlen_q) {
      T* orow = out + static_cast<int64_t>(row) * p.o_row_stride + 2 * t;
#pragma unroll
      for (int i = 0; i < kDTiles; ++i) {
        *reinterpret_cast<uint32_t*>(orow + i * 8) =
            pack2<kDtype>(acc_o[i][2 * r] * inv_sum[r], acc_o[i][2 * r + 1] * inv_sum[r]);
      }
      if (t == 0) lse[static_cast<int64_t>(row) * p.lse_row_stride] = row_lse[r];
    }
  }
}

}  // namespace fwd
}  // namespace sessionkit

// Online softmax in base 2 on score accumulators in the tensor-core C layout (see mask.cuh),
// shared by both families.
//
// Scores stay unscaled, so the row max is taken on raw scores: scale_log2 must be >= 0 (the
// binding turns a negative scale into a positive one on negated q). The softmax scale is folded into the exponent, so each probability costs
// one FFMA and one MUFU.EX2: p = 2^(s * scale_log2 - m * scale_log2). Only the row max is reduced
// across the four threads of a row each block; the row sums stay per thread until finalize().
// A row that has seen only masked keys keeps max = -inf; the exponent then uses 0 as its max, so
// that its probabilities are 0 and never NaN. Method: FlashAttention-2 (Dao, 2023), section 3.1.
#pragma once

#include <cmath>

#include "utils.cuh"

namespace sessionkit {
namespace fwd {

// Experiment switch (off in the shipped build): of every 8 n8-tiles of scores, the first
// SK_SOFTMAX_POLY_EXP2_EIGHTHS take their exponentials from poly_exp2 (FMA pipe) instead of
// MUFU.EX2, so that the two units share the softmax. Not measured yet (docs/kernel-notes.md).
#ifndef SK_SOFTMAX_POLY_EXP2_EIGHTHS
#define SK_SOFTMAX_POLY_EXP2_EIGHTHS 0
#endif
// Experiment switch (off in the shipped build): the row max of a block as four independent
// FMNMX chains instead of one, so that the exponentials, which wait for it, start sooner.
#ifndef SK_SOFTMAX_TREE_MAX
#define SK_SOFTMAX_TREE_MAX 0
#endif

// 1/sum of the finalize on MUFU.RCP (1, shipped) or by IEEE division (0, as before v18).
#ifndef SK_SOFTMAX_FAST_RCP
#define SK_SOFTMAX_FAST_RCP 1
#endif

struct OnlineSoftmax {
  float row_max[2];  // running max of rows g and g + 8, unscaled
  float row_sum[2];  // this thread's share of the running denominators

  __device__ __forceinline__ void init() {
    row_max[0] = row_max[1] = -INFINITY;
    row_sum[0] = row_sum[1] = 0.f;
  }

  // Row r (0: row g, 1: row g + 8) of one key block: turns its scores into probabilities in
  // place, updates the running max and sum, and returns the factor by which what was
  // accumulated before (O) must be scaled.
  template <int kNTiles>
  __device__ __forceinline__ float update_row(float (&s)[kNTiles][4], int r, float scale_log2) {
    float mx = row_max[r];
    if constexpr (SK_SOFTMAX_TREE_MAX && kNTiles >= 8) {
      // Four independent chains, then their max: the row max's dependent FMNMX shrink from
      // kNTiles + 1 to kNTiles / 4 + 3.
      float part[4];
#pragma unroll
      for (int i = 0; i < kNTiles; ++i) {
        const float pair = fmaxf(s[i][2 * r], s[i][2 * r + 1]);
        part[i % 4] = i < 4 ? pair : fmaxf(part[i % 4], pair);
      }
      part[0] = fmaxf(part[0], mx);
      mx = fmaxf(fmaxf(part[0], part[1]), fmaxf(part[2], part[3]));
    } else {
#pragma unroll
      for (int i = 0; i < kNTiles; ++i) mx = fmaxf(mx, fmaxf(s[i][2 * r], s[i][2 * r + 1]));
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float m_scaled = mx == -INFINITY ? 0.f : mx * scale_log2;
    // Nothing accumulated yet (max still -inf): the factor is 0, also when scale_log2 is 0.
    const float correction =
        row_max[r] == -INFINITY ? 0.f : fast_exp2(row_max[r] * scale_log2 - m_scaled);
    row_max[r] = mx;
    float sum = 0.f;
#pragma unroll
    for (int i = 0; i < kNTiles; ++i) {
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const float x = fmaf(s[i][2 * r + c], scale_log2, -m_scaled);
        const float p = (i % 8) < SK_SOFTMAX_POLY_EXP2_EIGHTHS ? poly_exp2(x) : fast_exp2(x);
        s[i][2 * r + c] = p;
        sum += p;
      }
    }
    row_sum[r] = row_sum[r] * correction + sum;
    return correction;
  }

  // One key block, both rows, applying the factors to o at once (o must not be in flight).
  template <int kNTiles, int kDTiles>
  __device__ __forceinline__ void update(float (&s)[kNTiles][4], float (&o)[kDTiles][4],
                                         float scale_log2) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float correction = update_row(s, r, scale_log2);
#pragma unroll
      for (int i = 0; i < kDTiles; ++i) {
        o[i][2 * r] *= correction;
        o[i][2 * r + 1] *= correction;
      }
    }
  }

  // One key block, both rows, returning the factors: for a caller whose o is still being written
  // by an in-flight P V product; it applies them later with rescale().
  template <int kNTiles>
  __device__ __forceinline__ void update(float (&s)[kNTiles][4], float scale_log2,
                                         float (&correction)[2]) {
#pragma unroll
    for (int r = 0; r < 2; ++r) correction[r] = update_row(s, r, scale_log2);
  }

  template <int kDTiles>
  __device__ __forceinline__ static void rescale(float (&o)[kDTiles][4],
                                                 const float (&correction)[2]) {
#pragma unroll
    for (int i = 0; i < kDTiles; ++i) {
      o[i][0] *= correction[0];
      o[i][1] *= correction[0];
      o[i][2] *= correction[1];
      o[i][3] *= correction[1];
    }
  }

  // Completes the row sums across the quad. Returns 1/sum per row (0 for a row that saw no key)
  // and the natural-log LSE, -inf for such a row. The two rows' shuffles interleave, and 1/sum
  // is MUFU.RCP alone (SK_SOFTMAX_FAST_RCP): a row that saw a key has sum >= 1 (its max
  // contributes 2^0), so the approximation's 1 ulp and its flush of subnormals do not reach the
  // bf16 or fp16 output; the IEEE division's branches had serialized the two rows.
  __device__ __forceinline__ void finalize(float scale_log2, float (&inv_sum)[2], float (&lse)[2]) {
    float sum[2] = {row_sum[0], row_sum[1]};
#pragma unroll
    for (int r = 0; r < 2; ++r) sum[r] += __shfl_xor_sync(0xffffffffu, sum[r], 1);
#pragma unroll
    for (int r = 0; r < 2; ++r) sum[r] += __shfl_xor_sync(0xffffffffu, sum[r], 2);
    constexpr float kLn2 = 0.6931471805599453f;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const bool empty = !(sum[r] > 0.f);
#if SK_SOFTMAX_FAST_RCP
      inv_sum[r] = empty ? 0.f : fast_rcp(sum[r]);
#else
      inv_sum[r] = empty ? 0.f : 1.f / sum[r];
#endif
      lse[r] = empty ? -INFINITY : (row_max[r] * scale_log2 + __log2f(sum[r])) * kLn2;
    }
  }
};

// P (probabilities, fp32 C layout) -> 16-bit A-operand fragments for the P V product: the C
// layout of two adjacent n8 tiles is the A layout of one k16 step, so this is a repack only.
// probs_to_a_frag converts k16 step kk only, so that a caller can let S die step by step.
template <DType kDtype, int kNTiles>
__device__ __forceinline__ void probs_to_a_frag(const float (&p)[kNTiles][4], int kk,
                                                uint32_t (&a)[4]) {
  a[0] = pack2<kDtype>(p[2 * kk][0], p[2 * kk][1]);
  a[1] = pack2<kDtype>(p[2 * kk][2], p[2 * kk][3]);
  a[2] = pack2<kDtype>(p[2 * kk + 1][0], p[2 * kk + 1][1]);
  a[3] = pack2<kDtype>(p[2 * kk + 1][2], p[2 * kk + 1][3]);
}

template <DType kDtype, int kNTiles>
__device__ __forceinline__ void probs_to_a_frags(const float (&p)[kNTiles][4],
                                                 uint32_t (&a)[kNTiles / 2][4]) {
#pragma unroll
  for (int kk = 0; kk < kNTiles / 2; ++kk) probs_to_a_frag<kDtype>(p, kk, a[kk]);
}

}  // namespace fwd
}  // namespace sessionkit

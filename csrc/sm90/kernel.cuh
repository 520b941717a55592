// The sm90 family: a warp-specialized FlashAttention forward for Hopper (sm_90a).
//
// A CTA computes kBlockM x D output tiles, one (batch, head, query block) at a time, with 1 + C
// warpgroups:
//   - warpgroup 0, the producer: one thread issues TMA loads of the Q tile and of the K and V
//     blocks into a kStages-deep shared-memory ring, each slot guarded by a full and an empty
//     mbarrier. The warpgroup gives most of its registers away (setmaxnreg).
//   - warpgroups 1..C (C = 2 or 3), the consumers: each owns 64 query rows. Per key block it issues
//     S = Q K^T as wgmma with both operands in shared memory, runs the online softmax on S in
//     registers, and issues O += P V as wgmma with P from registers and V (N-major) from shared
//     memory, then releases the ring slot.
// Key blocks run from the last to the first, so the blocks that need a mask (the causal diagonal
// and the seqlen_k tail) come first and the bulk of the loop runs without mask code. Blocks above
// the causal diagonal are never loaded. The grid is persistent: one CTA per SM walks a list of
// (query block, head, batch) tiles in L2 sections, longest first inside each (see tile_at), and
// its producer loads the next tile's Q and first key blocks while the consumers finish the current
// one. O leaves through shared memory and a TMA store where the shape leaves room for it.
// The consumers take turns on the tensor cores (pingpong, on named barriers), and inside a
// consumer the next Q K^T is issued before the current P V is waited on, so the softmax of one
// block runs while GEMMs are in flight. Method: FlashAttention-3 (Shah et al., 2024), sections
// 3.1-3.2 and Algorithm 2.
#pragma once

#include <cstdint>

#include "../common/mask.cuh"
#include "../common/softmax.cuh"
#include "../common/utils.cuh"
#include "o_stage.cuh"
#include "ptx.cuh"
#include "tail_split.cuh"
#include "traits.cuh"
#include "wgmma.cuh"

#ifndef SK_SM90_WAIT_PROFILE
#define SK_SM90_WAIT_PROFILE 0
#endif
#if SK_SM90_WAIT_PROFILE
#include <cstdio>  // printf in print_wait_profile (the extension's build includes no stdio itself)
#endif

namespace sessionkit {
namespace sm90 {

// -DSK_SM90_WAIT_PROFILE=1, a diagnostic build that never ships: each consumer thread counts the SM
// clock cycles it spends in each kind of wait (clock64 around the wait) and its epilogue, and the
// first thread of each consumer warpgroup prints one "sk_wait" line when the CTA ends
// (benchmarks/wait_profile.py runs a config in such a build and sums the lines). Without the
// switch SK_WAIT(kind, statement) is the statement alone.
// In the epilogue: efinal is the softmax's finalize (the row sums across the quad, 1 / sum and
// the LSE), estore the stores of O and the LSE (into the staging, or to global memory); with the
// TMA store of O, ostore is the wait for the previous tile's store to have read the O staging
// plus the barrier after it, osync the proxy fence and the barrier before the store; epilogue is
// the rest of it (the tail split's merge included).
enum WaitKind {
  kWaitTile, kWaitQ, kWaitK, kWaitV, kWaitTurn, kWaitS, kWaitPV, kEpilogue, kWaitOStore,
  kWaitOSync, kEpiFinal, kEpiStore, kWaitKinds
};
#if SK_SM90_WAIT_PROFILE
#define SK_WAIT(kind, ...)                                                  \
  do {                                                                      \
    const long long sk_t0_ = clock64();                                     \
    __VA_ARGS__;                                                            \
    wait_cycles[kind] += static_cast<uint32_t>(clock64() - sk_t0_);         \
  } while (0)
// SK_SPAN_BEGIN(t0) ... SK_SPAN_END(kind, t0) counts the cycles between them as `kind`, for
// code that SK_WAIT cannot take as an argument (loops under #pragma unroll).
#define SK_SPAN_BEGIN(t0) const long long t0 = clock64()
#define SK_SPAN_END(kind, t0) wait_cycles[kind] += static_cast<uint32_t>(clock64() - t0)
#else
#define SK_WAIT(kind, ...) __VA_ARGS__
#define SK_SPAN_BEGIN(t0) \
  do {                    \
  } while (0)
#define SK_SPAN_END(kind, t0) \
  do {                        \
  } while (0)
#endif

#if SK_SM90_WAIT_PROFILE
// One row per consumer warpgroup of the last launch of this file's kernel: tiles, total cycles,
// then the cycles of each WaitKind.
constexpr int kWaitProfileRows = 1024;
static __device__ uint32_t g_wait_profile[kWaitProfileRows][2 + kWaitKinds];

// Prints the table's first `rows` rows, one "sk_wait" line each, and clears them. Static, like the
// table: every instantiation's translation unit has its own copy (the extension links several).
static __global__ void print_wait_profile(int rows, int consumers) {
  for (int r = 0; r < rows && r < kWaitProfileRows; ++r) {
    const uint32_t* v = g_wait_profile[r];
    printf("sk_wait cta %d consumer %d tiles %u total %u tile %u q %u k %u v %u turn %u s %u "
           "pv %u epilogue %u ostore %u osync %u efinal %u estore %u\n",
           r / consumers, r % consumers, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9],
           v[10], v[11], v[12], v[13]);
    for (int k = 0; k < 2 + kWaitKinds; ++k) g_wait_profile[r][k] = 0;
  }
}
#endif

// Kernel parameters: the plain parameters plus one TMA tensor map per input, each describing a
// (B, H, S, D) tensor with its real strides as 4-D boxes of 64 columns x block rows.
struct Sm90Args {
  CUtensorMap tma_q;
  CUtensorMap tma_k;
  CUtensorMap tma_v;
  CUtensorMap tma_o;  // valid when tma_store: O is then stored by TMA from shared memory
  FlashFwdParams p;
  int tma_store;      // 0: O goes out in plain 4-byte stores (strides TMA cannot describe)
  int num_m_blocks;   // query blocks per (batch, head)
  int num_tiles;      // num_m_blocks * heads * batch * max(1, p.num_splits)
  int section_pairs;  // (batch, head) pairs per L2 section (see tile_at)
  int blocks_per_split;  // key blocks per split-KV range (p.num_splits > 1)
  // The tail split (Traits::kTailSplit; see tail_work_at), on when tail_tiles > 0: the list's
  // tiles [tail_first, tail_first + tail_tiles) are cut into pieces of tail_quota key blocks per
  // CTA, and num_tiles is then tail_first + 2 * gridDim.x (two rounds of pieces). A piece writes
  // its partial result to tail_partial (tail_pieces slots per tile) and counts itself in
  // tail_count (one int32 per tile and consumer, zero at launch).
  int tail_first;
  int tail_tiles;
  int tail_quota;
  int tail_pieces;
  float* tail_partial;
  int* tail_count;
  // 1: out is 16-byte aligned with strides of multiples of 8 elements, so its plain stores may be
  // 16 bytes wide (Traits::kWideStoreO). Last, so that no other field moves (a moved parameter
  // changes how ptxas pairs their loads, and with it every kernel's SASS).
  int o_wide;
};

// The persistent schedule walks one list of (query block, head, batch) tiles.
// Causal: the (batch, head) pairs are cut into L2 sections of section_pairs pairs whose K and V
// fit in L2 together; the list runs section by section, and inside a section longest first: the
// section's pairs of the last query block (the most key blocks), then of the one before, and so
// on. The CTAs running at one time thus share the K and V of a few heads, and the long tiles start
// first. CTA i starts on tile i and then takes the next tile of the list from a global counter
// when its producer has issued the last load of its current tile (dynamic), so the long tiles do
// not pile up on a few CTAs (a static round robin left the most loaded CTA 15 % above the mean).
// Non-causal: every tile is as long, and in round r CTA i takes tile r * gridDim.x + i (static);
// two-consumer shapes list the tiles head-major (the query blocks of one pair are neighbours), the
// three-consumer D=64 shape in the L2 sections above. Query heads that share a key/value head are
// neighbours in both orders. (-DSK_SM90_SNAKE=1 makes the static order alternate its slot order
// each round; it measured 10-15 % slower on causal shapes, docs/kernel-notes.md.)
// Method: FlashAttention-3's persistent tile schedulers (static for non-causal; for causal, an
// atomic counter handing out the longest tiles first within L2 sections).
struct Tile {
  int m_block, head, batch;
};

__device__ __forceinline__ int tile_index(int round) {
  const int slot = (SK_SM90_SNAKE && (round & 1)) ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
  return round * gridDim.x + slot;
}

template <bool kHeadMajor>
__device__ __forceinline__ Tile tile_at(const Sm90Args& args, int index) {
  if constexpr (kHeadMajor) {
    const int pair = index / args.num_m_blocks;
    return Tile{index - pair * args.num_m_blocks, pair % args.p.heads, pair / args.p.heads};
  }
  const int pairs = args.p.heads * args.p.batch;
  const int section_tiles = args.num_m_blocks * args.section_pairs;
  const int section = index / section_tiles;
  const int within = index - section * section_tiles;
  const int first_pair = section * args.section_pairs;
  const int section_size = min(args.section_pairs, pairs - first_pair);
  const int rank = within / section_size;
  const int pair = first_pair + (within - rank * section_size);
  return Tile{args.num_m_blocks - 1 - rank, pair % args.p.heads, pair / args.p.heads};
}

template <class Tr>
struct SmemPlan {
  uint32_t q, k, v, bar;
  // Tile ring (dynamic schedule): the producer writes tile indices into two slots.
  static constexpr int kQB = 2 * Tr::kQBarrierPairs;  // Q's barriers come first
  __device__ __forceinline__ uint32_t tile_full(int slot) const { return bar + 8 * (kQB + 4 * Tr::kStages + slot); }
  __device__ __forceinline__ uint32_t tile_empty(int slot) const { return bar + 8 * (kQB + 2 + 4 * Tr::kStages + slot); }
  __device__ __forceinline__ uint32_t tile_slot(int slot) const {
    return bar + (Tr::kTileSlotOffset - Tr::kBarrierOffset) + 4 * slot;
  }
  __device__ __forceinline__ uint32_t k_stage(int s) const { return k + s * Tr::kKVBytes; }
  __device__ __forceinline__ uint32_t v_stage(int s) const { return v + s * Tr::kKVBytes; }
  __device__ __forceinline__ uint32_t q_stage(int slot) const { return q + slot * Tr::kQBytes; }
  __device__ __forceinline__ uint32_t q_full(int slot) const { return bar + 8 * slot; }
  __device__ __forceinline__ uint32_t q_empty(int slot) const { return bar + 8 * (Tr::kQBarrierPairs + slot); }
  __device__ __forceinline__ uint32_t k_full(int s) const { return bar + 8 * (kQB + s); }
  __device__ __forceinline__ uint32_t k_empty(int s) const { return bar + 8 * (kQB + Tr::kStages + s); }
  __device__ __forceinline__ uint32_t v_full(int s) const { return bar + 8 * (kQB + 2 * Tr::kStages + s); }
  __device__ __forceinline__ uint32_t v_empty(int s) const { return bar + 8 * (kQB + 3 * Tr::kStages + s); }
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

// A tile of the list and the key blocks it visits.
struct TileWork {
  Tile tile;
  int row0;      // its first query row
  int n_begin;   // key blocks [n_begin, n_begin + n_blocks)
  int n_blocks;
  int split;     // its split-KV range (0 without a split)
  int pieces;    // tail split: the tile's pieces (1: a whole tile; 0: an empty piece, skipped)
  int piece;     // tail split: this piece's place among them, in key order
  int tail_tile; // tail split: the tile's place among the tail tiles
};

// The tail split (Traits::kTailSplit; tail_split.cuh): the piece of the tail that list index
// `index` (>= args.tail_first) names. The plan is for gridDim.x CTAs (launch.cuh launches
// exactly the `slots` it planned for) walking the static order without the snake (the trait is
// off with SK_SM90_SNAKE: a reversed tail round would give one CTA two other CTAs' pieces).
template <class Tr>
__device__ __forceinline__ TileWork tail_work_at(const Sm90Args& args, int index) {
  const int u = index - args.tail_first;
  const TailPiece piece =
      tail_piece(u % static_cast<int>(gridDim.x), u >= static_cast<int>(gridDim.x),
                 args.tail_tiles, key_blocks<Tr, false>(args.p, 0), args.tail_quota);
  TileWork w{};
  if (piece.pieces == 0) return w;  // pieces = 0: nothing to do
  w.tile = tile_at<Tr::kHeadMajor>(args, args.tail_first + piece.tile);
  w.row0 = w.tile.m_block * Tr::kBlockM;
  w.n_begin = piece.n_begin;
  w.n_blocks = piece.n_blocks;
  w.pieces = piece.pieces;
  w.piece = piece.piece;
  w.tail_tile = piece.tile;
  return w;
}

// Split-KV (the kSplitKV variant): the num_splits ranges of one tile are
// neighbours in the list (they share its Q), and range r visits key blocks
// [r * blocks_per_split, (r + 1) * blocks_per_split) clipped to the keys.
template <class Tr, bool kCausal>
__device__ __forceinline__ TileWork work_at(const Sm90Args& args, int index) {
  int split = 0;
  if constexpr (Tr::kSplitKV) {
    const int tile_index = index / args.p.num_splits;
    split = index - tile_index * args.p.num_splits;
    index = tile_index;
  }
  if constexpr (Tr::kTailSplit) {
    if (args.tail_tiles > 0 && index >= args.tail_first) return tail_work_at<Tr>(args, index);
  }
  const Tile tile = tile_at<Tr::kHeadMajor>(args, index);
  const int row0 = tile.m_block * Tr::kBlockM;
  const int n_total = key_blocks<Tr, kCausal>(args.p, row0);
  if constexpr (Tr::kSplitKV) {
    const int n_begin = split * args.blocks_per_split;
    const int n_blocks = max(0, min(args.blocks_per_split, n_total - n_begin));
    return TileWork{tile, row0, n_begin, n_blocks, split, 1, 0, 0};
  }
  return TileWork{tile, row0, 0, n_total, 0, 1, 0, 0};
}

template <DType kDtype, int kHeadDim, bool kCausal, Sm90Variant kVariant>
__device__ __forceinline__ void flash_fwd_body(const Sm90Args& args) {
  using Tr = Traits<kHeadDim, kCausal, kVariant>;
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
  const uint32_t o_smem_base = base + Tr::kOOffset;

  const int tid = threadIdx.x;
  // With Tr::kUniform, broadcast from lane 0: the value is the same in every lane, and a shuffle
  // from a fixed lane lets ptxas know it, so that what derives from it (ring slots, wgmma
  // descriptors) can live in uniform registers.
  const int warpgroup = Tr::kUniform ? __shfl_sync(0xffffffffu, tid / 128, 0) : tid / 128;

  if (tid == 0) {
#pragma unroll
    for (int slot = 0; slot < Tr::kQBarrierPairs; ++slot) {
      mbarrier_init(sm.q_full(slot), 1);
      // Per-consumer Q (Traits::kQPerConsumer): only that consumer releases its rows.
      mbarrier_init(sm.q_empty(slot), Tr::kQPerConsumer ? 1 : Tr::kConsumerWarpgroups);
    }
#pragma unroll
    for (int s = 0; s < kStages; ++s) {
      mbarrier_init(sm.k_full(s), 1);
      mbarrier_init(sm.v_full(s), 1);
      mbarrier_init(sm.k_empty(s), Tr::kConsumerWarpgroups);
      mbarrier_init(sm.v_empty(s), Tr::kConsumerWarpgroups);
    }
#pragma unroll
    for (int slot = 0; slot < 2; ++slot) {
      mbarrier_init(sm.tile_full(slot), 1);
      mbarrier_init(sm.tile_empty(slot), 128 * Tr::kConsumerWarpgroups);
    }
    fence_mbarrier_init();
  }
  __syncthreads();

  if (warpgroup == 0) {
    // ---- producer: one thread walks the same tiles as the consumers and fills the ring ----
    setmaxnreg_dec<Tr::kProducerRegisters>();
    if (tid != 0) return;
    prefetch_tensormap(&args.tma_q);
    prefetch_tensormap(&args.tma_k);
    prefetch_tensormap(&args.tma_v);
    if (Tr::kTmaStoreO && args.tma_store) prefetch_tensormap(&args.tma_o);
    int it = 0;      // key blocks loaded so far, over all tiles: ring slot and phase
    int q_round = 0;  // Q tiles loaded so far
    int index = blockIdx.x;  // the dynamic schedule's current tile
    // Traits::kPrefetchNext: tile `next`'s Q and its first key blocks (in load order) into L2.
    auto prefetch_tile = [&](int next) {
      if (next >= args.num_tiles) return;
      const TileWork w = work_at<Tr, kCausal>(args, next);
      if (w.n_blocks <= 0) return;
      const int head_k = w.tile.head / p.head_ratio;
#pragma unroll
      for (int r = 0; r < Tr::kBlockM; r += Tr::kQBoxRows) {
#pragma unroll
        for (int c = 0; c < Tr::kChunks; ++c) {
          cp_async_bulk_prefetch_tensor_4d_l2_global(&args.tma_q, c * Tr::kChunkCols, w.row0 + r,
                                                     w.tile.head, w.tile.batch);
        }
      }
      const int blocks = min(w.n_blocks, SK_SM90_PREFETCH_BLOCKS);
      for (int j = 0; j < blocks; ++j) {
        const int n = w.n_begin + w.n_blocks - 1 - j;
#pragma unroll
        for (int c = 0; c < Tr::kChunks; ++c) {
          cp_async_bulk_prefetch_tensor_4d_l2_global(&args.tma_k, c * Tr::kChunkCols, n * kBlockN,
                                                     head_k, w.tile.batch);
          cp_async_bulk_prefetch_tensor_4d_l2_global(&args.tma_v, c * Tr::kChunkCols, n * kBlockN,
                                                     head_k, w.tile.batch);
        }
      }
    };
    for (int round = 0;; ++round) {
      if constexpr (Tr::kTileRing) {
        // Hand the tile to the consumers through the two-slot tile ring.
        if constexpr (!Tr::kDynamicSchedule) index = tile_index(round);
        const int slot = round & 1;
        mbarrier_wait(sm.tile_empty(slot), ((round >> 1) & 1) ^ 1);
        st_shared_b32(sm.tile_slot(slot), static_cast<uint32_t>(index));
        mbarrier_arrive(sm.tile_full(slot));  // release: the consumers' wait sees the index
      } else {
        index = tile_index(round);
      }
      if (index >= args.num_tiles) break;
      const TileWork work = work_at<Tr, kCausal>(args, index);
      const Tile tile = work.tile;
      const int row0 = work.row0, n_begin = work.n_begin, n_blocks = work.n_blocks;
      const int head_k = tile.head / p.head_ratio;
      // Per-consumer Q (Traits::kQPerConsumer): consumer c's 64 rows, once c has released its
      // rows of the previous tile (after its last Q K^T there).
      const int q_tile = q_round;
      auto load_q_rows = [&](int c) {
        mbarrier_wait(sm.q_empty(c), (q_tile & 1) ^ 1);
        mbarrier_arrive_expect_tx(sm.q_full(c), 64 * Tr::kSwizzleBytes * Tr::kChunks);
#pragma unroll
        for (int ch = 0; ch < Tr::kChunks; ++ch) {
          cp_async_bulk_tensor_4d_global_to_shared(
              sm.q_stage(0) + ch * Tr::kQChunkBytes + c * 64 * Tr::kSwizzleBytes, &args.tma_q,
              ch * Tr::kChunkCols, row0 + c * 64, tile.head, tile.batch, sm.q_full(c));
        }
      };
      if (Tr::kQPerConsumer && n_blocks > 0) {
        // The first consumer's rows now; the others' after the tile's first K and V (below), and
        // with the stagger after its first kStagger + 1 key blocks: a consumer that runs behind
        // releases its rows of the previous tile about kStagger turns after the first, and the
        // producer, waiting for that release, must not hold back the first consumer's key blocks.
        // (No cycle for kStagger <= 2, which Traits enforces: the release needs only loads issued
        // before and the first consumer's turns. The protocol's model, tests/sm90_protocol_model.py,
        // finds hangs from a lag of 3 turns on, with or without these slots.)
        // With O staged in the Q rows (kOInQ) the first consumer frees its rows only after its
        // epilogue's store: its rows load after the tile's first K and V, which then need not
        // wait for that release.
        if constexpr (!Tr::kOInQ) load_q_rows(0);
        ++q_round;
      } else if (n_blocks > 0) {
        // Q: the consumers release its slot after their last Q K^T of the tile that used it
        // before (the previous tile with one slot, the one before that with two).
        const int qs = q_round % Tr::kQStages;
        mbarrier_wait(sm.q_empty(qs), ((q_round / Tr::kQStages) & 1) ^ 1);
        mbarrier_arrive_expect_tx(sm.q_full(qs), Tr::kQBytes);
#pragma unroll
        for (int c = 0; c < Tr::kChunks; ++c) {
          cp_async_bulk_tensor_4d_global_to_shared(sm.q_stage(qs) + c * Tr::kQChunkBytes,
                                                   &args.tma_q, c * Tr::kChunkCols, row0,
                                                   tile.head, tile.batch, sm.q_full(qs));
        }
        ++q_round;
      }
      if constexpr (Tr::kPrefetchNext && !Tr::kDynamicSchedule) prefetch_tile(tile_index(round + 1));
      // SK_SM90_PREFETCH_NEXT=2 with the dynamic schedule: the ticket for the tile after this one
      // is drawn now, a whole tile ahead, so that its prefetch has that lead too (still one ticket
      // per tile computed).
      // (From here on `index` is the next tile: this one's work is in `work`.)
      if constexpr (Tr::kPrefetchNext && Tr::kDynamicSchedule && SK_SM90_PREFETCH_NEXT == 2) {
        const int ticket = atomicAdd(p.tile_counter, 1);
        if (ticket == args.num_tiles - 1) atomicExch(p.tile_counter, 0);
        index = ticket + gridDim.x;
        prefetch_tile(index);
      }
      for (int j = 0; j < n_blocks; ++j, ++it) {
        const int n = n_begin + n_blocks - 1 - j;
        const int s = it % kStages;
        const uint32_t phase = (it / kStages) & 1;
        // K, then V, of key block n into ring slot s, each once the consumers have freed it.
        auto load = [&](const CUtensorMap* map, uint32_t dst, uint32_t full, uint32_t empty) {
          mbarrier_wait(empty, phase ^ 1);
          mbarrier_arrive_expect_tx(full, Tr::kKVBytes);
#pragma unroll
          for (int c = 0; c < Tr::kChunks; ++c) {
            cp_async_bulk_tensor_4d_global_to_shared(dst + c * Tr::kKVChunkBytes, map,
                                                     c * Tr::kChunkCols, n * kBlockN, head_k,
                                                     tile.batch, full);
          }
        };
        load(&args.tma_k, sm.k_stage(s), sm.k_full(s), sm.k_empty(s));
        load(&args.tma_v, sm.v_stage(s), sm.v_full(s), sm.v_empty(s));
        if constexpr (Tr::kOInQ) {
          if (j == 0) load_q_rows(0);
        }
        if constexpr (Tr::kQPerConsumer) {
          if (j == min(Tr::kStagger, n_blocks - 1)) {
#pragma unroll
            for (int c = 1; c < Tr::kConsumerWarpgroups; ++c) load_q_rows(c);
          }
        }
      }
      // The last loads of this tile are issued: the consumers are about kStages key blocks from
      // its end, which hides the atomic's latency. The first tiles (0 .. gridDim.x - 1) went
      // one to each CTA, so the counter's n-th ticket is tile gridDim.x + n. Each tile is followed
      // by one ticket, so tickets 0 .. num_tiles - 1 are drawn in all: the last one drawn sets the
      // counter back to 0 for the next launch on the stream, which starts only after this one has
      // ended (flash_api.cpp: stream_tile_counter; a programmatic dependent launch would break
      // that and needs the memset).
      if constexpr (Tr::kDynamicSchedule && !(Tr::kPrefetchNext && SK_SM90_PREFETCH_NEXT == 2)) {
        const int ticket = atomicAdd(p.tile_counter, 1);
        if (ticket == args.num_tiles - 1) atomicExch(p.tile_counter, 0);
        index = ticket + gridDim.x;
        if constexpr (Tr::kPrefetchNext) prefetch_tile(index);
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
  const bool signals = (tid % 128) == 0;     // one thread per warpgroup releases ring slots
  // This warpgroup's 64 rows of each Q chunk, in the current tile's Q slot.
  const uint32_t q_base0 = sm.q + consumer * 64 * Tr::kSwizzleBytes;
  uint32_t q_base = q_base0;
  constexpr int kEpilogueBarrier0 = 4;  // named barriers 4.. (1..3 are the pingpong turns)

  float acc_o[kDTiles][4];
  float acc_s[kNTiles][4];
  uint32_t p_frag[kPVSteps][4];
  float correction[2];
  fwd::OnlineSoftmax softmax;

  // S = Q K^T for the key block in ring slot `stage`: both operands K-major in shared memory.
  // Into `acc` (float[kN / 8][4]): the first kN keys of the block.
  auto issue_qk_into = [&](int stage, auto& acc) {
    constexpr int kN = sizeof(acc) / sizeof(acc[0]) * 8;
    constexpr int kStepsPerChunk = Tr::kChunkCols / 16;
    // Q's descriptor of each k-step is the same for every key block, so the compiler keeps all
    // of them live across the loop: 2 registers per k-step (32 at D=256). With kQDescPerBlock
    // they are rebuilt per key block from one base (the empty asm hides that it is invariant)
    // by advancing its address field (smem_desc_advance).
    uint64_t desc_q0 = make_smem_desc<Tr::kSwizzleBytes>(q_base, 16, Tr::kRowGroupBytes);
    if constexpr (Tr::kQDescPerBlock) asm volatile("" : "+l"(desc_q0));
    // With Tr::kUniform the K and V descriptors of a block are its slot's first one advanced by
    // constants (one uniform add each), instead of each built from its address.
    const uint64_t desc_k0 =
        make_smem_desc<Tr::kSwizzleBytes>(sm.k_stage(stage), 16, Tr::kRowGroupBytes);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kQKSteps; ++kk) {
      const int c = kk / kStepsPerChunk;                      // column chunk
      const uint32_t col_bytes = (kk % kStepsPerChunk) * 32;  // 16 columns of 2 bytes
      const uint64_t desc_q =
          Tr::kQDescPerBlock ? smem_desc_advance(desc_q0, c * Tr::kQChunkBytes + col_bytes)
                             : make_smem_desc<Tr::kSwizzleBytes>(
                                   q_base + c * Tr::kQChunkBytes + col_bytes, 16,
                                   Tr::kRowGroupBytes);
      const uint64_t desc_k =
          Tr::kUniform
              ? smem_desc_advance(desc_k0, c * Tr::kKVChunkBytes + col_bytes)
              : make_smem_desc<Tr::kSwizzleBytes>(
                    sm.k_stage(stage) + c * Tr::kKVChunkBytes + col_bytes, 16, Tr::kRowGroupBytes);
      wgmma_ss<kDtype, kN, 0>(acc, desc_q, desc_k, kk > 0 ? 1 : 0);
    }
    wgmma_commit_group();
  };
  auto issue_qk = [&](int stage) { issue_qk_into(stage, acc_s); };
  // O += P V for the value block in ring slot `stage`: P from registers, V N-major.
  auto issue_pv = [&](int stage) {
    wgmma_fence();
    const uint64_t desc_v0 = make_smem_desc<Tr::kSwizzleBytes>(
        sm.v_stage(stage), Tr::kKVChunkBytes, Tr::kRowGroupBytes);
#pragma unroll
    for (int kk = 0; kk < kPVSteps; ++kk) {
      const uint64_t desc_v =
          Tr::kUniform
              ? smem_desc_advance(desc_v0, kk * 16 * Tr::kSwizzleBytes)
              : make_smem_desc<Tr::kSwizzleBytes>(sm.v_stage(stage) + kk * 16 * Tr::kSwizzleBytes,
                                                  Tr::kKVChunkBytes, Tr::kRowGroupBytes);
      wgmma_rs<kDtype, kHeadDim, 1>(acc_o, p_frag[kk], desc_v, 1);
    }
    wgmma_commit_group();
  };

  // Pingpong: consumers take turns, round robin, to issue their GEMMs, so that the tensor cores
  // serve one while the others run their softmax. Named barrier 1 + c is consumer c's turn; it
  // passes when the consumer before it has issued. Consumer 0 goes first; every wait is matched
  // by one arrival, so the barriers are balanced when the CTA exits.
  constexpr int kConsumers = Tr::kConsumerWarpgroups;
  const int my_turn = 1 + consumer;
  const int next_turn = 1 + (consumer + 1) % kConsumers;
  auto sched_wait = [&] {
    if constexpr (Tr::kPingpong) bar_sync(my_turn, 256);
  };
  auto sched_signal = [&] {
    if constexpr (Tr::kPingpong) bar_arrive(next_turn, 256);
  };
  if (consumer == kConsumers - 1) sched_signal();
  // A turn passed without work: wait for it and hand it on.
  auto pass_turn = [&] {
    sched_wait();
    sched_signal();
  };
  // Tr::kStagger: the second consumer passes its first kStagger turns without work, so that it
  // runs that many turns behind the first; the first passes as many at the end (below), so that
  // every wait still meets one arrival.
  auto pass_turns = [&] {
#pragma unroll 1
    for (int i = 0; i < Tr::kStagger; ++i) pass_turn();
  };
  if constexpr (Tr::kStagger > 0) {
    if (consumer == 1) pass_turns();
  }
#if SK_SM90_WAIT_PROFILE
  uint32_t wait_cycles[kWaitKinds] = {};
  uint32_t profiled_tiles = 0;
  const long long consumer_t0 = clock64();
#endif

  int it = 0;       // key blocks consumed so far, over all tiles: ring slot and phase
  int q_round = 0;  // Q tiles consumed so far
  for (int round = 0;; ++round) {
    int index;
    if constexpr (Tr::kTileRing) {
      const int slot = round & 1;
      SK_WAIT(kWaitTile, mbarrier_wait(sm.tile_full(slot), (round >> 1) & 1));
      index = static_cast<int>(ld_shared_b32(sm.tile_slot(slot)));
      if constexpr (Tr::kUniform) index = __shfl_sync(0xffffffffu, index, 0);
      mbarrier_arrive(sm.tile_empty(slot));  // every consumer thread, after its read
    } else {
      index = tile_index(round);
    }
    if (index >= args.num_tiles) break;
    const TileWork work = work_at<Tr, kCausal>(args, index);
    if constexpr (Tr::kTailSplit) {
      if (work.pieces == 0) {  // an empty piece of the tail split: no loads, no output
        if constexpr (Tr::kStagger > 0) pass_turn();  // and, as a key-less tile, one turn
        continue;
      }
    }
    const Tile tile = work.tile;
    const int row0 = work.row0, n_begin = work.n_begin, n_blocks = work.n_blocks;
    const int wg_row0 = row0 + consumer * 64;
    const int row_g = wg_row0 + warp * 16 + g;  // query row of this thread's s[i][0]
    // This tile's Q slot and the phase of its barriers (tiles with no key block load no Q).
    const int qs = Tr::kQPerConsumer ? consumer : q_round % Tr::kQStages;
    const uint32_t q_phase = Tr::kQPerConsumer ? q_round & 1 : (q_round / Tr::kQStages) & 1;
    if constexpr (Tr::kQStages > 1) q_base = q_base0 + qs * Tr::kQBytes;

#pragma unroll
    for (int i = 0; i < kDTiles; ++i) {
#pragma unroll
      for (int j = 0; j < 4; ++j) acc_o[i][j] = 0.f;
    }
    softmax.init();
    // 1 / row sum and the LSE of each row, as finalize() returns them; a tile with no key block
    // keeps these (O = 0, LSE = -inf). With kEarlyFinalize they are computed under the last P V.
    float inv_sum[2] = {0.f, 0.f}, row_lse[2] = {-INFINITY, -INFINITY};

    // Mask (only where the block needs it) and the online softmax of key block n.
    auto softmax_block = [&](int n) {
      const int col0 = n * kBlockN;
      if (fwd::block_needs_mask<kCausal>(col0, kBlockN, wg_row0, p.seqlen_k, p.causal_offset)) {
        fwd::apply_mask<kCausal>(acc_s, row_g, col0 + 2 * t, p.seqlen_k, p.causal_offset);
      }
      softmax.update(acc_s, p.scale_log2, correction);
    };

    // A consumer whose 64 rows all lie past seqlen_q (the last query block of a three-consumer
    // tile at S = 512, say: 192-row tiles over 512 rows) issues no GEMM and no softmax, in the
    // shapes where Tr::kSkipIdleRows is set. It keeps
    // every barrier wait and arrival of the loop below, in the same order, so the ring's phases
    // and the pingpong turns run as before. (A branch around each wgmma instead makes ptxas
    // serialize all of them.)
    if (Tr::kSkipIdleRows && n_blocks > 0 && wg_row0 >= p.seqlen_q) {
      SK_WAIT(kWaitQ, mbarrier_wait(sm.q_full(qs), q_phase));
      ++q_round;
      for (int j = 0; j < n_blocks; ++j) {
        const int s = (it + j) % kStages;
        const uint32_t phase = ((it + j) / kStages) & 1;
        SK_WAIT(kWaitK, mbarrier_wait(sm.k_full(s), phase));
        SK_WAIT(kWaitTurn, sched_wait());
        sched_signal();
        if (signals) {
          mbarrier_arrive(sm.k_empty(s));
          if (!Tr::kOInQ && j == n_blocks - 1) mbarrier_arrive(sm.q_empty(qs));
        }
        SK_WAIT(kWaitV, mbarrier_wait(sm.v_full(s), phase));
        if (signals) mbarrier_arrive(sm.v_empty(s));
      }
      SK_WAIT(kWaitTurn, sched_wait());  // the turn of the last P V
      sched_signal();
      it += n_blocks;
    } else if (n_blocks > 0) {
#if SK_SM90_WAIT_PROFILE
      ++profiled_tiles;
#endif
      SK_WAIT(kWaitQ, mbarrier_wait(sm.q_full(qs), q_phase));
      ++q_round;
      // The first (highest) key block: S only.
      {
        const int s = it % kStages;
        SK_WAIT(kWaitK, mbarrier_wait(sm.k_full(s), (it / kStages) & 1));
        SK_WAIT(kWaitTurn, sched_wait());
        // Causal (kCausalHalfFirst): where the second half of this block's keys lies past this
        // consumer's last row (the first consumer on the diagonal block when kBlockM = kBlockN),
        // Q K^T covers the first half only; the mask below sets the other half to -inf. Each
        // branch issues and retires its own wgmma (one branch issuing and another waiting makes
        // ptxas serialize every wgmma of the kernel).
        if constexpr (Tr::kCausalHalfFirst) {
          const int col0 = (n_begin + n_blocks - 1) * kBlockN;
          if (col0 + kBlockN / 2 > wg_row0 + 63 + p.causal_offset) {
            // Its own accumulators: a half-width wgmma into part of acc_s makes ptxas serialize
            // every wgmma of the kernel (C7511).
            float acc_h[kNTiles / 2][4];
            issue_qk_into(s, acc_h);
            sched_signal();
            wgmma_wait_group<0>();
            fence_registers(acc_h);
#pragma unroll
            for (int i = 0; i < kNTiles; ++i) {
#pragma unroll
              for (int e = 0; e < 4; ++e) acc_s[i][e] = i < kNTiles / 2 ? acc_h[i][e] : -INFINITY;
            }
          } else {
            issue_qk(s);
            sched_signal();
            wgmma_wait_group<0>();
          }
        } else {
          issue_qk(s);
          sched_signal();
          SK_WAIT(kWaitS, wgmma_wait_group<0>());
        }
        fence_registers(acc_s);
        if (signals) {
          mbarrier_arrive(sm.k_empty(s));
          if (!Tr::kOInQ && n_blocks == 1) mbarrier_arrive(sm.q_empty(qs));  // Q is no longer read
        }
        if constexpr (Tr::kCausalHalfSoftmax) {
          // The block's second half of keys lies past this consumer's last row: every score
          // there is masked, so only the first half is masked and exponentiated, and the
          // second half's P is 0. The branch holds no wgmma (one that did would make ptxas
          // serialize every wgmma of the kernel).
          const int n = n_begin + n_blocks - 1;
          const int col0 = n * kBlockN;
          if (col0 + kBlockN / 2 > wg_row0 + 63 + p.causal_offset) {
            auto& half = *reinterpret_cast<float(*)[kNTiles / 2][4]>(&acc_s[0][0]);
            fwd::apply_mask<kCausal>(half, row_g, col0 + 2 * t, p.seqlen_k, p.causal_offset);
            softmax.update(half, p.scale_log2, correction);
#pragma unroll
            for (int i = kNTiles / 2; i < kNTiles; ++i) {
#pragma unroll
              for (int e = 0; e < 4; ++e) acc_s[i][e] = 0.f;
            }
          } else {
            softmax_block(n);
          }
        } else {
          softmax_block(n_begin + n_blocks - 1);
        }
        fwd::probs_to_a_frags<kDtype>(acc_s, p_frag);
      }

      // Each later block: S_j = Q K_j^T and O += P_{j-1} V_{j-1} are both in flight while the
      // softmax of S_j runs; O is rescaled for block j-1 before its P V is issued.
      for (int j = 1; j < n_blocks; ++j) {
        const int s = (it + j) % kStages;
        const uint32_t phase = ((it + j) / kStages) & 1;
        const int s_prev = (it + j - 1) % kStages;
        const uint32_t phase_prev = ((it + j - 1) / kStages) & 1;
        SK_WAIT(kWaitK, mbarrier_wait(sm.k_full(s), phase));
        SK_WAIT(kWaitTurn, sched_wait());
        issue_qk(s);
        fwd::OnlineSoftmax::rescale(acc_o, correction);
        SK_WAIT(kWaitV, mbarrier_wait(sm.v_full(s_prev), phase_prev));
        issue_pv(s_prev);
        sched_signal();
        SK_WAIT(kWaitS, wgmma_wait_group<1>());  // S_j is done; P V may still run
        fence_registers(acc_s);
        if (signals) {
          mbarrier_arrive(sm.k_empty(s));
          if (!Tr::kOInQ && j == n_blocks - 1) mbarrier_arrive(sm.q_empty(qs));
        }
        softmax_block(n_begin + n_blocks - 1 - j);
        // With kSoftmaxFence, a branch that is never taken (a row sum is never negative, NaN
        // included) between the softmax and the wait for P V. Without it ptxas schedules that
        // wait ahead of the softmax in the same basic block (to pack the new P into the registers
        // the P V reads, interleaved with the exponentials), and the softmax then overlaps only
        // the other consumers' GEMMs, never the warpgroup's own P V; the branch ends the block,
        // so the wait stays after the softmax's MUFU.EX2 (docs/kernel-notes.md, v13).
        if constexpr (Tr::kSoftmaxFence) {
          if (softmax.row_sum[0] < 0.f) __trap();
        }
        SK_WAIT(kWaitPV, wgmma_wait_group<0>());
        fence_registers(acc_o);
        fence_registers(p_frag);
        if (signals) mbarrier_arrive(sm.v_empty(s_prev));
        fwd::probs_to_a_frags<kDtype>(acc_s, p_frag);
      }

      // The last P V.
      const int last = it + n_blocks - 1;
      if constexpr (Tr::kFinalizeSlot == 2) {
        // Before the waits for V and for the turn, where its latency overlaps them and it cannot
        // interleave with the P V's HGMMA issue (the V wait's loop ends the block).
        SK_WAIT(kEpiFinal, softmax.finalize(p.scale_log2, inv_sum, row_lse));
      }
      fwd::OnlineSoftmax::rescale(acc_o, correction);
      SK_WAIT(kWaitV, mbarrier_wait(sm.v_full(last % kStages), (last / kStages) & 1));
      SK_WAIT(kWaitTurn, sched_wait());
      issue_pv(last % kStages);
      sched_signal();
      if constexpr (Tr::kFinalizeSlot == 1) {
        // ptxas interleaves these with the P V's HGMMA issue, ahead of the wait (checked in the
        // SASS of every kernel; a never-taken branch here to pin the wait below, as kSoftmaxFence
        // does, made the non-causal kernels spill).
        SK_WAIT(kEpiFinal, softmax.finalize(p.scale_log2, inv_sum, row_lse));
      }
      SK_WAIT(kWaitPV, wgmma_wait_group<0>());
      fence_registers(acc_o);
      if (signals) mbarrier_arrive(sm.v_empty(last % kStages));
      it += n_blocks;
    } else if (Tr::kStagger > 0) {
      // A tile with no key block takes one turn in each consumer (both see every tile), so that
      // the first consumer cannot run through two such tiles, two rounds of the two-slot tile
      // ring, while the second still waits for its turn in the tile before them.
      pass_turn();
    }

    // Epilogue: normalise and store O and the LSE (a row that saw no key gets O = 0 and
    // LSE = -inf). Rows past seqlen_q are not stored. The producer is meanwhile loading the next
    // tile's Q and first key blocks.
#if SK_SM90_WAIT_PROFILE
    const long long epilogue_t0 = clock64();
    const uint32_t epilogue_parts0 = wait_cycles[kWaitOStore] + wait_cycles[kWaitOSync] +
                                     wait_cycles[kEpiFinal] + wait_cycles[kEpiStore];
#endif
    if constexpr (Tr::kTailSplit) {
      // The piece is found again from the index rather than kept live across the key-block loop
      // (the three-consumer D=64 shape has no registers to spare there); the shuffle hides that
      // it is the same index and shows that it is warp-uniform.
      index = __shfl_sync(0xffffffffu, index, 0);
      const TileWork tw = args.tail_tiles > 0 && index >= args.tail_first
                                 ? tail_work_at<Tr>(args, index)
                                 : TileWork{tile, row0, 0, 0, 0, 1, 0, 0};
      if (tw.pieces > 1) {
        // A piece of a split tail tile: its accumulators, row max and row sum go to its slot in
        // float32, each thread's as kDTiles + 1 float4s strided by 128 threads (coalesced). The
        // consumer's last piece to count itself merges every piece, in piece order and read
        // back from memory (the result does not depend on which piece came last), and stores
        // the tile's rows of O and LSE through the normal epilogue below; the others are done.
        constexpr int kVec = kDTiles + 1;
        const int lane128 = tid % 128;
        auto slot_of = [&](int piece) {
          return reinterpret_cast<float4*>(args.tail_partial) +
                 (static_cast<int64_t>(tw.tail_tile * args.tail_pieces + piece) * kConsumers +
                  consumer) * (kVec * 128) + lane128;
        };
        float4* mine = slot_of(tw.piece);
#pragma unroll
        for (int i = 0; i < kDTiles; ++i) {
          __stcg(mine + i * 128, make_float4(acc_o[i][0], acc_o[i][1], acc_o[i][2], acc_o[i][3]));
        }
        __stcg(mine + kDTiles * 128, make_float4(softmax.row_max[0], softmax.row_max[1],
                                                 softmax.row_sum[0], softmax.row_sum[1]));
        __threadfence();  // this thread's partial is visible to the GPU before the count
        bar_sync(kEpilogueBarrier0 + consumer, 128);
        int last = 0;
        if (signals) {
          const int counted =
              atomicAdd(args.tail_count + tw.tail_tile * kConsumers + consumer, 1);
          last = counted == tw.pieces - 1;
          __threadfence();  // the other pieces' partials are read after their counts
        }
        // Every thread gets the same answer; the shuffle from lane 0 lets ptxas know it, so that
        // the branch does not make the loop's ring slots and descriptors leave the uniform
        // registers (Traits::kUniform).
        const int merges = __shfl_sync(0xffffffffu, bar_red_or(kEpilogueBarrier0 + consumer, 128, last), 0);
        if (!merges) {
          // kOInQ: this consumer's Q rows are freed here, the merging piece's after its store.
          if constexpr (Tr::kOInQ) {
            if (signals) mbarrier_arrive(sm.q_empty(qs));
          }
          continue;
        }
        float row_max[2] = {-INFINITY, -INFINITY};
        for (int j = 0; j < tw.pieces; ++j) {
          const float4 stats = __ldcg(slot_of(j) + kDTiles * 128);
          row_max[0] = fmaxf(row_max[0], stats.x);
          row_max[1] = fmaxf(row_max[1], stats.y);
        }
        float m_scaled[2], row_sum[2] = {0.f, 0.f};
#pragma unroll
        for (int r = 0; r < 2; ++r) m_scaled[r] = row_max[r] == -INFINITY ? 0.f : row_max[r] * p.scale_log2;
#pragma unroll
        for (int i = 0; i < kDTiles; ++i) {
#pragma unroll
          for (int e = 0; e < 4; ++e) acc_o[i][e] = 0.f;
        }
        for (int j = 0; j < tw.pieces; ++j) {
          const float4* slot = slot_of(j);
          const float4 stats = __ldcg(slot + kDTiles * 128);
          const float w0 = stats.x == -INFINITY ? 0.f : fwd::fast_exp2(stats.x * p.scale_log2 - m_scaled[0]);
          const float w1 = stats.y == -INFINITY ? 0.f : fwd::fast_exp2(stats.y * p.scale_log2 - m_scaled[1]);
          row_sum[0] = fmaf(w0, stats.z, row_sum[0]);
          row_sum[1] = fmaf(w1, stats.w, row_sum[1]);
#pragma unroll
          for (int i = 0; i < kDTiles; ++i) {
            const float4 v = __ldcg(slot + i * 128);
            acc_o[i][0] = fmaf(w0, v.x, acc_o[i][0]);
            acc_o[i][1] = fmaf(w0, v.y, acc_o[i][1]);
            acc_o[i][2] = fmaf(w1, v.z, acc_o[i][2]);
            acc_o[i][3] = fmaf(w1, v.w, acc_o[i][3]);
          }
        }
        softmax.row_max[0] = row_max[0];
        softmax.row_max[1] = row_max[1];
        softmax.row_sum[0] = row_sum[0];
        softmax.row_sum[1] = row_sum[1];
        if constexpr (Tr::kEarlyFinalize) {
          SK_WAIT(kEpiFinal, softmax.finalize(p.scale_log2, inv_sum, row_lse));
        }
      }
    }
    if constexpr (!Tr::kEarlyFinalize) {
      SK_WAIT(kEpiFinal, softmax.finalize(p.scale_log2, inv_sum, row_lse));
    }
    float* lse = p.lse + tile.batch * p.lse_batch_stride + tile.head * p.lse_head_stride;
    if constexpr (Tr::kSplitKV) {
      // A split-KV range: O (normalised over this range's keys) and its LSE in float32, for
      // run_flash_combine to merge.
      const int64_t plane =
          ((static_cast<int64_t>(work.split) * p.batch + tile.batch) * p.heads + tile.head) *
          p.seqlen_q;
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int row = row_g + 8 * r;
        if (row < p.seqlen_q) {
          float* orow = p.o_accum + (plane + row) * kHeadDim + 2 * t;
#pragma unroll
          for (int i = 0; i < kDTiles; ++i) {
            *reinterpret_cast<float2*>(orow + i * 8) =
                make_float2(acc_o[i][2 * r] * inv_sum[r], acc_o[i][2 * r + 1] * inv_sum[r]);
          }
          if (t == 0) p.lse_accum[plane + row] = row_lse[r];
        }
      }
    } else if (Tr::kTmaStoreO && args.tma_store && (!Tr::kOInQ || n_blocks > 0)) {
      // (kOInQ: a tile with no key block loaded no Q rows of its own, and the producer may be
      // filling them with the next tile's: its zeros leave in plain stores below.)
      SK_SPAN_BEGIN(lse_t0);
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int row = row_g + 8 * r;
        if (t == 0 && row < p.seqlen_q) lse[static_cast<int64_t>(row) * p.lse_row_stride] = row_lse[r];
      }
      SK_SPAN_END(kEpiStore, lse_t0);
      // kOInQ: this consumer's own Q rows (its last Q K^T has read them; they are freed below,
      // once the store has read O from them).
      const uint32_t o_base =
          Tr::kOInQ ? q_base0 : o_smem_base + consumer * Tr::kOBytesPerConsumer;
      // Through shared memory (the 128-byte swizzle TMA expects: 16-byte chunk c of row r sits
      // at c ^ (r % 8), so the quad's four 4-byte writes of 8 rows hit 32 different banks), then
      // one TMA store per 64-column chunk (per warp's 16 rows with kWarpStoreO); the tensor map
      // clips rows past seqlen_q.
      SK_WAIT(kWaitOStore, {
        if constexpr (Tr::kWarpStoreO) {
          if (lane == 0) cp_async_bulk_wait_group_read<0>();  // this warp's previous store
          __syncwarp();
        } else {
          if (signals) cp_async_bulk_wait_group_read<0>();  // the previous tile's store has read it
          bar_sync(kEpilogueBarrier0 + consumer, 128);
        }
      });
      SK_SPAN_BEGIN(stage_t0);
      if constexpr (Tr::kStmatrixO) {
        // Two n8 tiles of the warp's 16 rows per stmatrix.x4 (kDTiles / 2 of them instead of
        // 2 * kDTiles 4-byte stores): matrices 0 and 1 are rows 0-7 and 8-15 of tile i, 2 and 3
        // the same of tile i + 1; lane l gives row l % 8 of matrix l / 8.
        const int row = o_stage_stmatrix_row(warp, lane);  // within this consumer's 64 rows
#pragma unroll
        for (int i = 0; i < kDTiles; i += 2) {
          const uint32_t addr =
              o_base + o_stage_group(row, o_stage_stmatrix_n8(i, lane), Tr::kOStageChunkBytes);
          stmatrix_x4(addr,
                      fwd::pack2<kDtype>(acc_o[i][0] * inv_sum[0], acc_o[i][1] * inv_sum[0]),
                      fwd::pack2<kDtype>(acc_o[i][2] * inv_sum[1], acc_o[i][3] * inv_sum[1]),
                      fwd::pack2<kDtype>(acc_o[i + 1][0] * inv_sum[0], acc_o[i + 1][1] * inv_sum[0]),
                      fwd::pack2<kDtype>(acc_o[i + 1][2] * inv_sum[1], acc_o[i + 1][3] * inv_sum[1]));
        }
      } else {
        // Three causal consumers (128 registers a thread at compile time): the staging addresses are
        // recomputed per tile from a base the empty asm makes opaque; hoisted out of the tile loop,
        // they left D64 causal's kernel one register short (4 bytes of spill).
        uint32_t stage_base = o_base;
        if constexpr (Tr::kConsumerWarpgroups == 3 && kCausal) asm volatile("" : "+r"(stage_base));
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int row = warp * 16 + g + 8 * r;  // within this consumer's 64 rows
#pragma unroll
          for (int i = 0; i < kDTiles; ++i) {
            const uint32_t addr = stage_base + o_stage_group(row, i, Tr::kOStageChunkBytes) + 4 * t;
            const uint32_t packed =
                fwd::pack2<kDtype>(acc_o[i][2 * r] * inv_sum[r], acc_o[i][2 * r + 1] * inv_sum[r]);
            st_shared_b32(addr, packed);
          }
        }
      }
      SK_SPAN_END(kEpiStore, stage_t0);
      SK_WAIT(kWaitOSync, {
        fence_proxy_async_shared_cta();
        if constexpr (Tr::kWarpStoreO) {
          __syncwarp();
        } else {
          bar_sync(kEpilogueBarrier0 + consumer, 128);
        }
      });
      if constexpr (Tr::kWarpStoreO) {
        // The warp's 16 rows (a 16-row box of the tensor map; rows past seqlen_q are clipped).
        if (lane == 0) {
#pragma unroll
          for (int c = 0; c < Tr::kChunks; ++c) {
            const uint32_t rows = o_base + c * Tr::kOStageChunkBytes + warp * 16 * Tr::kSwizzleBytes;
            cp_async_bulk_tensor_4d_shared_to_global(&args.tma_o, c * Tr::kChunkCols,
                                                     wg_row0 + warp * 16, tile.head, tile.batch,
                                                     rows);
          }
          cp_async_bulk_commit_group();
        }
      } else if (signals) {
#pragma unroll
        for (int c = 0; c < Tr::kChunks; ++c) {
          cp_async_bulk_tensor_4d_shared_to_global(&args.tma_o, c * Tr::kChunkCols, wg_row0,
                                                   tile.head, tile.batch,
                                                   o_base + c * Tr::kOStageChunkBytes);
        }
        cp_async_bulk_commit_group();
        if constexpr (Tr::kOInQ) {
          // The rows are Q's: freed for the next tile once the store has read them.
          cp_async_bulk_wait_group_read<0>();
          mbarrier_arrive(sm.q_empty(qs));
        }
      }
    } else if (Tr::kWideStoreO && args.o_wide) {
      // Plain stores, 16 bytes wide: per row and group of four n8 tiles, the quad's transpose
      // (o_stage.cuh) hands lane t the eight columns of tile i0 + t. Every lane shuffles, rows
      // past seqlen_q included (the quad's four lanes share a row, so they store or skip
      // together).
      static_assert(sizeof(T) == 2, "the quad transpose packs two 2-byte columns per word");
      SK_SPAN_BEGIN(wide_t0);
      T* out = static_cast<T*>(p.out) + tile.batch * p.o_batch_stride + tile.head * p.o_head_stride;
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int row = row_g + 8 * r;
        T* orow = out + static_cast<int64_t>(row) * p.o_row_stride;
#pragma unroll
        for (int i0 = 0; i0 < kDTiles; i0 += 4) {
          uint32_t w[4];
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            w[k] = fwd::pack2<kDtype>(acc_o[i0 + k][2 * r] * inv_sum[r],
                                      acc_o[i0 + k][2 * r + 1] * inv_sum[r]);
          }
#pragma unroll
          for (int m = 1; m <= 2; m *= 2) {
#pragma unroll
            for (int s = 0; s < 2; ++s) {
              quad_receive(w, t, m, s, __shfl_xor_sync(0xffffffffu, quad_send(w, t, m, s), m));
            }
          }
          if (row < p.seqlen_q) {
            *reinterpret_cast<uint4*>(orow + 8 * (i0 + t)) = make_uint4(w[0], w[1], w[2], w[3]);
          }
        }
        if (t == 0 && row < p.seqlen_q) lse[static_cast<int64_t>(row) * p.lse_row_stride] = row_lse[r];
      }
      SK_SPAN_END(kEpiStore, wide_t0);
    } else {
      SK_SPAN_BEGIN(plain_t0);
      T* out = static_cast<T*>(p.out) + tile.batch * p.o_batch_stride + tile.head * p.o_head_stride;
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int row = row_g + 8 * r;
        if (row < p.seqlen_q) {
          T* orow = out + static_cast<int64_t>(row) * p.o_row_stride + 2 * t;
#pragma unroll
          for (int i = 0; i < kDTiles; ++i) {
            *reinterpret_cast<uint32_t*>(orow + i * 8) = fwd::pack2<kDtype>(
                acc_o[i][2 * r] * inv_sum[r], acc_o[i][2 * r + 1] * inv_sum[r]);
          }
          if (t == 0) lse[static_cast<int64_t>(row) * p.lse_row_stride] = row_lse[r];
        }
      }
      SK_SPAN_END(kEpiStore, plain_t0);
    }
    if constexpr (Tr::kOInQ) {
      // O left in plain stores (a caller's out that TMA cannot describe): the rows are freed here.
      if (!args.tma_store && n_blocks > 0 && signals) mbarrier_arrive(sm.q_empty(qs));
    }
#if SK_SM90_WAIT_PROFILE
    wait_cycles[kEpilogue] += static_cast<uint32_t>(clock64() - epilogue_t0) -
                              (wait_cycles[kWaitOStore] + wait_cycles[kWaitOSync] +
                               wait_cycles[kEpiFinal] + wait_cycles[kEpiStore] - epilogue_parts0);
#endif
  }
  // Shared memory must outlive the last TMA store's reads of it.
  if (Tr::kTmaStoreO && args.tma_store && (Tr::kWarpStoreO ? lane == 0 : signals)) {
    cp_async_bulk_wait_group_read<0>();
  }
  if constexpr (Tr::kStagger > 0) {
    if (consumer == 0) pass_turns();
  }
  if (consumer == 0) sched_wait();  // the last consumer's final arrival
#if SK_SM90_WAIT_PROFILE
  // A call (printf) here would make ptxas serialize every wgmma (C7510): the counts go to a
  // global table that print_wait_profile prints after the kernel.
  const int profile_row = blockIdx.x * kConsumers + consumer;
  if (signals && profile_row < kWaitProfileRows) {
    uint32_t* row = g_wait_profile[profile_row];
    row[0] = profiled_tiles;
    row[1] = static_cast<uint32_t>(clock64() - consumer_t0);
#pragma unroll
    for (int k = 0; k < kWaitKinds; ++k) row[2 + k] = wait_cycles[k];
  }
#endif
}

}  // namespace sm90
}  // namespace sessionkit

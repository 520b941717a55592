// The tail split of the sm90 family's non-causal kernels (Traits::kTailSplit): the arithmetic of
// the plan and of its pieces, on the host and on the device, with no CUDA types, so that a host
// check (tests/data/tail_split_check.cu) can walk every piece of a plan.
//
// With T tiles of nb key blocks each on `slots` persistent CTAs, a static schedule runs
// floor(T / slots) full rounds and then a last round of T mod slots tiles while the other CTAs
// idle. The tail split cuts the last round's tiles by key blocks instead: flattened over (tail
// tile, key block), the tail is tail_tiles * nb key blocks, and CTA c owns the range
// [c * quota, (c + 1) * quota) with quota = ceil(tail_tiles * nb / slots). As quota < nb, a range
// spans at most two tiles: the CTA runs its part of the first in the first tail round and its part
// of the second, if any, in the second (an empty piece otherwise). Tile t's pieces are the parts of
// the CTAs floor(t * nb / quota) .. floor(((t + 1) * nb - 1) / quota), numbered in that order.
// Method: Stream-K (Osama, Merrill, Cecka, Garland and Owens, "Stream-K: Work-centric Parallel
// Decomposition for Dense Matrix Multiplication on the GPU", PPoPP 2023), in its hybrid form
// where only the last round's tiles are shared between CTAs.
#pragma once

#include <cstdint>

#include "host_device.cuh"

namespace sessionkit {
namespace sm90 {

struct TailPlan {
  int tail_tiles;  // 0: no split
  int quota;       // key blocks per CTA
  int pieces;      // most pieces of one tile (scratch slots per tile)
};

// The plan for `tiles` tiles of `nb` key blocks on `slots` CTAs: a split only where the last
// round is partial and each CTA saves at least min_saved key blocks (the split costs a memset,
// each piece's partial result through L2 and the merge).
SK_HOST_DEVICE inline TailPlan tail_plan(int64_t tiles, int64_t slots, int64_t nb,
                                         int64_t min_saved) {
  TailPlan plan{0, 0, 0};
  if (tiles <= 0 || slots <= 0 || nb <= 0) return plan;
  const int64_t rem = tiles % slots;
  // The flattened tail must index in 32 bits with room to spare.
  if (rem == 0 || rem * nb > INT32_MAX / 2) return plan;
  const int64_t quota = (rem * nb + slots - 1) / slots;
  if (nb - quota < min_saved || nb - quota < 1) return plan;
  plan.tail_tiles = static_cast<int>(rem);
  plan.quota = static_cast<int>(quota);
  plan.pieces = static_cast<int>((nb + quota - 1) / quota + 1);
  return plan;
}

struct TailPiece {
  int tile;      // among the tail tiles, 0 .. tail_tiles - 1
  int n_begin;   // key blocks [n_begin, n_begin + n_blocks) of it
  int n_blocks;
  int pieces;    // the tile's pieces (0: this piece is empty)
  int piece;     // this piece's place among them, in key order
};

// The piece CTA `cta` runs in the first (second = false) or second tail round.
SK_HOST_DEVICE inline TailPiece tail_piece(int cta, bool second, int tail_tiles, int nb,
                                           int quota) {
  TailPiece w{0, 0, 0, 0, 0};
  const int begin = cta * quota;
  const int end = begin + quota < tail_tiles * nb ? begin + quota : tail_tiles * nb;
  const int boundary = (begin / nb + 1) * nb;  // the end of the tile that holds `begin`
  const int piece_begin = second ? boundary : begin;
  const int piece_end = second ? end : (end < boundary ? end : boundary);
  if (piece_begin >= piece_end) return w;
  const int tile = piece_begin / nb;
  const int first_cta = tile * nb / quota;
  const int last_cta = ((tile + 1) * nb - 1) / quota;
  w.tile = tile;
  w.n_begin = piece_begin - tile * nb;
  w.n_blocks = piece_end - piece_begin;
  w.pieces = last_cta - first_cta + 1;
  w.piece = cta - first_cta;
  return w;
}

}  // namespace sm90
}  // namespace sessionkit

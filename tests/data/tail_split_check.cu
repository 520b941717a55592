// Walks every piece of tail-split plans (csrc/sm90/tail_split.cuh) on the host and checks them:
// each (tail tile, key block) is run by exactly one piece; a CTA runs at most `quota` key blocks;
// a tile's pieces are numbered 0 .. pieces - 1 in key order, all agree on `pieces`, and pieces
// never exceeds the plan's scratch slots per tile; and the plan is off where it saves less than
// its minimum. Prints one line per plan checked ("plan tiles slots nb -> tail quota pieces"), then
// "checked N plans"; exits 1 on the first failure, saying which.
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "sm90/tail_split.cuh"

using sessionkit::sm90::tail_piece;
using sessionkit::sm90::tail_plan;
using sessionkit::sm90::TailPiece;
using sessionkit::sm90::TailPlan;

static int fail(const char* what, long tiles, long slots, long nb) {
  std::printf("FAIL %s (tiles %ld slots %ld nb %ld)\n", what, tiles, slots, nb);
  return 1;
}

static int check(long tiles, long slots, long nb, long min_saved, bool print) {
  const TailPlan plan = tail_plan(tiles, slots, nb, min_saved);
  const long rem = tiles % slots;
  if (plan.tail_tiles == 0) {
    // Off: only where there is no partial round or the split saves less than min_saved.
    if (rem != 0 && nb - (rem * nb + slots - 1) / slots >= (min_saved > 1 ? min_saved : 1)) {
      return fail("plan off where it saves enough", tiles, slots, nb);
    }
    return 0;
  }
  if (plan.tail_tiles != rem) return fail("tail is not the last partial round", tiles, slots, nb);
  if (plan.quota * slots < rem * nb) return fail("quota leaves work undone", tiles, slots, nb);
  if (plan.quota >= nb || nb - plan.quota < min_saved) return fail("split saves too little", tiles, slots, nb);
  std::vector<int> runs(static_cast<size_t>(rem * nb), 0);
  std::vector<int> pieces_of(static_cast<size_t>(rem), -1);
  std::vector<std::vector<int>> seen(static_cast<size_t>(rem));
  std::vector<int> next_key(static_cast<size_t>(rem), 0);
  for (int cta = 0; cta < slots; ++cta) {
    long work = 0;
    for (int second = 0; second < 2; ++second) {
      const TailPiece w = tail_piece(cta, second != 0, plan.tail_tiles, static_cast<int>(nb), plan.quota);
      if (w.pieces == 0) continue;
      if (w.tile < 0 || w.tile >= rem || w.n_blocks <= 0 || w.n_begin < 0 || w.n_begin + w.n_blocks > nb) {
        return fail("piece out of range", tiles, slots, nb);
      }
      if (w.pieces > plan.pieces) return fail("more pieces than scratch slots", tiles, slots, nb);
      if (pieces_of[w.tile] != -1 && pieces_of[w.tile] != w.pieces) {
        return fail("pieces of one tile disagree on their count", tiles, slots, nb);
      }
      pieces_of[w.tile] = w.pieces;
      // CTAs run in order, so a tile's pieces arrive in key order and with consecutive numbers.
      if (w.piece != static_cast<int>(seen[w.tile].size())) return fail("piece numbers out of order", tiles, slots, nb);
      if (w.n_begin != next_key[w.tile]) return fail("pieces not contiguous in key order", tiles, slots, nb);
      seen[w.tile].push_back(w.piece);
      next_key[w.tile] = w.n_begin + w.n_blocks;
      for (int n = w.n_begin; n < w.n_begin + w.n_blocks; ++n) ++runs[static_cast<size_t>(w.tile * nb + n)];
      work += w.n_blocks;
    }
    if (work > plan.quota) return fail("a CTA runs more than its quota", tiles, slots, nb);
  }
  for (int r : runs) {
    if (r != 1) return fail("a key block is not run exactly once", tiles, slots, nb);
  }
  for (long t = 0; t < rem; ++t) {
    if (static_cast<int>(seen[t].size()) != pieces_of[t]) return fail("a tile's piece count is wrong", tiles, slots, nb);
  }
  if (print) {
    std::printf("plan %ld %ld %ld -> %d %d %d\n", tiles, slots, nb, plan.tail_tiles, plan.quota,
                plan.pieces);
  }
  return 0;
}

int main() {
  long checked = 0;
  // The shapes the notes quote, printed: D=128 at B*S = 16384 and 16 heads (2048 tiles, key
  // blocks of 128 at S = 2048 and 4096, 176 at 16384), D=256 at B=4 H=8 S=4096 (1024 tiles, key
  // blocks of 80), a single query tile over long keys.
  const long shown[][3] = {{2048, 132, 16}, {2048, 132, 32}, {2048, 132, 94}, {1024, 132, 52},
                           {8, 132, 94}};
  for (const auto& s : shown) {
    if (check(s[0], s[1], s[2], 4, true)) return 1;
    ++checked;
  }
  // Every small case, and a sweep of larger ones.
  for (long slots = 1; slots <= 40; ++slots) {
    for (long tiles = 1; tiles <= 3 * slots + 1; ++tiles) {
      for (long nb = 1; nb <= 40; ++nb) {
        for (long min_saved = 0; min_saved <= 4; min_saved += 4) {
          if (check(tiles, slots, nb, min_saved, false)) return 1;
          ++checked;
        }
      }
    }
  }
  for (long slots : {114L, 132L, 264L}) {
    for (long tiles = 1; tiles <= 4 * slots; tiles += 7) {
      for (long nb : {2L, 5L, 8L, 16L, 47L, 52L, 94L, 257L, 1000L}) {
        if (check(tiles, slots, nb, 4, false)) return 1;
        ++checked;
      }
    }
  }
  std::printf("checked %ld plans\n", checked);
  return 0;
}

// Checks on the host where the sm90 epilogue puts each element of O in its shared-memory staging
// (csrc/sm90/o_stage.cuh), for both ways of storing it, against the layout the TMA store reads:
// 64 rows, 64-column chunks of 128-byte rows, 16-byte group c of row r at c ^ (r % 8). For every
// consumer warp, lane and accumulator element at D=64, 128 and 256:
//   - the 4-byte stores (thread: rows g and g + 8, columns 8 i + 2 t and + 1 of each n8 tile i);
//   - stmatrix.x4 per pair of n8 tiles, with the PTX semantics: lane l gives the address of row
//     l % 8 of matrix l / 8; register j of lane l holds row l / 4, columns 2 (l % 4) and + 1 of
//     matrix j, and the kernel packs into register j tile i + j / 2, rows 8 (j % 2) + (0..7).
// Each must land every element at its TMA address exactly once, and each stmatrix matrix's eight
// rows must fall in eight different 16-byte bank groups (no bank conflict). Then the quad
// transpose of the 16-byte plain stores (check_quad_transpose). Prints a line per head dim and
// "ok"; exits 1 on the first mismatch, saying which.
#include <cstdio>
#include <vector>

#include "sm90/o_stage.cuh"

using namespace sessionkit::sm90;

static unsigned tma_address(int row, int col, int chunk_bytes) {
  const int chunk = col / 64, group = (col % 64) / 8;
  return chunk * chunk_bytes + row * 128 + ((group ^ (row % 8)) << 4) + (col % 8) * 2;
}

static int check(int head_dim) {
  const int chunk_bytes = 64 * 128, n8_tiles = head_dim / 8;
  const int bytes = (head_dim / 64) * chunk_bytes;
  std::vector<int> scalar(bytes, 0), matrix(bytes, 0);
  for (int warp = 0; warp < 4; ++warp) {
    for (int lane = 0; lane < 32; ++lane) {
      const int g = lane / 4, t = lane % 4;
      for (int r = 0; r < 2; ++r) {
        const int row = warp * 16 + g + 8 * r;
        for (int i = 0; i < n8_tiles; ++i) {
          for (int e = 0; e < 2; ++e) {
            const unsigned at = o_stage_group(row, i, chunk_bytes) + 4 * t + 2 * e;
            if (at != tma_address(row, 8 * i + 2 * t + e, chunk_bytes)) {
              std::printf("FAIL scalar store D=%d warp %d lane %d row %d tile %d\n", head_dim, warp, lane, row, i);
              return 1;
            }
            ++scalar[at];
          }
        }
      }
    }
    for (int i = 0; i < n8_tiles; i += 2) {
      unsigned row_address[4][8];
      for (int lane = 0; lane < 32; ++lane) {
        row_address[lane / 8][lane % 8] =
            o_stage_group(o_stage_stmatrix_row(warp, lane), o_stage_stmatrix_n8(i, lane), chunk_bytes);
      }
      for (int j = 0; j < 4; ++j) {
        int seen = 0;
        for (int rr = 0; rr < 8; ++rr) seen |= 1 << ((row_address[j][rr] / 16) % 8);
        if (seen != 0xff) {
          std::printf("FAIL bank conflict D=%d warp %d tiles %d matrix %d\n", head_dim, warp, i, j);
          return 1;
        }
      }
      for (int lane = 0; lane < 32; ++lane) {
        for (int j = 0; j < 4; ++j) {
          for (int e = 0; e < 2; ++e) {
            const unsigned at = row_address[j][lane / 4] + 2 * (2 * (lane % 4) + e);
            const int row = warp * 16 + lane / 4 + 8 * (j % 2);
            const int col = 8 * (i + j / 2) + 2 * (lane % 4) + e;
            if (at != tma_address(row, col, chunk_bytes)) {
              std::printf("FAIL stmatrix D=%d warp %d lane %d matrix %d\n", head_dim, warp, lane, j);
              return 1;
            }
            ++matrix[at];
          }
        }
      }
    }
  }
  for (int b = 0; b < bytes; b += 2) {
    if (scalar[b] != 1 || matrix[b] != 1) {
      std::printf("FAIL D=%d byte %d written %d (4-byte stores) and %d (stmatrix) times\n", head_dim, b, scalar[b], matrix[b]);
      return 1;
    }
  }
  std::printf("D=%d: %d elements, each once, at its TMA address, both ways\n", head_dim, bytes / 2);
  return 0;
}

// The quad transpose of the 16-byte plain stores (quad_send / quad_receive), run for the four
// lanes of a quad in lockstep as __shfl_xor_sync runs it: lane t starts with w[k] = columns
// 2 t, 2 t + 1 of n8 tile k and must end with w[j] = columns 2 j, 2 j + 1 of tile t, i.e. lane
// j's starting w[t]: the 16 bytes of tile t in column order.
static int check_quad_transpose() {
  uint32_t w[4][4];
  for (int t = 0; t < 4; ++t) {
    for (int k = 0; k < 4; ++k) w[t][k] = 0x100u * t + k;  // (lane, index) it started at
  }
  for (int m = 1; m <= 2; m *= 2) {
    for (int s = 0; s < 2; ++s) {
      uint32_t sent[4];
      for (int t = 0; t < 4; ++t) sent[t] = quad_send(w[t], t, m, s);
      for (int t = 0; t < 4; ++t) quad_receive(w[t], t, m, s, sent[t ^ m]);
    }
  }
  for (int t = 0; t < 4; ++t) {
    for (int j = 0; j < 4; ++j) {
      if (w[t][j] != 0x100u * j + t) {
        std::printf("quad transpose: lane %d word %d holds lane %u's word %u, not lane %d's word %d\n",
                    t, j, w[t][j] >> 8, w[t][j] & 0xffu, j, t);
        return 1;
      }
    }
  }
  std::printf("quad transpose: lane t holds n8 tile t's columns 0..7 in order\n");
  return 0;
}

int main() {
  for (int d : {64, 128, 256}) {
    if (check(d)) return 1;
  }
  if (check_quad_transpose()) return 1;
  std::printf("ok\n");
  return 0;
}

// Tile shapes and the shared-memory plan of the sm90 family, per head dim.
#pragma once

#include <cstdint>

namespace sessionkit {
namespace sm90 {

// Tuning knobs, overridable with -D for experiments (the defaults are what ships).
#ifndef SK_SM90_BLOCK_N_D64
#define SK_SM90_BLOCK_N_D64 128
#endif
#ifndef SK_SM90_BLOCK_N_D128
#define SK_SM90_BLOCK_N_D128 128
#endif
#ifndef SK_SM90_STAGES
#define SK_SM90_STAGES 2
#endif

template <int kHeadDim_>
struct Traits {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kConsumerWarpgroups = 2;
  static constexpr int kBlockM = 64 * kConsumerWarpgroups;  // 64 query rows per consumer warpgroup
  static constexpr int kBlockN = kHeadDim == 64 ? SK_SM90_BLOCK_N_D64 : SK_SM90_BLOCK_N_D128;
  static constexpr int kStages = SK_SM90_STAGES;
  static constexpr int kThreads = 128 * (1 + kConsumerWarpgroups);  // warpgroup 0 produces
  // setmaxnreg budgets: 24 * 128 + 240 * 256 = 64512 of the SM's 65536 registers.
  static constexpr int kProducerRegisters = 24;
  static constexpr int kConsumerRegisters = 240;

  // Tiles are stored as 64-column chunks of 128-byte rows (one TMA box each), 128-byte swizzled.
  static constexpr int kChunkCols = 64;
  static constexpr int kChunks = kHeadDim / kChunkCols;
  static constexpr int kQChunkBytes = kBlockM * 128;
  static constexpr int kKVChunkBytes = kBlockN * 128;
  static constexpr int kQBytes = kQChunkBytes * kChunks;
  static constexpr int kKVBytes = kKVChunkBytes * kChunks;  // one K or one V tile

  static constexpr int kQOffset = 0;
  static constexpr int kKOffset = kQOffset + kQBytes;
  static constexpr int kVOffset = kKOffset + kStages * kKVBytes;
  static constexpr int kBarrierOffset = kVOffset + kStages * kKVBytes;
  static constexpr int kBarriers = 1 + 4 * kStages;  // q_full, k_full/k_empty, v_full/v_empty
  // +1024: the dynamic shared-memory base is rounded up to the 1024-byte swizzle alignment.
  static constexpr int kSmemBytes = kBarrierOffset + 8 * kBarriers + 1024;

  static_assert(kHeadDim % kChunkCols == 0, "head dim must be a multiple of 64");
  static_assert(kBlockN % 16 == 0 && kBlockN <= 256, "key block must be a wgmma n");
  static_assert(kSmemBytes <= 227 * 1024, "shared memory plan exceeds the 227 KB per block");
};

}  // namespace sm90
}  // namespace sessionkit

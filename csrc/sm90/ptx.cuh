// Hand-written PTX wrappers for the sm90 family, each named after the instruction it wraps.
// Everything here needs sm_90 (TMA, mbarrier transactions) or sm_90a (wgmma, setmaxnreg).
// Reference: the PTX ISA, chapters on mbarrier, cp.async.bulk.tensor, wgmma and setmaxnreg.
#pragma once

#include <cuda.h>  // CUtensorMap (a type only: nothing from the driver library is linked)

#include <cstdint>

namespace sessionkit {
namespace sm90 {

// ---- mbarrier: the producer/consumer handshakes of the shared-memory ring ---------------------

__device__ __forceinline__ void mbarrier_init(uint32_t bar, uint32_t arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(arrivals));
}

// Makes the initialised barriers visible to the async proxy (TMA) and to the other threads.
__device__ __forceinline__ void fence_mbarrier_init() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

// One arrival that also announces `bytes` of TMA transactions to wait for in this phase.
__device__ __forceinline__ void mbarrier_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
               : "memory");
}

__device__ __forceinline__ void mbarrier_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}

__device__ __forceinline__ bool mbarrier_try_wait_parity(uint32_t bar, uint32_t parity) {
  uint32_t done;
  asm volatile(
      "{\n.reg .pred p;\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
      "selp.u32 %0, 1, 0, p;\n}\n"
      : "=r"(done)
      : "r"(bar), "r"(parity)
      : "memory");
  return done != 0;
}

// Waits until the phase with the given parity has completed. A fresh barrier is in phase 0, so
// waiting for parity 1 returns at once: that is how a producer sees an empty ring on its first lap.
__device__ __forceinline__ void mbarrier_wait(uint32_t bar, uint32_t parity) {
  while (!mbarrier_try_wait_parity(bar, parity)) {
  }
}

// ---- shared memory: plain 4-byte accesses by address --------------------------------------------

__device__ __forceinline__ void st_shared_b32(uint32_t addr, uint32_t value) {
  asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr), "r"(value) : "memory");
}

__device__ __forceinline__ uint32_t ld_shared_b32(uint32_t addr) {
  uint32_t value;
  asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(value) : "r"(addr) : "memory");
  return value;
}

// ---- TMA --------------------------------------------------------------------------------------

__device__ __forceinline__ void prefetch_tensormap(const CUtensorMap* map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}

// Copies one box of a 4-D tensor (coordinates innermost first) into shared memory; completion
// is counted in bytes on the mbarrier. Out-of-bounds elements are written as zeros.
__device__ __forceinline__ void cp_async_bulk_tensor_4d_global_to_shared(
    uint32_t dst, const CUtensorMap* map, int c0, int c1, int c2, int c3, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes "
      "[%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
      : "memory");
}

// Asks for one box of a 4-D tensor to be brought into L2 (no shared memory, no completion to
// wait for: a hint the memory system may drop). Coordinates innermost first, as for the load.
__device__ __forceinline__ void cp_async_bulk_prefetch_tensor_4d_l2_global(const CUtensorMap* map,
                                                                            int c0, int c1, int c2,
                                                                            int c3) {
  asm volatile("cp.async.bulk.prefetch.tensor.4d.L2.global.tile [%0, {%1, %2, %3, %4}];\n"
               ::"l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
               : "memory");
}

// Copies one box from shared memory to a 4-D tensor; elements outside the tensor are skipped.
__device__ __forceinline__ void cp_async_bulk_tensor_4d_shared_to_global(
    const CUtensorMap* map, int c0, int c1, int c2, int c3, uint32_t src) {
  asm volatile(
      "cp.async.bulk.tensor.4d.global.shared::cta.tile.bulk_group [%0, {%1, %2, %3, %4}], [%5];\n"
      ::"l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(src)
      : "memory");
}

__device__ __forceinline__ void cp_async_bulk_commit_group() {
  asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
}

// Waits until at most kPending bulk groups of this thread still read their shared memory.
template <int kPending>
__device__ __forceinline__ void cp_async_bulk_wait_group_read() {
  asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(kPending) : "memory");
}

// Makes this thread's ordinary shared-memory writes visible to the async proxy (TMA, wgmma).
__device__ __forceinline__ void fence_proxy_async_shared_cta() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// ---- wgmma bookkeeping (the shapes themselves are in wgmma.cuh) -----------------------------

// Orders earlier register writes (accumulators, A fragments) before the next wgmma reads them.
__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}

__device__ __forceinline__ void wgmma_commit_group() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}

// Waits until at most kPending committed wgmma groups of this warpgroup are still running.
template <int kPending>
__device__ __forceinline__ void wgmma_wait_group() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}

// Tells the compiler that wgmma may have written these registers: later reads stay after the
// wait that precedes this call. Emits no instruction.
template <int kTiles>
__device__ __forceinline__ void fence_registers(float (&d)[kTiles][4]) {
#pragma unroll
  for (int i = 0; i < kTiles; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) asm volatile("" : "+f"(d[i][j])::"memory");
  }
}

template <int kSteps>
__device__ __forceinline__ void fence_registers(uint32_t (&a)[kSteps][4]) {
#pragma unroll
  for (int i = 0; i < kSteps; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) asm volatile("" : "+r"(a[i][j])::"memory");
  }
}

// Shared-memory matrix descriptor for wgmma with the swizzle that TMA writes (kSwizzleBytes 128
// or 64): the tile is stored as 8-row x kSwizzleBytes swizzle atoms. For a K-major operand, sbo is
// the byte distance between 8-row groups and lbo is unused; for an MN-major operand, lbo is the
// distance between column chunks (kSwizzleBytes / 2 elements) and sbo between 8-row groups along
// K. The address needs 16-byte alignment, and the tile 1024-byte alignment. PTX ISA: "Matrix
// Descriptor Format" of the wgmma section.
template <int kSwizzleBytes>
__host__ __device__ __forceinline__ uint64_t make_smem_desc(uint32_t addr, uint32_t lbo,
                                                             uint32_t sbo) {
  static_assert(kSwizzleBytes == 128 || kSwizzleBytes == 64, "128- or 64-byte swizzle");
  constexpr uint64_t kLayoutType = kSwizzleBytes == 128 ? 1 : 2;
  uint64_t desc = 0;
  desc |= static_cast<uint64_t>((addr & 0x3FFFF) >> 4);
  desc |= static_cast<uint64_t>((lbo & 0x3FFFF) >> 4) << 16;
  desc |= static_cast<uint64_t>((sbo & 0x3FFFF) >> 4) << 32;
  desc |= kLayoutType << 62;
  return desc;
}

// The descriptor of the same layout `bytes` further on: the start address (bits 0-13, 16-byte
// units) advanced without rebuilding the rest. Equal to make_smem_desc(addr + bytes, ...) while
// addr + bytes stays below 256 KB (shared memory is 228 KB), which tests/test_smem_desc.py checks
// on the host for every offset the kernels use.
__host__ __device__ __forceinline__ uint64_t smem_desc_advance(uint64_t desc, uint32_t bytes) {
  return desc + (bytes >> 4);
}

// ---- warpgroup registers and named barriers ---------------------------------------------------

template <int kRegs>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

template <int kRegs>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

__device__ __forceinline__ void bar_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

__device__ __forceinline__ void bar_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// stmatrix.sync.aligned.m8n8.x4.shared.b16: the warp stores four 8 x 8 b16 matrices. Lane l
// gives the shared address of row l % 8 of matrix l / 8 (16 contiguous bytes); register i of
// every lane holds its two elements of matrix i, row lane / 4, columns 2 * (lane % 4) and + 1
// (the mma/wgmma accumulator layout), packed low column first. Needs sm_90.
__device__ __forceinline__ void stmatrix_x4(uint32_t addr, uint32_t r0, uint32_t r1, uint32_t r2,
                                            uint32_t r3) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(addr),
               "r"(r0), "r"(r1), "r"(r2), "r"(r3)
               : "memory");
}

// bar.red.or: a named barrier that also returns whether any of its `threads` passed true.
__device__ __forceinline__ bool bar_red_or(int id, int threads, bool value) {
  uint32_t any;
  asm volatile(
      "{\n.reg .pred p, q;\n"
      "setp.ne.u32 p, %1, 0;\n"
      "bar.red.or.pred q, %2, %3, p;\n"
      "selp.u32 %0, 1, 0, q;\n}\n"
      : "=r"(any)
      : "r"(static_cast<uint32_t>(value)), "r"(id), "r"(threads)
      : "memory");
  return any != 0;
}

}  // namespace sm90
}  // namespace sessionkit

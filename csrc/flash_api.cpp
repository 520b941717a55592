// Torch binding of the FlashAttention forward kernels: input checks, dispatch, op registration.
//
// Ops (namespace sessionkit):
//   flash_attn_fwd(Tensor q, Tensor k, Tensor v, bool causal, float scale,
//                  bool causal_bottom_right=False) -> (Tensor, Tensor)
//   flash_attn_fwd_out(Tensor q, Tensor k, Tensor v, Tensor(a!) out, Tensor(b!) lse,
//                      bool causal, float scale, bool causal_bottom_right=False) -> ()
//   flash_attn_family(int device) -> str: "sm90" or "sm80", the family a call on that device runs
//   flash_attn_head_dims(int device) -> int[]: the head dims that family has kernels for
//
// Dispatch: the sm90 family (TMA + wgmma, sm_90a) on compute capability 9.0, the sm80 family
// (mma.sync) elsewhere. SESSIONKIT_KERNEL_FAMILY=sm80 forces the sm80 family on every device.
// Inputs that TMA cannot describe (a zero stride, say) run the sm80 family too.
// q: (B, H_q, Sq, D), k and v: (B, H_kv, Sk, D) with H_q % H_kv == 0 (grouped-query attention:
// query head h reads key/value head h / (H_q / H_kv), no copy), any strides with a contiguous last
// dimension. out: (B, H_q, Sq, D) in the input dtype, lse: (B, H_q, Sq) float32, natural log.
// causal: query row i sees key j iff j <= i (top-left, SDPA's is_causal), or with
// causal_bottom_right iff j <= i + Sk - Sq (FlashAttention 2+). A row that sees no key gets O = 0
// and LSE = -inf.
//
// Only light headers here (no <torch/extension.h>) so that the binding compiles quickly.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "flash_fwd.h"
#include "sm90/dispatch.h"
#include "static_switch.h"

namespace sessionkit {
namespace {

// Error messages are built with std::string and std::to_string only, and handed to TORCH_CHECK as
// one string: c10::str with several arguments formats through an ostringstream inside this library,
// which crashed (SIGSEGV in the number formatting of the iostream locale) when the extension was
// linked by a toolchain whose libstdc++ differs from torch's. The message is built only on failure.
#define SK_CHECK(COND, MSG)               \
  do {                                    \
    if (!(COND)) {                        \
      TORCH_CHECK(false, std::string(MSG)); \
    }                                     \
  } while (0)

std::string num(int64_t x) { return std::to_string(x); }

std::string list(c10::IntArrayRef xs) {
  std::string s = "[";
  for (size_t i = 0; i < xs.size(); ++i) s += (i ? ", " : "") + std::to_string(xs[i]);
  return s + "]";
}

std::string dev(const at::Tensor& t) { return t.device().str(); }

std::string dtype(const at::Tensor& t) { return c10::toString(t.scalar_type()); }

// The head dims each family instantiates: keep in step with FAMILIES in generate_kernels.py (a
// test compares the two). A call is accepted only for a head dim of the family that will run it.
template <int... kDims>
struct HeadDims {
  static bool has(int64_t d) { return ((d == kDims) || ...); }
  static std::vector<int64_t> list() { return {kDims...}; }
};
using Sm80HeadDims = HeadDims<64, 128>;
using Sm90HeadDims = HeadDims<64, 96, 128, 256>;

std::string dims_text(const std::vector<int64_t>& dims) {
  std::string s;
  for (size_t i = 0; i < dims.size(); ++i) {
    s += (i == 0 ? "" : (i + 1 == dims.size() ? " and " : ", ")) + std::to_string(dims[i]);
  }
  return s;
}

bool aligned(const at::Tensor& t, int64_t bytes) {
  return reinterpret_cast<uintptr_t>(t.data_ptr()) % bytes == 0;
}

// The kernels read 16-byte chunks: rows must start 16-byte aligned, so the outer strides (of
// dimensions longer than 1) must be multiples of 8 elements and the data 16-byte aligned. Other
// inputs (an odd slice, say) are copied once into a contiguous tensor; the common layouts, (B, H,
// S, D) and (B, S, H, D) seen through .transpose(1, 2), go to the kernel as they are. Done here,
// not in Python, so that torch.compile needs no storage-offset logic in the traced wrapper.
at::Tensor kernel_ready(const at::Tensor& t) {
  bool ok = aligned(t, 16);
  for (int i = 0; i < 3; ++i) ok = ok && (t.size(i) <= 1 || t.stride(i) % 8 == 0);
  return ok ? t : t.clone(at::MemoryFormat::Contiguous);
}

void check_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  SK_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4,
           "flash_attn_fwd: q, k and v must be 4-D (batch, heads, seq, head_dim); got ranks " +
               num(q.dim()) + ", " + num(k.dim()) + ", " + num(v.dim()));
  SK_CHECK(q.is_cuda() && k.is_cuda() && v.is_cuda(),
           "flash_attn_fwd: q, k and v must be CUDA tensors; got " + dev(q) + ", " + dev(k) + ", " +
               dev(v));
  SK_CHECK(q.device() == k.device() && q.device() == v.device(),
           "flash_attn_fwd: q, k and v must be on the same device; got " + dev(q) + ", " + dev(k) +
               ", " + dev(v));
  const auto st = q.scalar_type();
  SK_CHECK(st == at::kHalf || st == at::kBFloat16,
           "flash_attn_fwd: dtype must be float16 or bfloat16; got " + dtype(q));
  SK_CHECK(k.scalar_type() == st && v.scalar_type() == st,
           "flash_attn_fwd: q, k and v must share one dtype; got " + dtype(q) + ", " + dtype(k) +
               ", " + dtype(v));
  const int64_t d = q.size(3);
  SK_CHECK(k.size(3) == d && v.size(3) == d,
           "flash_attn_fwd: q, k and v must share head_dim; got " + num(d) + ", " + num(k.size(3)) +
               ", " + num(v.size(3)));
  SK_CHECK(k.size(0) == q.size(0) && v.size(0) == q.size(0),
           "flash_attn_fwd: batch sizes differ: q " + num(q.size(0)) + ", k " + num(k.size(0)) +
               ", v " + num(v.size(0)));
  SK_CHECK(k.size(1) == v.size(1),
           "flash_attn_fwd: k and v head counts differ: k " + num(k.size(1)) + ", v " +
               num(v.size(1)));
  SK_CHECK(k.size(1) > 0 || q.size(1) == 0,
           "flash_attn_fwd: k and v have no heads but q has " + num(q.size(1)));
  SK_CHECK(k.size(1) == 0 || q.size(1) % k.size(1) == 0,
           "flash_attn_fwd: the number of query heads (" + num(q.size(1)) +
               ") must be a multiple of the number of key/value heads (" + num(k.size(1)) +
               ") for grouped-query attention");
  SK_CHECK(k.size(2) == v.size(2), "flash_attn_fwd: k and v sequence lengths differ: " +
                                       num(k.size(2)) + " vs " + num(v.size(2)));
  SK_CHECK(k.size(2) > 0,
           "flash_attn_fwd: k and v have no keys (seq_len_k == 0); softmax over no keys is "
           "undefined");
  SK_CHECK(q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1,
           "flash_attn_fwd: the last dimension of q, k and v must be contiguous (stride 1)");
  constexpr int64_t kMaxInt = std::numeric_limits<int>::max();
  SK_CHECK(q.size(2) <= kMaxInt && k.size(2) <= kMaxInt,
           "flash_attn_fwd: sequence lengths must fit in 32 bits");
  SK_CHECK(q.size(0) <= 65535 && q.size(1) <= 65535,
           "flash_attn_fwd: batch and heads must each be at most 65535");
}

void check_outputs(const at::Tensor& q, const at::Tensor& out, const at::Tensor& lse) {
  SK_CHECK(out.device() == q.device() && lse.device() == q.device(),
           "flash_attn_fwd_out: out and lse must be on the device of q (" + dev(q) + ")");
  SK_CHECK(out.scalar_type() == q.scalar_type(),
           "flash_attn_fwd_out: out must have dtype " + dtype(q) + "; got " + dtype(out));
  SK_CHECK(lse.scalar_type() == at::kFloat,
           "flash_attn_fwd_out: lse must be float32; got " + dtype(lse));
  SK_CHECK(out.dim() == 4 && out.size(0) == q.size(0) && out.size(1) == q.size(1) &&
               out.size(2) == q.size(2) && out.size(3) == q.size(3),
           "flash_attn_fwd_out: out must have the shape of q " + list(q.sizes()) + "; got " +
               list(out.sizes()));
  SK_CHECK(lse.dim() == 3 && lse.size(0) == q.size(0) && lse.size(1) == q.size(1) &&
               lse.size(2) == q.size(2),
           "flash_attn_fwd_out: lse must have shape (batch, heads, seq_len_q) = " +
               list(q.sizes().slice(0, 3)) + "; got " + list(lse.sizes()));
  bool even_strides = true;
  for (int i = 0; i < 3; ++i) {
    even_strides = even_strides && (out.size(i) <= 1 || out.stride(i) % 2 == 0);
  }
  SK_CHECK(out.stride(3) == 1 && even_strides && aligned(out, 4),
           "flash_attn_fwd_out: out needs a contiguous last dimension, even strides and 4-byte "
           "alignment; got strides " +
               list(out.strides()));
}

enum class Family { kSm80, kSm90 };

// Compute capability 9.0 per device, read once per device (0: not read yet).
constexpr int kMaxDevices = 64;
std::atomic<int> g_is_sm90[kMaxDevices] = {};  // 0: unknown, 1: sm_90, 2: other

bool device_is_sm90(int device) {
  if (device >= 0 && device < kMaxDevices) {
    const int known = g_is_sm90[device].load(std::memory_order_relaxed);
    if (known != 0) return known == 1;
  }
  int major = 0, minor = 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  const bool sm90 = major == 9 && minor == 0;
  if (device >= 0 && device < kMaxDevices) g_is_sm90[device].store(sm90 ? 1 : 2);
  return sm90;
}

Family family_for(int device) {
  const char* forced = std::getenv("SESSIONKIT_KERNEL_FAMILY");
  if (forced != nullptr && std::strcmp(forced, "sm80") == 0) return Family::kSm80;
  return device_is_sm90(device) ? Family::kSm90 : Family::kSm80;
}

std::string flash_attn_family(int64_t device) {
  SK_CHECK(device >= 0, "flash_attn_family: device index must be >= 0; got " + num(device));
  return family_for(static_cast<int>(device)) == Family::kSm90 ? "sm90" : "sm80";
}

std::vector<int64_t> head_dims_of(Family family) {
  return family == Family::kSm90 ? Sm90HeadDims::list() : Sm80HeadDims::list();
}

std::vector<int64_t> flash_attn_head_dims(int64_t device) {
  SK_CHECK(device >= 0, "flash_attn_head_dims: device index must be >= 0; got " + num(device));
  return head_dims_of(family_for(static_cast<int>(device)));
}

void check_head_dim(const at::Tensor& q) {
  const int64_t d = q.size(3);
  const Family family = family_for(q.get_device());
  const bool ok = family == Family::kSm90 ? Sm90HeadDims::has(d) : Sm80HeadDims::has(d);
  SK_CHECK(ok, "flash_attn_fwd: head_dim " + num(d) + " is not supported by the " +
                   (family == Family::kSm90 ? std::string("sm90") : std::string("sm80")) +
                   " kernels that run on " + dev(q) + "; supported head dims are " +
                   dims_text(head_dims_of(family)));
}

// Runs the kernel of `Dims` whose head dim is `head_dim` (checked before: one always matches).
template <::sessionkit::DType kDtype, bool kCausal, int... kDims>
cudaError_t run_sm80(HeadDims<kDims...>, int head_dim, const FlashFwdParams& p,
                     cudaStream_t stream) {
  cudaError_t err = cudaErrorInvalidValue;
  ((head_dim == kDims ? (err = run_flash_fwd_sm80<kDtype, kDims, kCausal>(p, stream), true)
                      : false) ||
   ...);
  return err;
}

template <::sessionkit::DType kDtype, bool kCausal, int... kDims>
cudaError_t run_sm90(HeadDims<kDims...>, int head_dim, const FlashFwdParams& p,
                     cudaStream_t stream) {
  // The variant by head dim, mask and lengths: sm90/dispatch.h, where each threshold's
  // measurement is named. Each branch below runs one that generate_kernels.py instantiates.
  const bool split = !kCausal && p.num_splits >= 1 && p.o_accum != nullptr;
  const Sm90Variant variant =
      sm90::pick_variant(head_dim, kCausal, split, p.seqlen_q, p.seqlen_k);
  if (head_dim == 64 && variant == Sm90Variant::kShortKeys) {
    return run_flash_fwd_sm90<kDtype, 64, kCausal, Sm90Variant::kShortKeys>(p, stream);
  }
  if constexpr (!kCausal) {
    if (head_dim == 128 && variant == Sm90Variant::kLongKeys) {
      return run_flash_fwd_sm90<kDtype, 128, false, Sm90Variant::kLongKeys>(p, stream);
    }
  } else {
    if (head_dim == 64 && variant == Sm90Variant::kMidKeys) {
      return run_flash_fwd_sm90<kDtype, 64, true, Sm90Variant::kMidKeys>(p, stream);
    }
    if (head_dim == 128 && variant == Sm90Variant::kShortKeys) {
      return run_flash_fwd_sm90<kDtype, 128, true, Sm90Variant::kShortKeys>(p, stream);
    }
  }
  constexpr Sm90Variant kSplit = Sm90Variant::kSplitKV;
  cudaError_t err = cudaErrorInvalidValue;
  ((head_dim == kDims
        ? (err = variant == kSplit
                     ? run_flash_fwd_sm90<kDtype, kDims, false, kSplit>(p, stream)
                     : run_flash_fwd_sm90<kDtype, kDims, kCausal, Sm90Variant::kDefault>(p, stream),
           true)
        : false) ||
   ...);
  return err;
}

// out (B, H, Sq, D) and lse (B, H, Sq) into the parameters: pointers and outer strides.
void set_outputs(FlashFwdParams& p, const at::Tensor& out, const at::Tensor& lse) {
  p.out = out.data_ptr();
  p.lse = lse.data_ptr<float>();
  p.o_batch_stride = out.stride(0);
  p.o_head_stride = out.stride(1);
  p.o_row_stride = out.stride(2);
  p.lse_batch_stride = lse.stride(0);
  p.lse_head_stride = lse.stride(1);
  p.lse_row_stride = lse.stride(2);
}

// The sm90 causal kernels hand out tiles from a counter that reads 0 at launch, and the kernel's
// last ticket sets it back to 0 (kernel.cuh). An eager call takes its stream's own counter, kept
// for the life of the process: calls on one stream run in order, each launch starting only after
// the one before has ended (no programmatic dependent launch here: a path that adds it must keep
// the memset), so each finds it at 0 and no memset runs before the kernel (3.3-3.6 us a call,
// docs/kernel-notes.md, v19). Streams are told apart by cudaStreamGetId, which no other stream
// of the process ever gets (a handle value can be reused, and cudaStreamPerThread names a
// different stream in each thread). A new counter is zeroed by a memset on its stream, ordered
// before its first kernel. Under CUDA graph capture, with -DSK_TILE_COUNTER_PER_STREAM=0, past
// kMaxStreamCounters streams, or where anything here fails, the call zeroes a fresh counter
// with a memset on its stream instead (graphs replayed on any stream, concurrently too, stay
// independent). Counters come from slabs of device memory that are never freed (4 bytes per
// stream and device); the table is a leaked heap object, so that it outlives static destructors.
#ifndef SK_TILE_COUNTER_PER_STREAM
#define SK_TILE_COUNTER_PER_STREAM 1
#endif

constexpr size_t kMaxStreamCounters = 1 << 16;

struct StreamCounters {
  std::mutex mutex;
  std::unordered_map<uint64_t, int*> counters;  // key: device << 48 ^ stream id
  std::vector<std::pair<int*, int>> slabs;     // per device: next free counter, how many left
  std::vector<bool> failed;                    // per device: a slab allocation failed
};

StreamCounters& stream_counters() {
  static auto* table = new StreamCounters();
  return *table;
}

// The table's key of (device, stream), from cudaStreamGetId; false where that query fails (its
// error, which may be an earlier launch's, is left for the launch check to report).
bool stream_key(int64_t device, cudaStream_t stream, uint64_t* key) {
  unsigned long long id = 0;
  if (cudaStreamGetId(stream, &id) != cudaSuccess) return false;
  *key = (static_cast<uint64_t>(device) << 48) ^ static_cast<uint64_t>(id);
  return true;
}

int* stream_tile_counter(int device, cudaStream_t stream) {
  uint64_t key = 0;
  if (!stream_key(device, stream, &key)) return nullptr;
  constexpr int kSlab = 1024;
  StreamCounters& table = stream_counters();
  std::lock_guard<std::mutex> lock(table.mutex);
  const auto found = table.counters.find(key);
  if (found != table.counters.end()) return found->second;
  if (table.counters.size() >= kMaxStreamCounters || device < 0) return nullptr;
  if (static_cast<int>(table.slabs.size()) <= device) {
    table.slabs.resize(device + 1, {nullptr, 0});
    table.failed.resize(device + 1, false);
  }
  if (table.failed[device]) return nullptr;
  auto& slab = table.slabs[device];
  if (slab.second == 0) {
    void* mem = nullptr;
    cudaError_t err;
    {
      // As PyTorch's allocator does: a cudaMalloc must not invalidate another thread's capture.
      c10::cuda::CUDAStreamCaptureModeGuard relaxed{cudaStreamCaptureModeRelaxed};
      err = cudaMalloc(&mem, kSlab * sizeof(int));
    }
    if (err != cudaSuccess) {
      (void)cudaGetLastError();  // the allocation's error only
      table.failed[device] = true;
      return nullptr;
    }
    slab = {static_cast<int*>(mem), kSlab};
  }
  int* counter = slab.first;
  if (cudaMemsetAsync(counter, 0, sizeof(int), stream) != cudaSuccess) {
    (void)cudaGetLastError();
    return nullptr;  // the slot stays unused; the caller zeroes a fresh counter
  }
  ++slab.first;
  --slab.second;
  table.counters.emplace(key, counter);
  return counter;
}

// Whether `stream` is being captured into a CUDA graph (or that cannot be told: then the path that
// is safe under capture is taken).
bool stream_is_capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  const cudaError_t err = cudaStreamIsCapturing(stream, &status);
  if (err == cudaErrorStreamCaptureImplicit) (void)cudaGetLastError();  // only this query's error
  if (err != cudaSuccess) return true;
  return status != cudaStreamCaptureStatusNone;
}

// For tests: the value of the tile counter of `device`'s current stream, or -1 where that stream
// has none yet (read after the stream's queued work); with `set` >= 0 it is then set to that
// value (to check that a counter left off 0 is seen).
int64_t stream_tile_counter_value(int64_t device, int64_t set) {
  SK_CHECK(device >= 0 && device < kMaxDevices,
           "_stream_tile_counter: bad device index " + num(device));
  c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device)).stream();
  uint64_t key = 0;
  SK_CHECK(stream_key(device, stream, &key), "_stream_tile_counter: cudaStreamGetId failed");
  int* counter = nullptr;
  {
    StreamCounters& table = stream_counters();
    std::lock_guard<std::mutex> lock(table.mutex);
    const auto found = table.counters.find(key);
    if (found == table.counters.end()) return -1;
    counter = found->second;
  }
  int value = -1;
  SK_CHECK(cudaMemcpyAsync(&value, counter, sizeof(int), cudaMemcpyDeviceToHost, stream) == cudaSuccess &&
               cudaStreamSynchronize(stream) == cudaSuccess,
           "_stream_tile_counter: could not read the counter");
  if (set >= 0) {
    const int next = static_cast<int>(std::min<int64_t>(set, std::numeric_limits<int>::max()));
    SK_CHECK(cudaMemcpyAsync(counter, &next, sizeof(int), cudaMemcpyHostToDevice, stream) == cudaSuccess &&
                 cudaStreamSynchronize(stream) == cudaSuccess,
             "_stream_tile_counter: could not set the counter");
  }
  return value;
}

// Split-KV buffers of a decode-shaped call (see launch_decode): float32 partial O and LSE.
struct SplitKV {
  int num_splits;
  at::Tensor o_accum;    // (num_splits, B, H, Sq, D) float32
  at::Tensor lse_accum;  // (num_splits, B, H, Sq) float32
};

// Device scratch memory for one call's kernels (FlashFwdParams::scratch): byte tensors from the
// caching allocator on the call's device, held until the call returns. The allocator is
// stream-ordered, so memory freed then is reused only after this call's kernels on that stream
// (as the causal tile counter below). An allocation that fails returns null: the launch then
// runs without what it wanted the memory for (for the tail split: whole tiles, a result as
// correct but not bitwise the same as the split's, which differs in the last bits).
struct Scratch {
  at::TensorOptions options;
  std::vector<at::Tensor> held;

  static void* allocate(void* ctx, size_t bytes) {
    auto* self = static_cast<Scratch*>(ctx);
    try {
      self->held.push_back(at::empty({static_cast<int64_t>(bytes)}, self->options));
    } catch (const std::exception&) {
      return nullptr;
    }
    return self->held.back().data_ptr();
  }
};

// Runs the kernel of the family this device dispatches to. With `split` (non-causal calls on the
// sm90 family), the kernel writes split->o_accum / lse_accum instead of out and lse, and the
// result is true: the caller merges them. Where the split cannot run (the sm80 family, or inputs
// TMA cannot describe) the kernel writes out and lse itself and the result is false.
bool launch_kernels(const at::Tensor& q_given, const at::Tensor& k_given,
                    const at::Tensor& v_given, const at::Tensor& out, const at::Tensor& lse,
                    bool causal, double scale, bool bottom_right, const SplitKV* split = nullptr) {
  if (q_given.size(0) == 0 || q_given.size(1) == 0 || q_given.size(2) == 0) return false;
  const at::Tensor q_in = kernel_ready(q_given);
  const at::Tensor k = kernel_ready(k_given);
  const at::Tensor v = kernel_ready(v_given);
  // The kernels take the row max on unscaled scores, which needs scale >= 0: a negative scale
  // runs as the same attention of -q with -scale (one copy of q, in this rare case only).
  const at::Tensor q = scale < 0 ? q_in.neg() : q_in;
  if (scale < 0) scale = -scale;
  FlashFwdParams p{};
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  set_outputs(p, out, lse);
  p.q_batch_stride = q.stride(0);
  p.q_head_stride = q.stride(1);
  p.q_row_stride = q.stride(2);
  p.k_batch_stride = k.stride(0);
  p.k_head_stride = k.stride(1);
  p.k_row_stride = k.stride(2);
  p.v_batch_stride = v.stride(0);
  p.v_head_stride = v.stride(1);
  p.v_row_stride = v.stride(2);
  p.batch = static_cast<int>(q.size(0));
  p.heads = static_cast<int>(q.size(1));
  p.heads_k = static_cast<int>(k.size(1));
  p.head_ratio = p.heads / p.heads_k;
  p.seqlen_q = static_cast<int>(q.size(2));
  p.seqlen_k = static_cast<int>(k.size(2));
  // Top-left (SDPA's is_causal) or bottom-right (FlashAttention 2+): row i sees keys
  // j <= i + causal_offset. Both lengths are below 2^31, so the difference fits in an int.
  p.causal_offset = bottom_right ? p.seqlen_k - p.seqlen_q : 0;
  // At least the smallest normal float: with a scale of 0 (or one that float32 rounds to 0) a
  // masked score, -inf, times it would be NaN in the softmax, and every output NaN. At 2^-126 the
  // scaled scores of any finite input round their exponentials to exactly 1, as a scale of 0
  // gives (uniform weights over the keys a row sees, LSE = log of their count).
  p.scale_log2 = std::max(static_cast<float>(scale * 1.4426950408889634),
                          std::numeric_limits<float>::min());

  c10::cuda::CUDAGuard guard(q.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const bool is_bf16 = q.scalar_type() == at::kBFloat16;
  const int head_dim = static_cast<int>(q.size(3));
  const Family family = family_for(q.get_device());
  const bool use_split = split != nullptr && family == Family::kSm90 && !causal;
  if (use_split) {
    p.num_splits = split->num_splits;
    p.o_accum = split->o_accum.data_ptr<float>();
    p.lse_accum = split->lse_accum.data_ptr<float>();
  }
  // The sm90 causal kernels' tile counter (stream_tile_counter above): the stream's own, or under
  // graph capture a fresh int32 from the caching allocator (stream-ordered) zeroed by a 4-byte
  // memset on the same stream.
  at::Tensor tile_counter;
  if (family == Family::kSm90 && causal && SK_TILE_COUNTER_PER_STREAM && !stream_is_capturing(stream)) {
    p.tile_counter = stream_tile_counter(q.get_device(), stream);
  }
  if (family == Family::kSm90 && causal && p.tile_counter == nullptr) {
    tile_counter = at::empty({1}, q.options().dtype(at::kInt));
    p.tile_counter = tile_counter.data_ptr<int>();
    const cudaError_t zeroed = cudaMemsetAsync(p.tile_counter, 0, sizeof(int), stream);
    SK_CHECK(zeroed == cudaSuccess,
             std::string("flash_attn_fwd: could not zero the tile counter: ") +
                 cudaGetErrorString(zeroed));
  }
  Scratch scratch{q.options().dtype(at::kByte), {}};
  p.scratch = &Scratch::allocate;
  p.scratch_ctx = &scratch;
  bool split_ran = false;
  cudaError_t err = SK_DTYPE_SWITCH(is_bf16, kDtype, [&] {
    return SK_BOOL_SWITCH(causal, kCausal, [&] {
      if (family == Family::kSm90) {
        const cudaError_t status = run_sm90<kDtype, kCausal>(Sm90HeadDims{}, head_dim, p, stream);
        if (status != cudaErrorNotSupported) {
          split_ran = use_split;
          return status;
        }
        p.num_splits = 0;  // the sm80 family writes out and lse itself
        p.o_accum = nullptr;
        p.lse_accum = nullptr;
        // TMA cannot describe these inputs: the sm80 family runs them, if it has this head dim.
        SK_CHECK(Sm80HeadDims::has(head_dim),
                 "flash_attn_fwd: these inputs need the sm80 kernels (TMA cannot describe them), "
                 "which have no head_dim " + num(head_dim) + "; supported there: " +
                     dims_text(Sm80HeadDims::list()) + "; pass contiguous tensors");
      }
      return run_sm80<kDtype, kCausal>(Sm80HeadDims{}, head_dim, p, stream);
    });
  });
  SK_CHECK(err == cudaSuccess,
           std::string("flash_attn_fwd: kernel launch failed: ") + cudaGetErrorString(err));
  return split_ran && err == cudaSuccess;
}

// ---- decode-shaped calls: one query row per head ------------------------------------------------
//
// With Sq = 1 and every key visible (no mask, or a bottom-right mask, under which the one row
// sees every key), a tile of 64-row warpgroups would hold one real row and read all of K and V
// once per query head. Instead the H_q / H_kv query heads that share a key/value head become the
// rows of one tile: q (B, H_q, 1, D) is read as (B, H_kv, H_q / H_kv, D) (out and lse likewise, as
// strided views: no copy), so K and V are read once per key/value head. That leaves B * H_kv
// tiles, often fewer than the SMs, each walking every key: on the sm90 family the keys are then
// split into ranges (split-KV; with H_q = H_kv the rows are the heads themselves and only the
// split applies), each range a tile of its own writing its O and LSE in float32,
// and a second kernel merges the ranges by their LSE (run_flash_combine). The partial results stay
// in float32 until the merge: rounded to the input dtype first, they broke the 2x error rule.
// Method: FlashAttention 2's "seqlen_q = 1 with the grouped heads swapped into the rows" and its
// split-KV (flash-decoding).

// Key blocks the longest CTA runs, in 128-key blocks: whether packing the rows shortens the grid.
int64_t grid_cost(int64_t tiles, int64_t keys, int64_t sms) {
  return ((tiles + sms - 1) / sms) * ((keys + 127) / 128);
}

// How many key ranges to split `tiles` tiles of `keys` keys into: the count (at most 64, each
// range at least 512 keys) whose tiles fill the persistent grid's rounds best, or the smallest
// count whose fill is within 4 % of that, relatively (fewer ranges: less per-tile work and a
// smaller merge); 1 when the tiles already fill the SMs.
int split_count(int64_t tiles, int64_t keys, int64_t sms) {
  constexpr int kMaxSplits = 64;
  constexpr int64_t kMinKeysPerSplit = 512;
  if (tiles >= sms) return 1;
  const int64_t most = std::min<int64_t>(kMaxSplits, std::max<int64_t>(1, keys / kMinKeysPerSplit));
  auto fill = [&](int64_t s) {
    const int64_t n = tiles * s;
    return static_cast<double>(n) / static_cast<double>(((n + sms - 1) / sms) * sms);
  };
  double best = 0.0;
  for (int64_t s = 1; s <= most; ++s) best = std::max(best, fill(s));
  for (int64_t s = 1; s <= most; ++s) {
    if (fill(s) >= best * 0.96) return static_cast<int>(s);
  }
  return 1;
}

bool launch_decode(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const at::Tensor& out, const at::Tensor& lse, bool causal, double scale,
                   bool bottom_right) {
  const int64_t batch = q.size(0), heads = q.size(1), dim = q.size(3);
  const int64_t heads_k = k.size(1), seq_k = k.size(2);
  if (q.size(2) != 1 || (causal && !bottom_right) || batch == 0 || heads_k == 0 ||
      heads % heads_k != 0) {
    return false;
  }
  int sms = 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, q.get_device()) !=
          cudaSuccess ||
      sms <= 0) {
    return false;
  }
  const bool sm90 = family_for(q.get_device()) == Family::kSm90;
  const int64_t ratio = heads / heads_k;
  // Tiles of the packed call: 128 rows each (the split kernels' two 64-row consumers; the sm80
  // family's tile is 128 rows too).
  const int64_t packed_tiles = batch * heads_k * ((ratio + 127) / 128);
  const int splits = sm90 ? split_count(packed_tiles, seq_k, sms) : 1;
  if (splits == 1 && grid_cost(packed_tiles, seq_k, sms) >= grid_cost(batch * heads, seq_k, sms)) {
    return false;
  }
  const at::Tensor q_rows = q.reshape({batch, heads_k, ratio, dim});
  const at::Tensor out_rows = out.as_strided({batch, heads_k, ratio, dim},
                                             {out.stride(0), out.stride(1) * ratio, out.stride(1),
                                              out.stride(3)});
  const at::Tensor lse_rows =
      lse.as_strided({batch, heads_k, ratio}, {lse.stride(0), lse.stride(1) * ratio, lse.stride(1)});
  if (splits == 1) {
    launch_kernels(q_rows, k, v, out_rows, lse_rows, false, scale, false);
    return true;
  }
  const auto f32 = q.options().dtype(at::kFloat);
  const SplitKV split{splits, at::empty({splits, batch, heads_k, ratio, dim}, f32),
                      at::empty({splits, batch, heads_k, ratio}, f32)};
  if (!launch_kernels(q_rows, k, v, out_rows, lse_rows, false, scale, false, &split)) return true;
  FlashFwdParams c{};
  set_outputs(c, out_rows, lse_rows);
  c.batch = static_cast<int>(batch);
  c.heads = static_cast<int>(heads_k);
  c.seqlen_q = static_cast<int>(ratio);
  c.num_splits = splits;
  c.o_accum = split.o_accum.data_ptr<float>();
  c.lse_accum = split.lse_accum.data_ptr<float>();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const cudaError_t err = q.scalar_type() == at::kBFloat16
                              ? run_flash_combine<DType::kBFloat16>(c, static_cast<int>(dim), stream)
                              : run_flash_combine<DType::kFloat16>(c, static_cast<int>(dim), stream);
  SK_CHECK(err == cudaSuccess,
           std::string("flash_attn_fwd: split-KV merge failed: ") + cudaGetErrorString(err));
  return true;
}

void launch(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
            const at::Tensor& lse, bool causal, double scale, bool bottom_right) {
  c10::cuda::CUDAGuard guard(q.device());
  if (launch_decode(q, k, v, out, lse, causal, scale, bottom_right)) return;
  launch_kernels(q, k, v, out, lse, causal, scale, bottom_right);
}

std::tuple<at::Tensor, at::Tensor> flash_attn_fwd(const at::Tensor& q, const at::Tensor& k,
                                                  const at::Tensor& v, bool causal, double scale,
                                                  bool bottom_right) {
  check_qkv(q, k, v);
  check_head_dim(q);
  at::Tensor out = at::empty({q.size(0), q.size(1), q.size(2), q.size(3)}, q.options());
  at::Tensor lse = at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(at::kFloat));
  launch(q, k, v, out, lse, causal, scale, bottom_right);
  return {out, lse};
}

void flash_attn_fwd_out(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                        const at::Tensor& out, const at::Tensor& lse, bool causal, double scale,
                        bool bottom_right) {
  check_qkv(q, k, v);
  check_head_dim(q);
  check_outputs(q, out, lse);
  launch(q, k, v, out, lse, causal, scale, bottom_right);
}

}  // namespace
}  // namespace sessionkit

TORCH_LIBRARY(sessionkit, m) {
  m.def(
      "flash_attn_fwd(Tensor q, Tensor k, Tensor v, bool causal, float scale, "
      "bool causal_bottom_right=False) -> (Tensor, Tensor)");
  m.def(
      "flash_attn_fwd_out(Tensor q, Tensor k, Tensor v, Tensor(a!) out, Tensor(b!) lse, bool causal, "
      "float scale, bool causal_bottom_right=False) -> ()");
  m.def("flash_attn_family(int device) -> str", &sessionkit::flash_attn_family);
  m.def("flash_attn_head_dims(int device) -> int[]", &sessionkit::flash_attn_head_dims);
  m.def("_stream_tile_counter(int device, int set=-1) -> int", &sessionkit::stream_tile_counter_value);
}

TORCH_LIBRARY_IMPL(sessionkit, CUDA, m) {
  m.impl("flash_attn_fwd", &sessionkit::flash_attn_fwd);
  m.impl("flash_attn_fwd_out", &sessionkit::flash_attn_fwd_out);
}

// Forward kernel instance: fp16, head dim 64, noncausal. One instance per file so that ninja
// compiles them in parallel.
#include "flash_fwd_kernel.cuh"

SESSIONKIT_FLASH_FWD_INSTANCE(flash_fwd_fp16_hdim64_noncausal, sessionkit::DType::kFloat16, 64, false)

// Forward kernel instance: bf16, head dim 64, causal. One instance per file so that ninja
// compiles them in parallel.
#include "flash_fwd_kernel.cuh"

SESSIONKIT_FLASH_FWD_INSTANCE(flash_fwd_bf16_hdim64_causal, sessionkit::DType::kBFloat16, 64, true)

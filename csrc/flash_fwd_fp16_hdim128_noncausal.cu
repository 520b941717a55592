// Forward kernel instance: fp16, head dim 128, noncausal. One instance per file so that ninja
// compiles them in parallel.
#include "flash_fwd_kernel.cuh"

SESSIONKIT_FLASH_FWD_INSTANCE(flash_fwd_fp16_hdim128_noncausal, sessionkit::DType::kFloat16, 128, false)

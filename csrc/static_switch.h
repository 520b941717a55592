// Compile-time dispatch: turn runtime dtype / causal values into template arguments (head dims are
// dispatched from the per-family tables in flash_api.cpp).
#pragma once

#include "flash_fwd.h"

#define SK_BOOL_SWITCH(COND, CONST_NAME, ...) \
  [&] {                                       \
    if (COND) {                               \
      constexpr bool CONST_NAME = true;       \
      return __VA_ARGS__();                   \
    } else {                                  \
      constexpr bool CONST_NAME = false;      \
      return __VA_ARGS__();                   \
    }                                         \
  }()

#define SK_DTYPE_SWITCH(IS_BF16, CONST_NAME, ...)                                \
  [&] {                                                                          \
    if (IS_BF16) {                                                               \
      constexpr ::sessionkit::DType CONST_NAME = ::sessionkit::DType::kBFloat16; \
      return __VA_ARGS__();                                                      \
    } else {                                                                     \
      constexpr ::sessionkit::DType CONST_NAME = ::sessionkit::DType::kFloat16;  \
      return __VA_ARGS__();                                                      \
    }                                                                            \
  }()

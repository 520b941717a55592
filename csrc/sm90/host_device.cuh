// SK_HOST_DEVICE: a function of plain arithmetic that both the host and the device call (the
// sm90 headers shared with host checks under tests/data, which build them with nvcc or a C++
// compiler).
#pragma once

#ifdef __CUDACC__
#define SK_HOST_DEVICE __host__ __device__
#else
#define SK_HOST_DEVICE
#endif

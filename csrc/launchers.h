// Launchers of the CUDA kernels, called by bindings.cpp. Each returns a cudaError_t as int
// (0 on success) and runs on the stream it is given. dtype: see dtypes.h.
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

#include "dtypes.h"

namespace fastgen {

int add_noise_cuda(int dtype, const void* x0, const void* noise, void* out, const int64_t* t, int64_t t_stride,
                   const float* abar, int64_t num_train, const int64_t* rng, int64_t batch, int64_t per_sample,
                   cudaStream_t stream);

}  // namespace fastgen

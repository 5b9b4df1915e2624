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

// One reverse-diffusion step (fastgen/ops/sampling_step.py). prev, noise, x0 and rng may be null
// (at most one of noise and rng is given); prev_dtype is dtype or kFloat32; clip is +inf for none.
int sampling_step_cuda(int dtype, const void* sample, const void* model, const void* prev, int prev_dtype,
                       const void* noise, void* out, float* x0, const int64_t* index, int64_t index_stride,
                       const float* coefs, int64_t num_rows, const int64_t* rng, float clip, int64_t batch,
                       int64_t per_sample, cudaStream_t stream);

}  // namespace fastgen

// Launchers of the CUDA kernels, called by bindings.cpp. Each returns a cudaError_t as int
// (0 on success) and runs on the stream it is given. dtype: see dtypes.h.
#pragma once
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#include "dtypes.h"

namespace fastgen {

int add_noise_cuda(int dtype, const void* x0, const void* noise, void* out, const int64_t* t, int64_t t_stride,
                   const float* abar, int64_t num_train, const int64_t* rng, int64_t batch, int64_t per_sample,
                   cudaStream_t stream);

// One reverse-diffusion step (fastgen/ops/sampling_step.py). history[0..3] are the slots h1..h4,
// each null (absent: zero, never read) or in dtype or kFloat32 (history_dtypes[s]); noise, state
// and rng may be null (at most one of noise and rng is given); clip is +inf for none.
int sampling_step_cuda(int dtype, const void* sample, const void* model, const void* const* history,
                       const int* history_dtypes, const void* noise, void* out, float* state, const int64_t* index,
                       int64_t index_stride, const float* coefs, int64_t num_rows, const int64_t* rng, float clip,
                       int64_t batch, int64_t per_sample, cudaStream_t stream);

// GroupNorm over channels_last storage (fastgen/ops/group_norm.py): x, y, dy, dx are (B, S, C)
// with C innermost, S = H * W; weight, bias (C,) and emb, scale, shift (B, C) share x's dtype and
// are null when absent; mean, rstd float32 (B, G); sum_dz, sum_dz_n, d_emb float32 (B, C).
// Workspace as CUB does it: with workspace null, the bytes needed go to *workspace_bytes and
// nothing runs; then call again, with the same arguments, given at least that many bytes.
int group_norm_forward_cuda(int dtype, const void* x, const void* weight, const void* bias, const void* emb,
                            const void* scale, const void* shift, void* y, float* mean, float* rstd, int64_t batch,
                            int64_t spatial, int64_t channels, int64_t groups, float eps, bool silu, void* workspace,
                            size_t* workspace_bytes, cudaStream_t stream);

int group_norm_backward_cuda(int dtype, const void* dy, const void* x, const void* weight, const void* bias,
                             const void* emb, const void* scale, const void* shift, const float* mean, const float* rstd,
                             void* dx, float* sum_dz, float* sum_dz_n, float* d_emb, int64_t batch, int64_t spatial,
                             int64_t channels, int64_t groups, bool silu, void* workspace, size_t* workspace_bytes,
                             cudaStream_t stream);

}  // namespace fastgen

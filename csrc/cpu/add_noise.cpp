// Forward noising on the CPU: x_t = sqrt(abar[t_b]) * x0 + sqrt(1 - abar[t_b]) * eps, one pass,
// OpenMP over the flat tensor. A C ABI (no torch headers): fastgen loads it with ctypes.
#include <stdint.h>
#include <math.h>

#include "../dtypes.h"
#include "parallel.h"
#include "philox_block.h"
#include "signature.h"

namespace fastgen {

template <typename T>
static void add_noise(const T* x0, const T* noise, T* out, const int64_t* t, int64_t t_stride, const float* abar,
                      int64_t num_train, const int64_t* rng, int64_t batch, int64_t per_sample) {
  const uint64_t seed = rng ? static_cast<uint64_t>(rng[0]) : 0, offset = rng ? static_cast<uint64_t>(rng[1]) : 0;
  for_each_sample_chunk(batch, per_sample, [&](int64_t b, int64_t begin, int64_t end) {
    const float a = abar[clamp_index(t[b * t_stride], num_train)];
    const float signal = sqrtf(a), noise_scale = sqrtf(1.0f - a);
    if (noise) {
#pragma omp simd
      for (int64_t i = begin; i < end; ++i) out[i] = from_float<T>(signal * to_float(x0[i]) + noise_scale * to_float(noise[i]));
    } else {
      // eps a block at a time into L1, then the same fused loop: the generator vectorises (philox_block.h)
      float eps[kNormalBlock];
      for (int64_t i = begin; i < end; i += kNormalBlock) {
        const int n = static_cast<int>(end - i < kNormalBlock ? end - i : kNormalBlock);
        philox_normal_block(seed, offset + static_cast<uint64_t>(i), n, eps);
#pragma omp simd
        for (int j = 0; j < n; ++j) out[i + j] = from_float<T>(signal * to_float(x0[i + j]) + noise_scale * eps[j]);
      }
    }
  }, noise ? kParallelGrain : kParallelGrainNoise);
}

}  // namespace fastgen

using namespace fastgen;

extern "C" int fastgen_add_noise_cpu(int dtype, const void* x0, const void* noise, void* out, const int64_t* t,
                                     int64_t t_stride, const float* abar, int64_t num_train, const int64_t* rng,
                                     int64_t batch, int64_t per_sample) {
  switch (dtype) {
    case kFloat32: add_noise(static_cast<const float*>(x0), static_cast<const float*>(noise), static_cast<float*>(out), t, t_stride, abar, num_train, rng, batch, per_sample); return 0;
    case kFloat16: add_noise(static_cast<const Half*>(x0), static_cast<const Half*>(noise), static_cast<Half*>(out), t, t_stride, abar, num_train, rng, batch, per_sample); return 0;
    case kBFloat16: add_noise(static_cast<const BFloat16*>(x0), static_cast<const BFloat16*>(noise), static_cast<BFloat16*>(out), t, t_stride, abar, num_train, rng, batch, per_sample); return 0;
    default: return 1;
  }
}

FASTGEN_EXPORT_SIGNATURE(fastgen_add_noise_cpu)

// Forward noising on the CPU: x_t = sqrt(abar[t_b]) * x0 + sqrt(1 - abar[t_b]) * eps, one pass,
// OpenMP over the flat tensor. A C ABI (no torch headers): fastgen loads it with ctypes.
#include <stdint.h>
#include <math.h>

#include <type_traits>

#include "../dtypes.h"
#include "parallel.h"
#include "philox_block.h"
#include "signature.h"

namespace fastgen {

constexpr int64_t kTile = 512;  // float16 elements per pass with given noise: float32 tiles that stay in L1

// out = signal * x0 + noise_scale * eps over n elements, eps float32. float16 goes through float32
// tiles, where the F16C builds convert 8 halves an instruction (dtypes.h floats_of); float32 and
// bfloat16 (a shift each way, already vectorised) run fused: the tiles made bfloat16 15% slower
// (175 vs 152 us at 64x3x64x64, AVX-512, one thread).
template <typename T>
inline void noising(const T* x0, const float* eps, T* out, float signal, float noise_scale, int64_t n) {
  if constexpr (std::is_same_v<T, Half>) {
    alignas(64) float xs[kTile], os[kTile];
    const float* x = floats_of(x0, n, xs);
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) os[j] = signal * x[j] + noise_scale * eps[j];
    store_floats(os, n, out);
  } else {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) out[j] = from_float<T>(signal * to_float(x0[j]) + noise_scale * eps[j]);
  }
}

template <typename T>
static void add_noise(const T* x0, const T* noise, T* out, const int64_t* t, int64_t t_stride, const float* abar,
                      int64_t num_train, const int64_t* rng, int64_t batch, int64_t per_sample) {
  const uint64_t seed = rng ? static_cast<uint64_t>(rng[0]) : 0, offset = rng ? static_cast<uint64_t>(rng[1]) : 0;
  for_each_sample_chunk(batch, per_sample, [&](int64_t b, int64_t begin, int64_t end) {
    const float a = abar[clamp_index(t[b * t_stride], num_train)];
    const float signal = sqrtf(a), noise_scale = sqrtf(1.0f - a);
    alignas(64) float eps[kTile];
    if (noise && std::is_same_v<T, Half>) {
      for (int64_t i = begin; i < end; i += kTile) {
        const int64_t n = end - i < kTile ? end - i : kTile;
        noising(x0 + i, floats_of(noise + i, n, eps), out + i, signal, noise_scale, n);
      }
    } else if (noise) {
#pragma omp simd
      for (int64_t i = begin; i < end; ++i) out[i] = from_float<T>(signal * to_float(x0[i]) + noise_scale * to_float(noise[i]));
    } else {
      // eps a block at a time into L1, then the same fused loop: the generator vectorises (philox_block.h)
      for (int64_t i = begin; i < end; i += kNormalBlock) {
        const int n = static_cast<int>(end - i < kNormalBlock ? end - i : kNormalBlock);
        philox_normal_block(seed, offset + static_cast<uint64_t>(i), n, eps);
        noising(x0 + i, eps, out + i, signal, noise_scale, n);
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

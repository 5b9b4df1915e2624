// The in-kernel Gaussian shared by the CUDA and the C++ CPU kernels: Philox4x32-10 + Box-Muller,
// the same numbers as fastgen/_rng.py (philox_normal_ref) and kernels/philox.py.
// Needs no torch headers, so nvcc and g++ compile it anywhere.
#pragma once
#include <stdint.h>
#include <math.h>

#ifdef __CUDACC__
#define FG_HD __host__ __device__ __forceinline__
#else
#define FG_HD inline
#endif

namespace fastgen {

FG_HD uint32_t mulhi32(uint32_t a, uint32_t b) {
#ifdef __CUDA_ARCH__
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

// z for stream position `counter` under `seed`. Positions 4p .. 4p + 3 share the Philox counter p
// (key (seed lo, seed hi), counter (lo(p), hi(p), 0, 0)): words (c0, c1) serve 4p and 4p + 1, (c2, c3)
// 4p + 2 and 4p + 3; Box-Muller's R cos(theta) for the even position, R sin(theta) for the odd one.
FG_HD float philox_normal(uint64_t seed, uint64_t counter) {
  const uint64_t call = counter >> 2;
  uint32_t c0 = static_cast<uint32_t>(call), c1 = static_cast<uint32_t>(call >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    const uint32_t hi0 = mulhi32(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
    const uint32_t hi1 = mulhi32(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  const bool second = (counter & 2) != 0;
  const float u1 = (static_cast<float>((second ? c2 : c0) >> 8) + 0.5f) * 5.9604644775390625e-08f;  // 2^-24
  const float u2 = (static_cast<float>((second ? c3 : c1) >> 8) + 0.5f) * 5.9604644775390625e-08f;
  const float angle = 6.283185307179586f * u2;
  return sqrtf(-2.0f * logf(u1)) * ((counter & 1) ? sinf(angle) : cosf(angle));
}

}  // namespace fastgen

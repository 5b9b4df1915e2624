// Element types the kernels read and write, with float32 arithmetic in between.
// dtype codes match fastgen/_native_dtypes.py: 0 float32, 1 float16, 2 bfloat16.
#pragma once
#include <stdint.h>
#include <string.h>

namespace fastgen {

enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

#ifndef __CUDACC__
// Host-side half/bfloat16 <-> float, round to nearest even (the CPU kernels need no CUDA types).
struct Half { uint16_t bits; };
struct BFloat16 { uint16_t bits; };

inline float to_float(float x) { return x; }
inline float to_float(Half h) { _Float16 v; memcpy(&v, &h.bits, 2); return static_cast<float>(v); }
inline float to_float(BFloat16 b) { uint32_t u = static_cast<uint32_t>(b.bits) << 16; float f; memcpy(&f, &u, 4); return f; }

template <typename T> inline T from_float(float x);
template <> inline float from_float<float>(float x) { return x; }
template <> inline Half from_float<Half>(float x) { _Float16 v = static_cast<_Float16>(x); Half h; memcpy(&h.bits, &v, 2); return h; }
template <> inline BFloat16 from_float<BFloat16>(float x) {
  uint32_t u; memcpy(&u, &x, 4);
  BFloat16 b;
  if ((u & 0x7F800000u) == 0x7F800000u && (u & 0x007FFFFFu)) { b.bits = static_cast<uint16_t>((u >> 16) | 0x40); return b; }  // keep NaN a NaN
  u += 0x7FFFu + ((u >> 16) & 1u);
  b.bits = static_cast<uint16_t>(u >> 16);
  return b;
}
#endif

}  // namespace fastgen

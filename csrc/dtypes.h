// Element types the kernels read and write, with float32 arithmetic in between.
// dtype codes match fastgen/_native_dtypes.py: 0 float32, 1 float16, 2 bfloat16.
#pragma once
#include <stdint.h>
#include <string.h>

#ifndef __CUDACC__
#include <type_traits>
#ifdef __F16C__
#include <immintrin.h>
#endif
#endif

namespace fastgen {

enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

#ifndef __CUDACC__
// Host-side half/bfloat16 <-> float, round to nearest even (the CPU kernels need no CUDA types).
// Every element conversion is integer and float32 arithmetic with selects, no branch and no library
// call, so an `omp simd` loop of them vectorises at the width of whichever ISA the library is built
// for (setup.py builds one per x86-64 level). A `_Float16` cast would not: GCC 12 lowers it to
// __extendhfsf2 / __truncsfhf2 calls without F16C and to one scalar vcvtph2ps / vcvtps2ph per
// element with it, and never vectorises the loop around either. The kernels convert 16-bit
// operands a tile at a time (floats_of / store_floats below), where the F16C builds use the
// vector instructions: 8 halves each, 1.6-2.3x (to float) and 3-5x (to half) faster than the
// arithmetic over 786k elements (measured on a Zen 4 core, x86-64-v3 and -v4 builds).
struct Half { uint16_t bits; };
struct BFloat16 { uint16_t bits; };

namespace detail {

inline float bits_to_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
inline uint32_t float_to_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

// IEEE half -> float, exact for every one of the 65536 inputs (M. Maratyszcza's FP16 library, as
// in c10::detail::fp16_ieee_to_fp32_value). A normal half (and inf / NaN) is re-biased by moving
// its exponent and mantissa into place and scaling by 2^-112; a subnormal one is its mantissa put
// under the exponent of 0.5, minus 0.5. Both paths are computed and the exponent picks one.
inline float half_bits_to_float(uint16_t h) {
  const uint32_t w = static_cast<uint32_t>(h) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;  // exponent and mantissa, sign shifted out
  const float normal = bits_to_float((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  const float subnormal = bits_to_float((two_w >> 17) | (126u << 23)) - 0.5f;
  const uint32_t magnitude = two_w < (1u << 27) ? float_to_bits(subnormal) : float_to_bits(normal);
  return bits_to_float(sign | magnitude);
}

// float -> IEEE half, round to nearest even, overflow to inf, half subnormals exact (the same
// library, as c10::detail::fp16_ieee_from_fp32_value): the float adder does the rounding. |x| is
// scaled by 2^112 * 2^-110 (so that what overflows half is inf), then added to a power of two
// whose ulp is the half ulp at x's exponent (at least the subnormal step 2^-24); the sum's
// exponent and top mantissa bits are the half's. A NaN keeps its sign and top payload bits and is
// made quiet, as F16C's vcvtps2ph does (torch's vectorised .half() is that instruction).
inline uint16_t float_to_half_bits(float x) {
  const uint32_t w = float_to_bits(x);
  const uint32_t shl1_w = w + w;  // exponent and mantissa, sign shifted out
  const uint32_t sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xFF000000u;
  bias = bias < 0x71000000u ? 0x71000000u : bias;  // not below the half subnormal step
  const float scaled = (__builtin_fabsf(x) * 0x1.0p+112f) * 0x1.0p-110f;
  const uint32_t bits = float_to_bits(bits_to_float((bias >> 1) + 0x07800000u) + scaled);
  const uint32_t magnitude = ((bits >> 13) & 0x7C00u) + (bits & 0x0FFFu);
  const uint32_t nan = 0x7E00u | ((w >> 13) & 0x03FFu);
  return static_cast<uint16_t>((sign >> 16) | (shl1_w > 0xFF000000u ? nan : magnitude));
}

}  // namespace detail

inline float to_float(float x) { return x; }
inline float to_float(Half h) { return detail::half_bits_to_float(h.bits); }
inline float to_float(BFloat16 b) { return detail::bits_to_float(static_cast<uint32_t>(b.bits) << 16); }

template <typename T> inline T from_float(float x);
template <> inline float from_float<float>(float x) { return x; }
template <> inline Half from_float<Half>(float x) { return Half{detail::float_to_half_bits(x)}; }
template <> inline BFloat16 from_float<BFloat16>(float x) {
  uint32_t u = detail::float_to_bits(x);
  BFloat16 b;
  if ((u & 0x7F800000u) == 0x7F800000u && (u & 0x007FFFFFu)) { b.bits = static_cast<uint16_t>((u >> 16) | 0x40); return b; }  // keep NaN a NaN
  u += 0x7FFFu + ((u >> 16) & 1u);
  b.bits = static_cast<uint16_t>(u >> 16);
  return b;
}

// The n elements at src as float32: src itself for float, else converted into buf (n <= its size).
template <typename T>
inline const float* floats_of(const T* __restrict__ src, int64_t n, float* __restrict__ buf) {
  int64_t j = 0;
#ifdef __F16C__
  if constexpr (std::is_same_v<T, Half>) {  // Half: vcvtph2ps, bit-identical to to_float
    for (; j + 8 <= n; j += 8)
      _mm256_storeu_ps(buf + j, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + j))));
  }
#endif
#pragma omp simd
  for (int64_t i = j; i < n; ++i) buf[i] = to_float(src[i]);
  return buf;
}
template <> inline const float* floats_of<float>(const float* src, int64_t, float*) { return src; }

// dst[i] = from_float<T>(src[i]) for i < n.
template <typename T>
inline void store_floats(const float* __restrict__ src, int64_t n, T* __restrict__ dst) {
  int64_t j = 0;
#ifdef __F16C__
  if constexpr (std::is_same_v<T, Half>) {  // Half: vcvtps2ph, round to nearest even
    for (; j + 8 <= n; j += 8)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + j),
                       _mm256_cvtps_ph(_mm256_loadu_ps(src + j), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
#endif
#pragma omp simd
  for (int64_t i = j; i < n; ++i) dst[i] = from_float<T>(src[i]);
}
#endif

}  // namespace fastgen

// The in-kernel Gaussian of csrc/philox.h for the CPU kernels, a block of stream positions at a time.
//
// philox_normal() there calls scalar libm logf / cosf / sinf, which cost ~20 ns an element and keep
// the loop from vectorising: generating eps was 25x slower than reading it from memory. Here every
// lane runs one Philox call and the same branch-free code (32x32->64 multiplies, then a polynomial
// log and sine / cosine) and yields four normals, so GCC/Clang vectorise the loop at -O3.
//
// The numbers are those of philox_normal() and fastgen/_rng.py up to a few float32 ulp: the same
// Philox bits and uniforms; log, sin and cos agree with libm to ~1e-7. Every CPU kernel (noising,
// loss forward and backward, sampling step) draws through this one function, so the eps that the
// loss regenerates is bit-identical to the eps of the noising on the CPU.
#pragma once
#include <stdint.h>
#include <string.h>

#include "../dtypes.h"  // detail::bits_to_float / float_to_bits

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace fastgen {

constexpr int kPhiloxCalls = 32;  // Philox calls per block: 2 AVX-512 registers of 32-bit lanes
// normals one block serves: it starts at the multiple of 4 at or below the first position asked for
constexpr int kNormalBlock = 4 * kPhiloxCalls - 3;

namespace detail {

// log(x) for a positive normal float x. Range reduction x = m * 2^e with m in [sqrt(1/2), sqrt(2)),
// then the degree-9 minimax polynomial of Cephes' logf (S. L. Moshier, Cephes Math Library 2.x),
// relative error ~1e-7 over the range, log(1) = 0 exactly.
inline float log_positive(float x) {
  const uint32_t bits = float_to_bits(x);
  float e = static_cast<float>(static_cast<int32_t>(bits >> 23) - 126);  // x = m * 2^e, m in [0.5, 1)
  float m = bits_to_float((bits & 0x007FFFFFu) | 0x3F000000u);
  const bool low = m < 0.707106781186547524f;
  e = low ? e - 1.0f : e;
  const float f = (low ? m + m : m) - 1.0f;
  const float f2 = f * f;
  float p = 7.0376836292e-2f;
  p = p * f - 1.1514610310e-1f;
  p = p * f + 1.1676998740e-1f;
  p = p * f - 1.2420140846e-1f;
  p = p * f + 1.4249322787e-1f;
  p = p * f - 1.6668057665e-1f;
  p = p * f + 2.0000714765e-1f;
  p = p * f - 2.4999993993e-1f;
  p = p * f + 3.3333331174e-1f;
  float y = p * f * f2 - 2.12194440e-4f * e - 0.5f * f2;
  return (f + y) + 0.693359375f * e;  // ln 2 split in two for an exact e * ln2_hi
}

// sin and cos of 2 pi u for |u| < 2^22, with u in turns so the range reduction is exact: r = u - round(u)
// in [-1/2, 1/2], quadrant q = round(4 r), x = 2 pi (r - q/4) in [-pi/4, pi/4], and the Cephes
// sinf / cosf polynomials on that interval (absolute error ~6e-8).
inline void sincos_two_pi(float u, float& sin_out, float& cos_out) {
  const float kRound = 12582912.0f;  // 1.5 * 2^23: (v + kRound) - kRound rounds v to an integer
  const float r = u - ((u + kRound) - kRound);
  const float q = (4.0f * r + kRound) - kRound;
  const float x = 6.283185307179586f * (r - 0.25f * q);
  const float x2 = x * x;
  const float s = x + x * x2 * ((-1.9515295891e-4f * x2 + 8.3321608736e-3f) * x2 - 1.6666654611e-1f);
  const float c = 1.0f - 0.5f * x2 + x2 * x2 * ((2.443315711809948e-5f * x2 - 1.388731625493765e-3f) * x2 + 4.166664568298827e-2f);
  // angle x + q pi/2: q = 0 -> (s, c), 1 -> (c, -s), -1 -> (-c, s), +-2 -> (-s, -c)
  // (no short-circuit || here: each select must stay a blend, or AVX2 builds stop vectorising)
  const float q_abs = __builtin_fabsf(q);
  const bool odd = q_abs == 1.0f, half_turn = q_abs == 2.0f;
  const float sin_base = odd ? c : s, cos_base = odd ? s : c;
  sin_out = (half_turn | (q == -1.0f)) ? -sin_base : sin_base;
  cos_out = (half_turn | (q == 1.0f)) ? -cos_base : cos_base;
}

// Box-Muller of two Philox words: u = (w >> 8 + 0.5) * 2^-24 (via int32: exact, and it vectorises),
// in (0, 1]; the top values round to 1.0 (z = 0) here as in every implementation.
inline void box_muller(uint32_t w_radius, uint32_t w_angle, float& z_cos, float& z_sin) {
  const float u1 = (static_cast<float>(static_cast<int32_t>(w_radius >> 8)) + 0.5f) * 5.9604644775390625e-08f;
  const float u2 = (static_cast<float>(static_cast<int32_t>(w_angle >> 8)) + 0.5f) * 5.9604644775390625e-08f;
  const float radius2 = -2.0f * log_positive(u1);
  const float radius = __builtin_sqrtf(radius2 > 0.0f ? radius2 : 0.0f);
  float s, c;
  sincos_two_pi(u2, s, c);
  z_cos = radius * c;
  z_sin = radius * s;
}

}  // namespace detail

// Philox4x32-10 calls first_call + j for j < kPhiloxCalls under key (key0, key1), counter
// (lo(call), hi(call), 0, 0): the four output words of call j in w[0..3][j].
inline void philox_calls(uint64_t first_call, uint32_t key0, uint32_t key1, uint32_t (*w)[kPhiloxCalls]) {
#if defined(__AVX512F__)
  // Sixteen calls per register. A 32x32 -> 64 multiply is vpmuludq on the even lanes; the odd lanes
  // go through a 64-bit shift and a second vpmuludq, and a masked blend joins the high halves.
  // (The portable loop below makes GCC widen every lane to 64 bits: 2.5x more instructions.)
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(0xD2511F53u)), m1 = _mm512_set1_epi32(static_cast<int>(0xCD9E8D57u));
  auto mulhi = [](__m512i a, __m512i m) {
    const __m512i even = _mm512_mul_epu32(a, m), odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
    return _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
  };
  for (int base = 0; base < kPhiloxCalls; base += 16) {
    const uint64_t first = first_call + static_cast<uint64_t>(base);
    const __m512i first_lo = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(first)));
    __m512i c0 = _mm512_add_epi32(first_lo, lane);
    // the high word carries where the low word wrapped around
    const __mmask16 carry = _mm512_cmplt_epu32_mask(c0, first_lo);
    const __m512i first_hi = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(first >> 32)));
    __m512i c1 = _mm512_mask_add_epi32(first_hi, carry, first_hi, _mm512_set1_epi32(1));
    __m512i c2 = _mm512_setzero_si512(), c3 = _mm512_setzero_si512();
    uint32_t k0 = key0, k1 = key1;
    for (int round = 0; round < 10; ++round) {
      const __m512i hi0 = mulhi(c0, m0), lo0 = _mm512_mullo_epi32(c0, m0);
      const __m512i hi1 = mulhi(c2, m1), lo1 = _mm512_mullo_epi32(c2, m1);
      // 0x96: a ^ b ^ c in one instruction
      const __m512i n0 = _mm512_ternarylogic_epi32(hi1, c1, _mm512_set1_epi32(static_cast<int>(k0)), 0x96);
      const __m512i n2 = _mm512_ternarylogic_epi32(hi0, c3, _mm512_set1_epi32(static_cast<int>(k1)), 0x96);
      c1 = lo1;
      c3 = lo0;
      c0 = n0;
      c2 = n2;
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    _mm512_storeu_si512(w[0] + base, c0);
    _mm512_storeu_si512(w[1] + base, c1);
    _mm512_storeu_si512(w[2] + base, c2);
    _mm512_storeu_si512(w[3] + base, c3);
  }
#else
#pragma omp simd
  for (int j = 0; j < kPhiloxCalls; ++j) {
    const uint64_t call = first_call + static_cast<uint64_t>(j);
    uint32_t c0 = static_cast<uint32_t>(call), c1 = static_cast<uint32_t>(call >> 32), c2 = 0, c3 = 0;
    uint32_t k0 = key0, k1 = key1;
#pragma GCC unroll 10
    for (int round = 0; round < 10; ++round) {
      const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0, p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
      const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0, n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
      c1 = static_cast<uint32_t>(p1);
      c3 = static_cast<uint32_t>(p0);
      c0 = n0;
      c2 = n2;
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    w[0][j] = c0;
    w[1][j] = c1;
    w[2][j] = c2;
    w[3][j] = c3;
  }
#endif
}

// z[j] = the standard normal at stream position `position + j` under `seed`, for j < n <= kNormalBlock.
// Positions 4p .. 4p + 3 come from Philox4x32-10 call p (key (seed lo, seed hi), counter (lo(p),
// hi(p), 0, 0)): its words (r0, r1) and (r2, r3) give two pairs of 24-bit uniforms, and each pair
// Box-Muller's R cos(theta), R sin(theta).
inline void philox_normal_block(uint64_t seed, uint64_t position, int n, float* __restrict__ z) {
  alignas(64) uint32_t w[4][kPhiloxCalls];
  philox_calls(position >> 2, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32), w);
  float normals[4 * kPhiloxCalls];  // positions 4 * (position >> 2) + k
#pragma omp simd
  for (int j = 0; j < kPhiloxCalls; ++j) {
    detail::box_muller(w[0][j], w[1][j], normals[4 * j], normals[4 * j + 1]);
    detail::box_muller(w[2][j], w[3][j], normals[4 * j + 2], normals[4 * j + 3]);
  }
  memcpy(z, normals + (position & 3), static_cast<size_t>(n) * sizeof(float));
}

}  // namespace fastgen

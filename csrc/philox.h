// The in-kernel Gaussian of the CUDA kernels: Philox4x32-10 + Box-Muller, the same numbers as
// fastgen/_rng.py (philox_normal_ref) and kernels/philox.py. (The C++ CPU kernels draw the same
// stream with csrc/cpu/philox_block.h.) Needs no torch headers, so nvcc and g++ compile it anywhere;
// tests/test_add_noise.py compiles it with g++ and compares it with the reference.
//
// Stream positions 4p .. 4p + 3 share the Philox counter p (key (seed lo, seed hi), counter
// (lo(p), hi(p), 0, 0)): words (c0, c1) give Box-Muller's pair for 4p (R cos) and 4p + 1 (R sin),
// (c2, c3) the pair for 4p + 2 and 4p + 3. philox_normal4() returns all four, so a thread that
// owns four consecutive positions pays one Philox call, two logs and two sin/cos pairs for them.
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

// Four normals: v[j] is the one at stream position 4 * call + j (or at position + j, see below).
struct Normal4 { float v[4]; };

// The top 24 bits of a 32-bit word as a float in (0, 1): ((w >> 8) + 0.5) / 2^24, exact.
FG_HD float unit_interval(uint32_t w) { return (static_cast<float>(w >> 8) + 0.5f) * 5.9604644775390625e-08f; }

// Box-Muller's pair (R cos theta, R sin theta) from the words (radius, angle): one log, one sin/cos.
FG_HD void box_muller(uint32_t w_radius, uint32_t w_angle, float& even, float& odd) {
  const float radius = sqrtf(-2.0f * logf(unit_interval(w_radius)));
  const float angle = 6.283185307179586f * unit_interval(w_angle);
  float s, c;
#ifdef __CUDA_ARCH__
  sincosf(angle, &s, &c);  // one argument reduction for both
#else
  s = sinf(angle);
  c = cosf(angle);
#endif
  even = radius * c;
  odd = radius * s;
}

// Philox4x32-10 of counter (lo(call), hi(call), 0, 0) under key (seed lo, seed hi): words c0..c3.
struct Words4 { uint32_t c0, c1, c2, c3; };
FG_HD Words4 philox4x32(uint64_t seed, uint64_t call) {
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
  return Words4{c0, c1, c2, c3};
}

// The four normals of Philox counter `call`: positions 4 * call .. 4 * call + 3.
FG_HD Normal4 philox_normal4(uint64_t seed, uint64_t call) {
  const Words4 r = philox4x32(seed, call);
  Normal4 z;
  box_muller(r.c0, r.c1, z.v[0], z.v[1]);
  box_muller(r.c2, r.c3, z.v[2], z.v[3]);
  return z;
}

// The normals at positions position .. position + 3, for any position: one Philox call when
// position % 4 == 0 (offsets advance by numel, so this is the usual case), else two, taking lanes
// shift .. 3 of counter p and 0 .. shift - 1 of counter p + 1. The lanes are picked by selects on
// constant indices so that nothing goes to local memory. `shift` is uniform over a launch in every
// caller (their four-element groups start at flat indices that are multiples of 4), so the branch
// does not diverge.
FG_HD Normal4 philox_normal4_at(uint64_t seed, uint64_t position) {
  const Normal4 a = philox_normal4(seed, position >> 2);
  const uint32_t shift = static_cast<uint32_t>(position & 3);
  if (shift == 0) return a;
  const Normal4 b = philox_normal4(seed, (position >> 2) + 1);
  const float w[8] = {a.v[0], a.v[1], a.v[2], a.v[3], b.v[0], b.v[1], b.v[2], b.v[3]};
  Normal4 z;
  z.v[0] = shift == 1 ? w[1] : (shift == 2 ? w[2] : w[3]);
  z.v[1] = shift == 1 ? w[2] : (shift == 2 ? w[3] : w[4]);
  z.v[2] = shift == 1 ? w[3] : (shift == 2 ? w[4] : w[5]);
  z.v[3] = shift == 1 ? w[4] : (shift == 2 ? w[5] : w[6]);
  return z;
}

// The normal at one stream position: a whole Philox call for one element. Only for the few
// elements (head and tail of a vectorised chunk, under 2 * 16 bytes) that no four-element group covers.
FG_HD float philox_normal(uint64_t seed, uint64_t position) {
  const Words4 r = philox4x32(seed, position >> 2);
  const bool second = (position & 2) != 0;
  float even, odd;
  box_muller(second ? r.c2 : r.c0, second ? r.c3 : r.c1, even, odd);
  return (position & 1) ? odd : even;
}

}  // namespace fastgen

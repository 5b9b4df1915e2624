// One fused reverse-diffusion step on the CPU (see fastgen/ops/sampling_step.py), one pass over
// memory, OpenMP over (sample, chunk) jobs. Per sample b with row c = coefs[index[b]]:
//   x0    = clamp(c.PX * x + c.PM * m, -clip, clip)
//   eps   = c.EX * x + c.EM * m + c.E0 * x0
//   out   = c.OX * x + c.O0 * x0 + c.OE * eps + c.H1 * h1 + ... + c.H4 * h4 + c.SZ * z
//   state = c.SX * x + c.S0 * x0 + c.SE * eps            (float32, only when asked for)
// eps is linear in (x, m, x0), so the loop evaluates the same update with eps folded into the
// row once per job (in double, then rounded):
//   out   = A * x + B * m + C * x0 + ...,  A = OX + OE EX, B = OE EM, C = O0 + OE E0
//   state = SA * x + SB * m + SC * x0,      SA = SX + SE EX, SB = SE EM, SC = S0 + SE E0
// 5 to 8 products per element instead of 11 (measured: the loop was compute-bound, ~2x slower
// than a copy-speed pass on a 2-core AVX-512 machine), and x0 is not formed at all when neither
// out nor state reads it (C = SC = 0: flow matching, Euler without pred_original_sample). Where
// eps is unused or is m itself (EM = 1, EX = E0 = 0: the epsilon-prediction rows) the folded
// coefficients are the row's own and the result is the stepwise one; otherwise the two differ by
// float32 rounding only. A folded coefficient of 0 still contributes exactly 0.
// A job walks its range in tiles of kTile elements. One fused loop over x, m, the first present
// history slot (and z) writes out directly when at most one slot is present (DDPM, DDIM,
// DPM-Solver++ 2M, KDPM2); with more, it writes a float32 tile that stays in L1
// and each further slot adds its term in a loop of its own (the last one converts and stores).
// So every loop is branch-free and `omp simd` friendly, each slot may be float32 or the sample's
// dtype without a template per combination, and an absent slot costs nothing and is never read.
// A 16-bit sample's tile is first converted to float32 tiles (tile_16bit), so the loops above run
// on float32 only and the conversions are vector instructions where the library has F16C.
// A C ABI (no torch headers): fastgen loads it with ctypes (signature in fastgen/_cpu_signatures.py).
#include <stdint.h>
#include <math.h>

#include <type_traits>

#include "../dtypes.h"
#include "parallel.h"
#include "philox_block.h"
#include "signature.h"

namespace fastgen {
namespace {

constexpr int kCoefs = 16;  // NUM_COEFS
constexpr int kMaxHistory = 4;
enum Col : int { PX, PM, EX, EM, E0, OX, O0, OE, H1, H2, H3, H4, SZ, SX, S0, SE };

// A coefficient with the mask that makes c * v exactly 0 where c == 0: an operand the row does not
// use may be infinite (a float16 overflow in the model output), and 0 * inf = NaN would poison a
// result diffusers keeps finite. The mask (all ones, or zero where c == 0) is ANDed into v's bits:
// an integer AND vectorises everywhere, while the select `c != 0 ? c * v : 0` left GCC 12 -O3 a
// scalar loop with a branch per term in some instantiations (DPM-Solver++ 2M with state: 1.3 ms
// instead of ~100 us at 64x3x64x64).
struct Coef {
  float c;
  uint32_t keep;
  Coef(float value = 0.0f) : c(value), keep(value != 0.0f ? 0xFFFFFFFFu : 0u) {}
  bool nonzero() const { return keep != 0u; }
};

inline float term(const Coef& k, float v) { return k.c * detail::bits_to_float(detail::float_to_bits(v) & k.keep); }

// A row in the form the loop evaluates (eps folded in, see the top of this file).
struct Row {
  Coef px, pm;      // x0 = px x + pm m, clamped
  Coef a, b, c;     // out = a x + b m + c x0 (+ history + sz z)
  Coef sa, sb, sc;  // state = sa x + sb m + sc x0
  float sz;
  bool x0;           // whether out or state reads x0

  Row(const float* r, bool state) {
    const double ex = r[EX], em = r[EM], e0 = r[E0], oe = r[OE], se = state ? r[SE] : 0.0;
    px = r[PX]; pm = r[PM]; sz = r[SZ];
    a = fold(r[OX], oe, ex); b = fold(0.0f, oe, em); c = fold(r[O0], oe, e0);
    sa = state ? fold(r[SX], se, ex) : 0.0f; sb = state ? fold(0.0f, se, em) : 0.0f;
    sc = state ? fold(r[S0], se, e0) : 0.0f;
    x0 = c.nonzero() || sc.nonzero();
  }
  // own + via * e, exactly `own` where the eps path is unused (via or e zero)
  static float fold(float own, double via, double e) {
    return (via == 0.0 || e == 0.0) ? own : static_cast<float>(own + via * e);
  }
};

struct None {};  // the element type of an absent operand: the loop compiles it away


// The fused loop over [0, n): x, m, one history slot h weighted by hc (P = None when absent) and
// z (N = None when absent) -> out (O: the sample's dtype T, or float32 for a tile that more
// history terms are still added to) and optionally state; kX0: whether x0 is formed (Row::x0).
// `clip` is +inf without clipping: the select then keeps every value (NaN and inf included), so
// one branch-free loop serves both.
template <typename T, typename P, typename N, typename O, bool kState, bool kX0>
inline void core(const Row& c, float clip, const T* __restrict__ x, const T* __restrict__ m,
                 const P* __restrict__ h, Coef hc, const N* __restrict__ z, O* __restrict__ out,
                 float* __restrict__ state, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float xv = to_float(x[i]), mv = to_float(m[i]);
    float o = term(c.a, xv) + term(c.b, mv);
    float s = 0.0f;
    if constexpr (kState) s = term(c.sa, xv) + term(c.sb, mv);
    if constexpr (kX0) {
      float x0 = term(c.px, xv) + term(c.pm, mv);
      x0 = x0 < -clip ? -clip : (x0 > clip ? clip : x0);
      o += term(c.c, x0);
      if constexpr (kState) s += term(c.sc, x0);
    }
    if constexpr (!std::is_same_v<P, None>) o += term(hc, to_float(h[i]));
    if constexpr (!std::is_same_v<N, None>) o += c.sz * to_float(z[i]);
    out[i] = from_float<O>(o);
    if constexpr (kState) state[i] = s;
  }
}

// acc += coef * h over a tile.
template <typename P>
inline void add_history(float* __restrict__ acc, const P* __restrict__ h, Coef coef, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) acc[i] += term(coef, to_float(h[i]));
}

// out = acc + coef * h over a tile, in the sample's dtype: the last history slot.
template <typename T, typename P>
inline void add_history_store(const float* __restrict__ acc, const P* __restrict__ h, Coef coef,
                              T* __restrict__ out, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = from_float<T>(acc[i] + term(coef, to_float(h[i])));
}

// The present history slots, in slot order: pointer, whether it is float32 (else the sample's
// dtype), and which column weighs it.
struct History {
  const void* ptr[kMaxHistory];
  bool f32[kMaxHistory];
  int col[kMaxHistory];
  int count;
};

struct Args {
  const void* sample; const void* model; History hist; const void* noise; void* out; float* state;
  const int64_t* index; int64_t index_stride; const float* coefs; int64_t num_rows; const int64_t* rng;
  float clip; int64_t batch; int64_t per_sample;
};

constexpr int64_t kTile = 512;  // 2 KiB of float32 per buffer: acc and z stay in L1

// The fused loop with the first present history slot (element type P) -> out, or -> the float32
// tile acc when more slots follow.
template <typename T, typename P, typename N, bool kState>
inline void first(const Args& a, const Row& c, const float* r, const N* z, int64_t at, int64_t k, float* acc) {
  const T* x = static_cast<const T*>(a.sample) + at;
  const T* m = static_cast<const T*>(a.model) + at;
  float* state = kState ? a.state + at : nullptr;
  const History& h = a.hist;
  const P* h0 = h.count ? static_cast<const P*>(h.ptr[0]) + at : nullptr;
  const Coef hc(h.count ? r[h.col[0]] : 0.0f);
  if (h.count <= 1) {
    if (c.x0) core<T, P, N, T, kState, true>(c, a.clip, x, m, h0, hc, z, static_cast<T*>(a.out) + at, state, k);
    else core<T, P, N, T, kState, false>(c, a.clip, x, m, h0, hc, z, static_cast<T*>(a.out) + at, state, k);
  } else {
    if (c.x0) core<T, P, N, float, kState, true>(c, a.clip, x, m, h0, hc, z, acc, state, k);
    else core<T, P, N, float, kState, false>(c, a.clip, x, m, h0, hc, z, acc, state, k);
  }
}

// One tile [at, at + k): the fused loop, then the terms of the further present history slots.
template <typename T, typename N, bool kState>
inline void tile(const Args& a, const Row& c, const float* r, const N* z, int64_t at, int64_t k, float* acc) {
  const History& h = a.hist;
  if (h.count == 0) first<T, None, N, kState>(a, c, r, z, at, k, acc);
  else if (h.f32[0]) first<T, float, N, kState>(a, c, r, z, at, k, acc);
  else first<T, T, N, kState>(a, c, r, z, at, k, acc);
  T* out = static_cast<T*>(a.out) + at;
  for (int s = 1; s < h.count; ++s) {
    const Coef coef(r[h.col[s]]);
    const bool last = s == h.count - 1;
    if (h.f32[s]) {
      const float* p = static_cast<const float*>(h.ptr[s]) + at;
      if (last) add_history_store<T, float>(acc, p, coef, out, k);
      else add_history<float>(acc, p, coef, k);
    } else {
      const T* p = static_cast<const T*>(h.ptr[s]) + at;
      if (last) add_history_store<T, T>(acc, p, coef, out, k);
      else add_history<T>(acc, p, coef, k);
    }
  }
}

// A 16-bit sample's tile [at, at + k): its 16-bit operands (x, m, history slots of the sample's
// dtype, a noise tensor) converted to float32 tiles (dtypes.h: 8 halves an instruction with F16C),
// the float32 tile loops on them, and out converted back. Each element's arithmetic is that of the
// float32 kernel on the converted values, so rounding happens once, at the store, as in a fused
// loop; and only the float32 loops are instantiated, which halves this file's compile time.
template <typename T, bool kState>
inline void tile_16bit(const Args& a, const Row& c, const float* r, const T* noise, const float* z, int64_t at,
                       int64_t k, float* acc) {
  alignas(64) float xs[kTile], ms[kTile], os[kTile], zs[kTile], hs[kMaxHistory][kTile];
  Args f = a;  // the same step on float32 tiles that start at 0
  f.sample = floats_of(static_cast<const T*>(a.sample) + at, k, xs);
  f.model = floats_of(static_cast<const T*>(a.model) + at, k, ms);
  f.out = os;
  f.state = kState ? a.state + at : nullptr;
  for (int s = 0; s < a.hist.count; ++s) {
    f.hist.ptr[s] = a.hist.f32[s] ? static_cast<const float*>(a.hist.ptr[s]) + at
                                  : floats_of(static_cast<const T*>(a.hist.ptr[s]) + at, k, hs[s]);
    f.hist.f32[s] = true;
  }
  if (z == nullptr && noise != nullptr) z = floats_of(noise + at, k, zs);
  if (z == nullptr) tile<float, None, kState>(f, c, r, static_cast<const None*>(nullptr), 0, k, acc);
  else tile<float, float, kState>(f, c, r, z, 0, k, acc);
  store_floats(os, k, static_cast<T*>(a.out) + at);
}

template <typename T, bool kState>
void run(const Args& a) {
  const T* noise = static_cast<const T*>(a.noise);
  const uint64_t seed = a.rng ? static_cast<uint64_t>(a.rng[0]) : 0, offset = a.rng ? static_cast<uint64_t>(a.rng[1]) : 0;
  for_each_sample_chunk(a.batch, a.per_sample, [&](int64_t b, int64_t begin, int64_t end) {
    const float* r = a.coefs + clamp_index(a.index[b * a.index_stride], a.num_rows) * kCoefs;
    const Row c(r, kState);
    alignas(64) float acc[kTile];
    alignas(64) float z[kTile];
    // Rows with SZ == 0 (the last DDPM step, DDIM with eta 0) never read or generate noise.
    const bool noisy = c.sz != 0.0f && (noise != nullptr || a.rng != nullptr);
    for (int64_t at = begin; at < end; at += kTile) {
      const int64_t k = end - at < kTile ? end - at : kTile;
      const bool philox = noisy && noise == nullptr;
      if (philox) {
        // Philox: draw the tile's z into a buffer that stays in L1, then the same fused loop.
        const uint64_t first = offset + static_cast<uint64_t>(at);
        for (int64_t j = 0; j < k; j += kNormalBlock)
          philox_normal_block(seed, first + static_cast<uint64_t>(j), static_cast<int>(k - j < kNormalBlock ? k - j : kNormalBlock), z + j);
      }
      if constexpr (!std::is_same_v<T, float>) {
        tile_16bit<T, kState>(a, c, r, noisy ? noise : nullptr, philox ? z : nullptr, at, k, acc);
      } else if (!noisy) {
        tile<T, None, kState>(a, c, r, static_cast<const None*>(nullptr), at, k, acc);
      } else if (noise != nullptr) {
        tile<T, T, kState>(a, c, r, noise + at, at, k, acc);
      } else {
        tile<T, float, kState>(a, c, r, static_cast<const float*>(z), at, k, acc);
      }
    }
  }, noise == nullptr && a.rng != nullptr ? kParallelGrainNoise : kParallelGrain);
}

template <typename T>
void run_state(const Args& a) {
  if (a.state) run<T, true>(a);
  else run<T, false>(a);
}

}  // namespace
}  // namespace fastgen

using namespace fastgen;

// Returns 0 on success, 1 for an unknown dtype, 2 for a history dtype other than the sample's or
// float32. h1..h4 may each be null (absent: zero, never read); hK_dtype is ignored for those.
extern "C" int fastgen_sampling_step_cpu(int dtype, const void* sample, const void* model, const void* h1,
                                         const void* h2, const void* h3, const void* h4, int h1_dtype, int h2_dtype,
                                         int h3_dtype, int h4_dtype, const void* noise, void* out, float* state,
                                         const int64_t* index, int64_t index_stride, const float* coefs,
                                         int64_t num_rows, const int64_t* rng, float clip, int64_t batch,
                                         int64_t per_sample) {
  if (dtype != kFloat32 && dtype != kFloat16 && dtype != kBFloat16) return 1;
  const void* ptrs[kMaxHistory] = {h1, h2, h3, h4};
  const int dtypes[kMaxHistory] = {h1_dtype, h2_dtype, h3_dtype, h4_dtype};
  Args a{sample, model, {}, noise, out, state, index, index_stride, coefs, num_rows, rng, clip, batch, per_sample};
  a.hist.count = 0;
  for (int s = 0; s < kMaxHistory; ++s) {
    if (ptrs[s] == nullptr) continue;
    if (dtypes[s] != kFloat32 && dtypes[s] != dtype) return 2;
    a.hist.ptr[a.hist.count] = ptrs[s];
    a.hist.f32[a.hist.count] = dtypes[s] == kFloat32;
    a.hist.col[a.hist.count] = H1 + s;
    ++a.hist.count;
  }
  switch (dtype) {
    case kFloat32: run_state<float>(a); break;
    case kFloat16: run_state<Half>(a); break;
    default: run_state<BFloat16>(a); break;
  }
  return 0;
}

FASTGEN_EXPORT_SIGNATURE(fastgen_sampling_step_cpu)

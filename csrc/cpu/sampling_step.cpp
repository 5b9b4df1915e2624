// One fused reverse-diffusion step on the CPU (DDPM / DDIM / DPM-Solver++, see
// fastgen/ops/sampling_step.py), one pass, OpenMP over (sample, chunk) jobs. Per sample b with row
// c = coefs[index[b]]:
//   x0  = clamp(c.PX * x + c.PM * m, -clip, clip)
//   eps = c.EX * x + c.EM * m + c.E0 * x0
//   out = c.OX * x + c.O0 * x0 + c.OE * eps + c.O1 * prev + c.SZ * z
// A C ABI (no torch headers): fastgen loads it with ctypes.
#include <stdint.h>
#include <math.h>

#include <type_traits>

#include "../dtypes.h"
#include "parallel.h"
#include "philox_block.h"

namespace fastgen {
namespace {

struct Row { float px, pm, ex, em, e0, ox, o0, oe, o1, sz; };

struct None {};  // the element type of an absent operand: the loop compiles it away

// The inner loop over [0, n): P is prev's element type, N noise's (None when absent). `clip` is
// +inf without clipping: the select then keeps every value (NaN and inf included), so one
// branch-free loop serves both and stays `omp simd` friendly.
template <typename T, typename P, typename N, bool kX0>
inline void step_range(const Row& c, float clip, const T* __restrict__ x, const T* __restrict__ m,
                       const P* __restrict__ prev, const N* __restrict__ z, T* __restrict__ out,
                       float* __restrict__ x0_out, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float xv = to_float(x[i]), mv = to_float(m[i]);
    float x0 = c.px * xv + c.pm * mv;
    x0 = x0 < -clip ? -clip : (x0 > clip ? clip : x0);
    const float eps = c.ex * xv + c.em * mv + c.e0 * x0;
    float o = c.ox * xv + c.o0 * x0 + c.oe * eps;
    if constexpr (!std::is_same_v<P, None>) o += c.o1 * to_float(prev[i]);
    if constexpr (!std::is_same_v<N, None>) o += c.sz * to_float(z[i]);
    out[i] = from_float<T>(o);
    if constexpr (kX0) x0_out[i] = x0;
  }
}

struct Args {
  const void* sample; const void* model; const void* prev; const void* noise; void* out; float* x0;
  const int64_t* index; int64_t index_stride; const float* coefs; int64_t num_rows; const int64_t* rng;
  float clip; int64_t batch; int64_t per_sample;
};

template <typename T, typename P, bool kX0>
void run(const Args& a) {
  const T* x = static_cast<const T*>(a.sample);
  const T* m = static_cast<const T*>(a.model);
  const P* prev = static_cast<const P*>(a.prev);
  const T* noise = static_cast<const T*>(a.noise);
  T* out = static_cast<T*>(a.out);
  const uint64_t seed = a.rng ? static_cast<uint64_t>(a.rng[0]) : 0, offset = a.rng ? static_cast<uint64_t>(a.rng[1]) : 0;
  for_each_sample_chunk(a.batch, a.per_sample, [&](int64_t b, int64_t begin, int64_t end) {
    const float* r = a.coefs + clamp_index(a.index[b * a.index_stride], a.num_rows) * 10;
    const Row c{r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9]};
    const int64_t n = end - begin;
    float* x0 = kX0 ? a.x0 + begin : nullptr;
    // Rows with SZ == 0 (the last DDPM step, DDIM with eta 0) never read or generate noise.
    const bool has_prev = prev != nullptr;
    if (c.sz == 0.0f || (noise == nullptr && a.rng == nullptr)) {
      if (has_prev) step_range<T, P, None, kX0>(c, a.clip, x + begin, m + begin, prev + begin, (const None*)nullptr, out + begin, x0, n);
      else step_range<T, None, None, kX0>(c, a.clip, x + begin, m + begin, (const None*)nullptr, (const None*)nullptr, out + begin, x0, n);
    } else if (noise != nullptr) {
      if (has_prev) step_range<T, P, T, kX0>(c, a.clip, x + begin, m + begin, prev + begin, noise + begin, out + begin, x0, n);
      else step_range<T, None, T, kX0>(c, a.clip, x + begin, m + begin, (const None*)nullptr, noise + begin, out + begin, x0, n);
    } else {
      // Philox: draw a small block of z into a buffer that stays in L1, then the same fused loop.
      constexpr int64_t kTile = 512;
      float z[kTile];
      for (int64_t t = 0; t < n; t += kTile) {
        const int64_t k = n - t < kTile ? n - t : kTile;
        const uint64_t first = offset + static_cast<uint64_t>(begin + t);
        for (int64_t j = 0; j < k; j += kNormalBlock)
          philox_normal_block(seed, first + static_cast<uint64_t>(j), static_cast<int>(k - j < kNormalBlock ? k - j : kNormalBlock), z + j);
        const int64_t at = begin + t;
        float* x0t = kX0 ? x0 + t : nullptr;
        if (has_prev) step_range<T, P, float, kX0>(c, a.clip, x + at, m + at, prev + at, z, out + at, x0t, k);
        else step_range<T, None, float, kX0>(c, a.clip, x + at, m + at, (const None*)nullptr, z, out + at, x0t, k);
      }
    }
  });
}

template <typename T, typename P>
void run_x0(const Args& a) {
  if (a.x0) run<T, P, true>(a);
  else run<T, P, false>(a);
}

// prev_x0 is either the sample's dtype or float32 (multistep state kept in float32).
template <typename T>
int run_prev(const Args& a, int prev_dtype) {
  if (a.prev == nullptr || prev_dtype == kFloat32) { run_x0<T, float>(a); return 0; }
  if constexpr (!std::is_same_v<T, float>) {
    if (prev_dtype == (std::is_same_v<T, Half> ? kFloat16 : kBFloat16)) { run_x0<T, T>(a); return 0; }
  }
  return 2;
}

}  // namespace
}  // namespace fastgen

using namespace fastgen;

// Returns 0 on success, 1 for an unknown dtype, 2 for a prev_x0 dtype other than the sample's or float32.
extern "C" int fastgen_sampling_step_cpu(int dtype, const void* sample, const void* model, const void* prev,
                                         int prev_dtype, const void* noise, void* out, float* x0,
                                         const int64_t* index, int64_t index_stride, const float* coefs,
                                         int64_t num_rows, const int64_t* rng, float clip, int64_t batch,
                                         int64_t per_sample) {
  const Args a{sample, model, prev, noise, out, x0, index, index_stride, coefs, num_rows, rng, clip, batch, per_sample};
  switch (dtype) {
    case kFloat32: return run_prev<float>(a, prev_dtype);
    case kFloat16: return run_prev<Half>(a, prev_dtype);
    case kBFloat16: return run_prev<BFloat16>(a, prev_dtype);
    default: return 1;
  }
}

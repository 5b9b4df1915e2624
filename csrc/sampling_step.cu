// One fused reverse-diffusion step (see fastgen/ops/sampling_step.py). Per sample b with row
// c = coefs[index[b]]:
//   x0    = clamp(c.PX * x + c.PM * m, -clip, clip)
//   eps   = c.EX * x + c.EM * m + c.E0 * x0
//   out   = c.OX * x + c.O0 * x0 + c.OE * eps + c.H1 * h1 + ... + c.H4 * h4 + c.SZ * z
//   state = c.SX * x + c.S0 * x0 + c.SE * eps            (float32, only when asked for)
// Memory-bound: 16-byte vector loads and stores wherever every pointer is 16-byte aligned, each
// thread keeping kItems vectors in flight. No torch headers: nvcc compile-checks this file on
// machines without a GPU; bindings.cpp calls the launcher.
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <math.h>
#include <stdint.h>

#include "float_convert.cuh"
#include "launchers.h"
#include "philox.h"

namespace fastgen {
namespace {

// N elements of T loaded or stored as 16-byte transactions (N * sizeof(T) is a multiple of 16).
template <typename T, int N> struct alignas(16) Pack { T v[N]; };

enum Noise : int { kNoNoise = 0, kNoiseTensor = 1, kNoisePhilox = 2 };

constexpr int kCoefs = 16;  // NUM_COEFS
constexpr int kMaxHistory = 4;
enum Col : int { PX, PM, EX, EM, E0, OX, O0, OE, H1, H2, H3, H4, SZ, SX, S0, SE };

struct Row { float px, pm, ex, em, e0, ox, o0, oe, h[kMaxHistory], sz, sx, s0, se; };

// hist holds the present history slots first (compacted, slot order); hist_col[s] is the column
// that weighs hist[s] and bit s of hist_f32 says it is float32 (else the sample's dtype).
struct Params {
  const void* sample; const void* model; const void* hist[kMaxHistory]; const void* noise; void* out; float* state;
  const int64_t* index; int64_t index_stride; const float* coefs; int64_t num_rows; const int64_t* rng;
  float clip; int64_t per_sample; int64_t chunks_per_sample; int64_t chunk_elems; int hist_f32;
  int hist_col[kMaxHistory]; bool vectorize;
};

// c * v, but exactly 0 where c == 0: an operand the row does not use may be infinite (a float16
// overflow in the model output), and 0 * inf = NaN would poison a result diffusers keeps finite.
__device__ __forceinline__ float term(float c, float v) { return c != 0.0f ? c * v : 0.0f; }

// x0, eps and the part of out that does not depend on history or noise. clip is +inf when x0 is
// not clamped. The selects (not fminf/fmaxf) keep a NaN a NaN, as torch.clamp does.
__device__ __forceinline__ float step_core(const Row& c, float clip, float x, float m, float& x0, float& eps) {
  float v = term(c.px, x) + term(c.pm, m);
  v = v < -clip ? -clip : (v > clip ? clip : v);
  x0 = v;
  eps = term(c.ex, x) + term(c.em, m) + term(c.e0, v);
  return term(c.ox, x) + term(c.o0, v) + term(c.oe, eps);
}

template <typename T>
__device__ __forceinline__ float load_hist(const void* ptr, bool f32, int64_t i) {
  return f32 ? static_cast<const float*>(ptr)[i] : to_f32(static_cast<const T*>(ptr)[i]);
}

// Vector v (N elements) of a history slot, as float32: one or two 16-byte loads.
template <typename T, int N>
__device__ __forceinline__ void load_hist_pack(const void* ptr, bool f32, int64_t v, float (&dst)[N]) {
  if (f32) {
    const Pack<float, N> q = reinterpret_cast<const Pack<float, N>*>(ptr)[v];
#pragma unroll
    for (int j = 0; j < N; ++j) dst[j] = q.v[j];
  } else {
    const Pack<T, N> q = reinterpret_cast<const Pack<T, N>*>(ptr)[v];
#pragma unroll
    for (int j = 0; j < N; ++j) dst[j] = to_f32(q.v[j]);
  }
}

// grid.x walks (sample, chunk) pairs so that any batch size fits and every block reads one
// coefficient row. kHist: how many history slots are present; kNoise: a Noise. Whether a slot is
// float32 and whether state is written are block-uniform branches, not template switches, to
// keep the instantiations few.
template <typename T, int kHist, int kNoise>
__global__ void __launch_bounds__(256) sampling_step_kernel(Params p) {
  constexpr int N = 16 / sizeof(T);  // elements per vector
  static_assert(N % 4 == 0, "a vector holds whole groups of four stream positions");
  // vectors per thread in flight; Philox makes the kernel compute-heavy (one call per four
  // elements), and unrolling it for kItems > 1 vectors would only bloat the code; with several
  // history slots 2 keep the registers in check (each slot holds kItems * N floats)
  constexpr int kItems = kNoise == kNoisePhilox ? 1 : (kHist >= 2 ? 2 : 4);
  const T* __restrict__ xs = static_cast<const T*>(p.sample);
  const T* __restrict__ ms = static_cast<const T*>(p.model);
  const T* __restrict__ zs = static_cast<const T*>(p.noise);
  T* __restrict__ os = static_cast<T*>(p.out);
  float* __restrict__ states = p.state;
  const bool write_state = states != nullptr;

  const int64_t b = blockIdx.x / p.chunks_per_sample;
  const int64_t chunk = blockIdx.x % p.chunks_per_sample;
  int64_t r = p.index[b * p.index_stride];
  r = r < 0 ? 0 : (r >= p.num_rows ? p.num_rows - 1 : r);
  const float* cr = p.coefs + r * kCoefs;
  Row c{cr[PX], cr[PM], cr[EX], cr[EM], cr[E0], cr[OX], cr[O0], cr[OE], {0.0f, 0.0f, 0.0f, 0.0f}, cr[SZ], cr[SX],
        cr[S0], cr[SE]};
  bool f32[kMaxHistory] = {false, false, false, false};
#pragma unroll
  for (int s = 0; s < kHist; ++s) {
    c.h[s] = cr[p.hist_col[s]];
    f32[s] = (p.hist_f32 >> s) & 1;
  }
  // Rows with SZ == 0 never read or generate noise (block-uniform branch).
  const bool noisy = kNoise != kNoNoise && c.sz != 0.0f;
  if (!noisy) c.sz = 0.0f;
  uint64_t seed = 0, offset = 0;
  if (kNoise == kNoisePhilox && noisy) { seed = static_cast<uint64_t>(p.rng[0]); offset = static_cast<uint64_t>(p.rng[1]); }

  // Element i with scalar loads; z is its Philox normal (unused unless kNoise == kNoisePhilox and noisy).
  auto element = [&](int64_t i, float z) {
    const float xv = to_f32(xs[i]);
    float x0, eps;
    float o = step_core(c, p.clip, xv, to_f32(ms[i]), x0, eps);
#pragma unroll
    for (int s = 0; s < kHist; ++s) o += term(c.h[s], load_hist<T>(p.hist[s], f32[s], i));
    if (kNoise == kNoiseTensor && noisy) o += c.sz * to_f32(zs[i]);
    if (kNoise == kNoisePhilox && noisy) o += c.sz * z;
    os[i] = from_f32<T>(o);
    if (write_state) states[i] = term(c.sx, xv) + term(c.s0, x0) + term(c.se, eps);
  };
  const bool philox = kNoise == kNoisePhilox && noisy;
  // One element on its own: a whole Philox call (only the head and tail of a vectorised chunk).
  auto scalar = [&](int64_t i) { element(i, philox ? philox_normal(seed, offset + static_cast<uint64_t>(i)) : 0.0f); };
  // Elements [lo, hi) by the block's threads; with Philox noise in groups of four consecutive
  // elements from one call ((offset + lo) % 4 is uniform over the block: no divergence).
  auto scalar_range = [&](int64_t lo, int64_t hi) {
    if (philox) {
      for (int64_t g = lo + 4 * static_cast<int64_t>(threadIdx.x); g < hi; g += 4 * static_cast<int64_t>(blockDim.x)) {
        const Normal4 z = philox_normal4_at(seed, offset + static_cast<uint64_t>(g));
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          if (g + j < hi) element(g + j, z.v[j]);
        }
      }
    } else {
      for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) scalar(i);
    }
  };

  const int64_t begin = b * p.per_sample + chunk * p.chunk_elems;
  const int64_t end = min(begin + p.chunk_elems, (b + 1) * p.per_sample);
  if (!p.vectorize) {
    scalar_range(begin, end);
    return;
  }
  // Flat index i is 16-byte aligned in every operand iff i % N == 0 (all bases are 16-byte aligned).
  const int64_t vbegin = (begin + N - 1) / N, vend = end / N;
  if (vbegin >= vend) {
    scalar_range(begin, end);
    return;
  }
  if (begin + threadIdx.x < vbegin * N) scalar(begin + threadIdx.x);  // head: fewer than N elements
  if (vend * N + threadIdx.x < end) scalar(vend * N + threadIdx.x);   // tail: fewer than N elements

  using PackT = Pack<T, N>;
  using PackF = Pack<float, N>;
  for (int64_t v0 = vbegin + threadIdx.x; v0 < vend; v0 += static_cast<int64_t>(blockDim.x) * kItems) {
    PackT x[kItems], m[kItems], z[kItems];
    float h[kHist > 0 ? kHist : 1][kItems][N];
    // All loads first, so kItems * (2..7) 16-byte requests are in flight per thread.
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const int64_t v = v0 + static_cast<int64_t>(k) * blockDim.x;
      if (v < vend) {
        x[k] = reinterpret_cast<const PackT*>(xs)[v];
        m[k] = reinterpret_cast<const PackT*>(ms)[v];
#pragma unroll
        for (int s = 0; s < kHist; ++s) load_hist_pack<T, N>(p.hist[s], f32[s], v, h[s][k]);
        if (kNoise == kNoiseTensor && noisy) z[k] = reinterpret_cast<const PackT*>(zs)[v];
      }
    }
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const int64_t v = v0 + static_cast<int64_t>(k) * blockDim.x;
      if (v < vend) {
        PackT o;
        PackF st;
#pragma unroll
        for (int g = 0; g < N; g += 4) {
          Normal4 zp;  // the Philox noise of elements g .. g + 3 of this vector
          if (philox) zp = philox_normal4_at(seed, offset + static_cast<uint64_t>(v * N + g));
#pragma unroll
          for (int j = g; j < g + 4; ++j) {
            const float xv = to_f32(x[k].v[j]);
            float x0, eps;
            float ov = step_core(c, p.clip, xv, to_f32(m[k].v[j]), x0, eps);
#pragma unroll
            for (int s = 0; s < kHist; ++s) ov += term(c.h[s], h[s][k][j]);
            if (kNoise == kNoiseTensor && noisy) ov += c.sz * to_f32(z[k].v[j]);
            if (philox) ov += c.sz * zp.v[j - g];
            o.v[j] = from_f32<T>(ov);
            st.v[j] = term(c.sx, xv) + term(c.s0, x0) + term(c.se, eps);
          }
        }
        reinterpret_cast<PackT*>(os)[v] = o;
        if (write_state) reinterpret_cast<PackF*>(states)[v] = st;
      }
    }
  }
}

constexpr int kThreads = 256;

template <typename T, int kHist, int kNoise>
int launch3(const Params& p, int64_t blocks, cudaStream_t stream) {
  sampling_step_kernel<T, kHist, kNoise><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p);
  return static_cast<int>(cudaGetLastError());
}

template <typename T, int kHist>
int launch2(const Params& p, int64_t blocks, cudaStream_t stream) {
  if (p.noise) return launch3<T, kHist, kNoiseTensor>(p, blocks, stream);
  if (p.rng) return launch3<T, kHist, kNoisePhilox>(p, blocks, stream);
  return launch3<T, kHist, kNoNoise>(p, blocks, stream);
}

bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; }

template <typename T>
int launch(Params p, int num_hist, int64_t batch, cudaStream_t stream) {
  constexpr int N = 16 / sizeof(T);
  p.chunk_elems = static_cast<int64_t>(kThreads) * N * 4;  // 4 vectors per thread
  p.chunks_per_sample = (p.per_sample + p.chunk_elems - 1) / p.chunk_elems;
  const int64_t blocks = batch * p.chunks_per_sample;
  if (blocks == 0) return 0;
  if (blocks > 0x7FFFFFFFLL) return static_cast<int>(cudaErrorInvalidConfiguration);
  bool aligned = aligned16(p.sample) && aligned16(p.model) && aligned16(p.out) && (!p.noise || aligned16(p.noise)) &&
                 (!p.state || aligned16(p.state));
  for (int s = 0; s < num_hist; ++s) aligned = aligned && aligned16(p.hist[s]);
  p.vectorize = aligned;
  switch (num_hist) {
    case 0: return launch2<T, 0>(p, blocks, stream);
    case 1: return launch2<T, 1>(p, blocks, stream);
    case 2: return launch2<T, 2>(p, blocks, stream);
    case 3: return launch2<T, 3>(p, blocks, stream);
    default: return launch2<T, 4>(p, blocks, stream);
  }
}

}  // namespace

int sampling_step_cuda(int dtype, const void* sample, const void* model, const void* const* history,
                       const int* history_dtypes, const void* noise, void* out, float* state, const int64_t* index,
                       int64_t index_stride, const float* coefs, int64_t num_rows, const int64_t* rng, float clip,
                       int64_t batch, int64_t per_sample, cudaStream_t stream) {
  Params p{sample, model, {nullptr, nullptr, nullptr, nullptr}, noise, out, state, index, index_stride, coefs,
           num_rows, rng, clip, per_sample, 0, 0, 0, {0, 0, 0, 0}, false};
  int num_hist = 0;
  for (int s = 0; s < kMaxHistory; ++s) {
    if (history[s] == nullptr) continue;  // an absent slot: zero, never read
    if (history_dtypes[s] != kFloat32 && history_dtypes[s] != dtype) return static_cast<int>(cudaErrorInvalidValue);
    p.hist[num_hist] = history[s];
    p.hist_col[num_hist] = H1 + s;
    if (history_dtypes[s] == kFloat32) p.hist_f32 |= 1 << num_hist;
    ++num_hist;
  }
  switch (dtype) {
    case kFloat32: return launch<float>(p, num_hist, batch, stream);
    case kFloat16: return launch<__half>(p, num_hist, batch, stream);
    case kBFloat16: return launch<__nv_bfloat16>(p, num_hist, batch, stream);
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}

}  // namespace fastgen

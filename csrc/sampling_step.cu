// One fused reverse-diffusion step (DDPM / DDIM / DPM-Solver++, see fastgen/ops/sampling_step.py).
// Per sample b with row c = coefs[index[b]]:
//   x0  = clamp(c.PX * x + c.PM * m, -clip, clip)
//   eps = c.EX * x + c.EM * m + c.E0 * x0
//   out = c.OX * x + c.O0 * x0 + c.OE * eps + c.O1 * prev + c.SZ * z
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

struct Row { float px, pm, ex, em, e0, ox, o0, oe, o1, sz; };

struct Params {
  const void* sample; const void* model; const void* prev; const void* noise; void* out; float* x0;
  const int64_t* index; int64_t index_stride; const float* coefs; int64_t num_rows; const int64_t* rng;
  float clip; int64_t per_sample; int64_t chunks_per_sample; int64_t chunk_elems; bool vectorize;
};

// clip is +inf when x0 is not clamped. The selects (not fminf/fmaxf) keep a NaN a NaN, as torch.clamp does.
__device__ __forceinline__ float step_one(const Row& c, float clip, float x, float m, float p, float z,
                                          float& x0) {
  float v = c.px * x + c.pm * m;
  v = v < -clip ? -clip : (v > clip ? clip : v);
  x0 = v;
  const float eps = c.ex * x + c.em * m + c.e0 * v;
  return c.ox * x + c.o0 * v + c.oe * eps + c.o1 * p + c.sz * z;
}

// grid.x walks (sample, chunk) pairs so that any batch size fits and every block reads one
// coefficient row. P: prev's element type; kNoise: a Noise. x0 (float32) is written when p.x0 is
// set: a block-uniform branch, not a template switch, to halve the instantiations.
template <typename T, typename P, bool kPrev, int kNoise>
__global__ void __launch_bounds__(256) sampling_step_kernel(Params p) {
  constexpr int N = 16 / sizeof(T);  // elements per vector
  // vectors per thread in flight; Philox makes the kernel compute-heavy, and unrolling its 10
  // rounds 4 * N times would only bloat the code
  constexpr int kItems = kNoise == kNoisePhilox ? 1 : 4;
  const T* __restrict__ xs = static_cast<const T*>(p.sample);
  const T* __restrict__ ms = static_cast<const T*>(p.model);
  const P* __restrict__ ps = static_cast<const P*>(p.prev);
  const T* __restrict__ zs = static_cast<const T*>(p.noise);
  T* __restrict__ os = static_cast<T*>(p.out);
  float* __restrict__ x0s = p.x0;
  const bool write_x0 = x0s != nullptr;

  const int64_t b = blockIdx.x / p.chunks_per_sample;
  const int64_t chunk = blockIdx.x % p.chunks_per_sample;
  int64_t r = p.index[b * p.index_stride];
  r = r < 0 ? 0 : (r >= p.num_rows ? p.num_rows - 1 : r);
  const float* cr = p.coefs + r * 10;
  Row c{cr[0], cr[1], cr[2], cr[3], cr[4], cr[5], cr[6], cr[7], kPrev ? cr[8] : 0.0f, cr[9]};
  // Rows with SZ == 0 never read or generate noise (block-uniform branch).
  const bool noisy = kNoise != kNoNoise && c.sz != 0.0f;
  if (!noisy) c.sz = 0.0f;
  uint64_t seed = 0, offset = 0;
  if (kNoise == kNoisePhilox && noisy) { seed = static_cast<uint64_t>(p.rng[0]); offset = static_cast<uint64_t>(p.rng[1]); }

  auto scalar = [&](int64_t i) {
    const float pv = kPrev ? to_f32(ps[i]) : 0.0f;
    float zv = 0.0f;
    if (kNoise == kNoiseTensor && noisy) zv = to_f32(zs[i]);
    if (kNoise == kNoisePhilox && noisy) zv = philox_normal(seed, offset + static_cast<uint64_t>(i));
    float x0;
    os[i] = from_f32<T>(step_one(c, p.clip, to_f32(xs[i]), to_f32(ms[i]), pv, zv, x0));
    if (write_x0) x0s[i] = x0;
  };

  const int64_t begin = b * p.per_sample + chunk * p.chunk_elems;
  const int64_t end = min(begin + p.chunk_elems, (b + 1) * p.per_sample);
  if (!p.vectorize) {
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) scalar(i);
    return;
  }
  // Flat index i is 16-byte aligned in every operand iff i % N == 0 (all bases are 16-byte aligned).
  const int64_t vbegin = (begin + N - 1) / N, vend = end / N;
  if (vbegin >= vend) {
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) scalar(i);
    return;
  }
  if (begin + threadIdx.x < vbegin * N) scalar(begin + threadIdx.x);  // head: fewer than N elements
  if (vend * N + threadIdx.x < end) scalar(vend * N + threadIdx.x);   // tail: fewer than N elements

  using PackT = Pack<T, N>;
  using PackP = Pack<P, N>;
  using PackF = Pack<float, N>;
  for (int64_t v0 = vbegin + threadIdx.x; v0 < vend; v0 += static_cast<int64_t>(blockDim.x) * kItems) {
    PackT x[kItems], m[kItems], z[kItems];
    PackP pv[kItems];
    // All loads first, so kItems * (2..4) 16-byte requests are in flight per thread.
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const int64_t v = v0 + static_cast<int64_t>(k) * blockDim.x;
      if (v < vend) {
        x[k] = reinterpret_cast<const PackT*>(xs)[v];
        m[k] = reinterpret_cast<const PackT*>(ms)[v];
        if (kPrev) pv[k] = reinterpret_cast<const PackP*>(ps)[v];
        if (kNoise == kNoiseTensor && noisy) z[k] = reinterpret_cast<const PackT*>(zs)[v];
      }
    }
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const int64_t v = v0 + static_cast<int64_t>(k) * blockDim.x;
      if (v < vend) {
        PackT o;
        PackF x0;
#pragma unroll
        for (int j = 0; j < N; ++j) {
          float zv = 0.0f;
          if (kNoise == kNoiseTensor && noisy) zv = to_f32(z[k].v[j]);
          if (kNoise == kNoisePhilox && noisy) zv = philox_normal(seed, offset + static_cast<uint64_t>(v * N + j));
          o.v[j] = from_f32<T>(step_one(c, p.clip, to_f32(x[k].v[j]), to_f32(m[k].v[j]), kPrev ? to_f32(pv[k].v[j]) : 0.0f,
                                        zv, x0.v[j]));
        }
        reinterpret_cast<PackT*>(os)[v] = o;
        if (write_x0) reinterpret_cast<PackF*>(x0s)[v] = x0;
      }
    }
  }
}

constexpr int kThreads = 256;

template <typename T, typename P, bool kPrev, int kNoise>
int launch4(const Params& p, int64_t blocks, cudaStream_t stream) {
  sampling_step_kernel<T, P, kPrev, kNoise><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(p);
  return static_cast<int>(cudaGetLastError());
}

template <typename T, typename P, bool kPrev>
int launch3(const Params& p, int64_t blocks, cudaStream_t stream) {
  if (p.noise) return launch4<T, P, kPrev, kNoiseTensor>(p, blocks, stream);
  if (p.rng) return launch4<T, P, kPrev, kNoisePhilox>(p, blocks, stream);
  return launch4<T, P, kPrev, kNoNoise>(p, blocks, stream);
}

bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; }

template <typename T>
int launch(Params p, int prev_dtype, int64_t batch, cudaStream_t stream) {
  constexpr int N = 16 / sizeof(T);
  p.chunk_elems = static_cast<int64_t>(kThreads) * N * 4;  // 4 vectors per thread (one pass unless Philox)
  p.chunks_per_sample = (p.per_sample + p.chunk_elems - 1) / p.chunk_elems;
  const int64_t blocks = batch * p.chunks_per_sample;
  if (blocks == 0) return 0;
  if (blocks > 0x7FFFFFFFLL) return static_cast<int>(cudaErrorInvalidConfiguration);
  p.vectorize = aligned16(p.sample) && aligned16(p.model) && aligned16(p.out) && (!p.prev || aligned16(p.prev)) &&
                (!p.noise || aligned16(p.noise)) && (!p.x0 || aligned16(p.x0));
  if (!p.prev) return launch3<T, T, false>(p, blocks, stream);
  // prev_x0 is float32 (multistep state) or the sample's dtype; sampling_step_cuda checked which.
  if (prev_dtype == kFloat32) return launch3<T, float, true>(p, blocks, stream);
  return launch3<T, T, true>(p, blocks, stream);
}

}  // namespace

int sampling_step_cuda(int dtype, const void* sample, const void* model, const void* prev, int prev_dtype,
                       const void* noise, void* out, float* x0, const int64_t* index, int64_t index_stride,
                       const float* coefs, int64_t num_rows, const int64_t* rng, float clip, int64_t batch,
                       int64_t per_sample, cudaStream_t stream) {
  if (prev != nullptr && prev_dtype != kFloat32 && prev_dtype != dtype) return static_cast<int>(cudaErrorInvalidValue);
  Params p{sample, model, prev, noise, out, x0, index, index_stride, coefs, num_rows, rng, clip, per_sample, 0, 0, false};
  switch (dtype) {
    case kFloat32: return launch<float>(p, prev_dtype, batch, stream);
    case kFloat16: return launch<__half>(p, prev_dtype, batch, stream);
    case kBFloat16: return launch<__nv_bfloat16>(p, prev_dtype, batch, stream);
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}

}  // namespace fastgen

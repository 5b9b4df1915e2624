// Forward noising of DDPM: x_t = sqrt(abar[t_b]) * x0 + sqrt(1 - abar[t_b]) * eps, one pass.
// No torch headers: nvcc compile-checks this file on machines without a GPU; bindings.cpp calls
// the launcher.
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>

#include "float_convert.cuh"
#include "launchers.h"
#include "philox.h"

namespace fastgen {

template <typename T> __device__ __forceinline__ float load_f32(const T* p) { return to_f32(*p); }
template <typename T> __device__ __forceinline__ void store_f32(T* p, float v) { *p = from_f32<T>(v); }

// N elements of T moved as one 16-byte transaction.
template <typename T, int N> struct alignas(16) Pack { T v[N]; };

// grid.x walks (sample, chunk) pairs so any batch size fits. Where every pointer is 16-byte
// aligned (`vectorize`), the chunk is split into a scalar head, 16-byte vectors (each thread
// keeping kItems of them in flight: the kernel is memory-bound) and a scalar tail; otherwise
// neighbouring threads take neighbouring elements, or with in-kernel noise neighbouring groups of
// four. In-kernel noise is drawn four consecutive positions at a time (philox_normal4_at: one
// Philox call, two logs, two sincosf; two calls where the offset is not a multiple of 4); only the
// scalar head and tail (fewer than 2 * N elements per chunk) pay a call per element.
template <typename T, bool kGenerate>
__global__ void __launch_bounds__(256) add_noise_kernel(
    const T* __restrict__ x0, const T* __restrict__ noise, T* __restrict__ out, const int64_t* __restrict__ t,
    int64_t t_stride, const float* __restrict__ abar, int64_t num_train, const int64_t* __restrict__ rng,
    int64_t per_sample, int64_t chunks_per_sample, int64_t chunk_elems, bool vectorize) {
  constexpr int N = 16 / sizeof(T);
  static_assert(N % 4 == 0, "a vector holds whole groups of four stream positions");
  // vectors per thread in flight; with in-kernel noise 2, which keeps ptxas from spilling the bf16
  // instantiation (4 spilled 40 bytes per thread) while the Philox arithmetic hides latency
  constexpr int kItems = kGenerate ? 2 : 4;
  const int64_t b = blockIdx.x / chunks_per_sample;
  const int64_t chunk = blockIdx.x % chunks_per_sample;
  int64_t ti = t[b * t_stride];
  ti = ti < 0 ? 0 : (ti >= num_train ? num_train - 1 : ti);
  const float a = abar[ti];
  const float signal = sqrtf(a), noise_scale = sqrtf(1.0f - a);
  uint64_t seed = 0, offset = 0;
  if (kGenerate) { seed = static_cast<uint64_t>(rng[0]); offset = static_cast<uint64_t>(rng[1]); }
  auto scalar = [&](int64_t i) {
    const float eps = kGenerate ? philox_normal(seed, offset + static_cast<uint64_t>(i)) : load_f32(noise + i);
    store_f32(out + i, signal * load_f32(x0 + i) + noise_scale * eps);
  };
  const int64_t begin = b * per_sample + chunk * chunk_elems;
  const int64_t end = begin + chunk_elems < (b + 1) * per_sample ? begin + chunk_elems : (b + 1) * per_sample;
  // Flat index i is 16-byte aligned in every operand iff i % N == 0 (the bases are aligned).
  const int64_t vbegin = (begin + N - 1) / N, vend = end / N;
  if (!vectorize || vbegin >= vend) {
    if (kGenerate) {  // groups of four from one Philox call; (offset + begin) % 4 is uniform over the block
      const int64_t stride = 4 * static_cast<int64_t>(blockDim.x);
      for (int64_t g = begin + 4 * static_cast<int64_t>(threadIdx.x); g < end; g += stride) {
        const Normal4 z = philox_normal4_at(seed, offset + static_cast<uint64_t>(g));
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          if (g + j < end) store_f32(out + g + j, signal * load_f32(x0 + g + j) + noise_scale * z.v[j]);
        }
      }
    } else {
      for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) scalar(i);
    }
    return;
  }
  if (begin + threadIdx.x < vbegin * N) scalar(begin + threadIdx.x);  // head: fewer than N elements
  if (vend * N + threadIdx.x < end) scalar(vend * N + threadIdx.x);   // tail: fewer than N elements
  using PackT = Pack<T, N>;
  for (int64_t v0 = vbegin + threadIdx.x; v0 < vend; v0 += static_cast<int64_t>(blockDim.x) * kItems) {
    PackT xs[kItems], zs[kItems];
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const int64_t v = v0 + static_cast<int64_t>(k) * blockDim.x;
      if (v < vend) {
        xs[k] = reinterpret_cast<const PackT*>(x0)[v];
        if (!kGenerate) zs[k] = reinterpret_cast<const PackT*>(noise)[v];
      }
    }
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const int64_t v = v0 + static_cast<int64_t>(k) * blockDim.x;
      if (v < vend) {
        PackT o;
#pragma unroll
        for (int g = 0; g < N; g += 4) {
          Normal4 z;  // the noise of elements g .. g + 3 of this vector
          if (kGenerate) z = philox_normal4_at(seed, offset + static_cast<uint64_t>(v * N + g));
#pragma unroll
          for (int j = g; j < g + 4; ++j) {
            const float eps = kGenerate ? z.v[j - g] : load_f32(&zs[k].v[j]);
            store_f32(&o.v[j], signal * load_f32(&xs[k].v[j]) + noise_scale * eps);
          }
        }
        reinterpret_cast<PackT*>(out)[v] = o;
      }
    }
  }
}

static bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

template <typename T>
static int launch(const void* x0, const void* noise, void* out, const int64_t* t, int64_t t_stride,
                  const float* abar, int64_t num_train, const int64_t* rng, int64_t batch, int64_t per_sample,
                  cudaStream_t stream) {
  const int threads = 256;
  const int64_t chunk_elems = threads * (16 / sizeof(T)) * 4;  // one pass of 4 vectors per thread
  const int64_t chunks = (per_sample + chunk_elems - 1) / chunk_elems;
  const int64_t blocks = batch * chunks;
  if (blocks == 0) return 0;
  if (blocks > 0x7FFFFFFFLL) return static_cast<int>(cudaErrorInvalidConfiguration);
  const bool vectorize = aligned16(x0) && aligned16(out) && (noise == nullptr || aligned16(noise));
  if (noise == nullptr) {
    add_noise_kernel<T, true><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(
        static_cast<const T*>(x0), nullptr, static_cast<T*>(out), t, t_stride, abar, num_train, rng, per_sample,
        chunks, chunk_elems, vectorize);
  } else {
    add_noise_kernel<T, false><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(
        static_cast<const T*>(x0), static_cast<const T*>(noise), static_cast<T*>(out), t, t_stride, abar,
        num_train, rng, per_sample, chunks, chunk_elems, vectorize);
  }
  return static_cast<int>(cudaGetLastError());
}

int add_noise_cuda(int dtype, const void* x0, const void* noise, void* out, const int64_t* t, int64_t t_stride,
                   const float* abar, int64_t num_train, const int64_t* rng, int64_t batch, int64_t per_sample,
                   cudaStream_t stream) {
  switch (dtype) {
    case kFloat32: return launch<float>(x0, noise, out, t, t_stride, abar, num_train, rng, batch, per_sample, stream);
    case kFloat16: return launch<__half>(x0, noise, out, t, t_stride, abar, num_train, rng, batch, per_sample, stream);
    case kBFloat16: return launch<__nv_bfloat16>(x0, noise, out, t, t_stride, abar, num_train, rng, batch, per_sample, stream);
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}

}  // namespace fastgen

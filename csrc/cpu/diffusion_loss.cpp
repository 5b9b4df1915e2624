// The diffusion training loss on the CPU, eps regenerated instead of stored:
//   target = x0 (sample), eps (epsilon) or sqrt(a) * eps - sqrt(1 - a) * x0 (v_prediction), a = abar[t_b]
//   forward:  sums[b] = sum_i (pred_i - target_i)^2 over sample b, float32; optionally the residual
//             d = pred - target written out (pred's dtype), so that the backward is one scaling pass
//             and never regenerates eps (on a CPU, generating eps costs more than a pass over memory)
//   backward: grad_pred = s_b * d,  grad_x0 = -A_b * s_b * d   (d = pred - target, s_b = 2 * dL/dsums[b])
// eps is the caller's noise or Philox element i (storage index) of the state [seed, offset], the same
// numbers as csrc/cpu/add_noise.cpp. A C ABI (no torch headers): fastgen loads it with ctypes.
#include <stdint.h>
#include <math.h>

#include <vector>

#include "../dtypes.h"
#include "parallel.h"
#include "philox_block.h"
#include "signature.h"

namespace fastgen {
namespace {

enum Mode : int { kEpsilon = 0, kSample = 1, kVPrediction = 2 };
constexpr int kLanes = kNormalBlock;  // elements per block: one Philox block, kLanes running sums
constexpr int64_t kChunk = 1 << 14;  // elements per (sample, chunk) job and per partial sum

// Per-sample context: the target coefficients and where eps comes from.
struct Sample {
  float a_sig, a_noise;  // v_prediction: target = a_sig * eps - a_noise * x0
};

inline Sample sample_coefs(const int64_t* t, int64_t t_stride, const float* abar, int64_t num_train, int64_t b) {
  const float a = abar[clamp_index(t[b * t_stride], num_train)];
  return {sqrtf(a), sqrtf(1.0f - a)};
}

// d = pred - target for flat indices [i, i + n) into d[0..n). FULL (n == kLanes) gives the compiler
// fixed-length loops to vectorise; the tail of a chunk takes FULL = false. 16-bit operands are
// converted a block at a time first (dtypes.h floats_of: F16C where the library has it).
template <int MODE, bool FULL, typename P, typename X>
inline void residual_block(const P* pred, const X* x0, const X* noise, uint64_t seed, uint64_t offset, Sample s,
                           int64_t i, int n, float* d) {
  const int m = FULL ? kLanes : n;
  float eps_buf[kLanes], x0_buf[kLanes], pred_buf[kLanes];
  const float* eps = eps_buf;
  if (MODE != kSample) {
    if (noise) eps = floats_of(noise + i, m, eps_buf);
    else philox_normal_block(seed, offset + static_cast<uint64_t>(i), m, eps_buf);
  }
  const float* x = MODE != kEpsilon ? floats_of(x0 + i, m, x0_buf) : nullptr;
  const float* p = floats_of(pred + i, m, pred_buf);
  for (int j = 0; j < m; ++j) {
    float target;
    if (MODE == kEpsilon) target = eps[j];
    else if (MODE == kSample) target = x[j];
    else target = s.a_sig * eps[j] - s.a_noise * x[j];
    d[j] = p[j] - target;
  }
}

// Calls body(job, b, begin, end) for (sample, kChunk) jobs, in parallel when there are two jobs
// and `grain` elements (parallel.h); job = b * chunks + c.
template <typename Body>
inline void for_each_job(int64_t batch, int64_t per_sample, Body body, int64_t grain) {
  const int64_t chunks = (per_sample + kChunk - 1) / kChunk, jobs = batch * chunks;
#pragma omp parallel for schedule(static) if (jobs > 1 && batch * per_sample >= grain)
  for (int64_t job = 0; job < jobs; ++job) {
    const int64_t b = job / chunks, c = job % chunks;
    const int64_t begin = b * per_sample + c * kChunk;
    const int64_t end = begin + kChunk < (b + 1) * per_sample ? begin + kChunk : (b + 1) * per_sample;
    body(job, b, begin, end);
  }
}

template <int MODE, typename P, typename X>
void loss_forward(const P* pred, const X* x0, const X* noise, const int64_t* t, int64_t t_stride, const float* abar,
                  int64_t num_train, const int64_t* rng, int64_t batch, int64_t per_sample, float* sums, P* residual) {
  const uint64_t seed = rng ? static_cast<uint64_t>(rng[0]) : 0, offset = rng ? static_cast<uint64_t>(rng[1]) : 0;
  const int64_t chunks = (per_sample + kChunk - 1) / kChunk;
  std::vector<float> partial(static_cast<size_t>(batch * chunks));
  for_each_job(batch, per_sample, [&](int64_t job, int64_t b, int64_t begin, int64_t end) {
    const Sample s = sample_coefs(t, t_stride, abar, num_train, b);
    float lane[kLanes] = {};  // kLanes running sums: vectorisable and more accurate than one
    float d[kLanes];
    int64_t i = begin;
    for (; i + kLanes <= end; i += kLanes) {
      residual_block<MODE, true>(pred, x0, noise, seed, offset, s, i, kLanes, d);
      for (int j = 0; j < kLanes; ++j) lane[j] += d[j] * d[j];
      if (residual) store_floats(d, kLanes, residual + i);
    }
    const int tail = static_cast<int>(end - i);
    residual_block<MODE, false>(pred, x0, noise, seed, offset, s, i, tail, d);
    for (int j = 0; j < tail; ++j) lane[j] += d[j] * d[j];
    if (residual) store_floats(d, tail, residual + i);
    float total = 0.0f;
    for (int j = 0; j < kLanes; ++j) total += lane[j];
    partial[job] = total;
  }, MODE != kSample && !noise ? kParallelGrainNoise : kParallelGrain);
  // Second stage in a fixed order: the result does not depend on the number of threads.
  for (int64_t b = 0; b < batch; ++b) {
    float total = 0.0f;
    for (int64_t c = 0; c < chunks; ++c) total += partial[b * chunks + c];
    sums[b] = total;
  }
}

template <int MODE, typename P, typename X>
void loss_backward(const P* pred, const X* x0, const X* noise, const int64_t* t, int64_t t_stride, const float* abar,
                   int64_t num_train, const int64_t* rng, const float* scale, int64_t batch, int64_t per_sample,
                   P* grad_pred, X* grad_x0) {
  const uint64_t seed = rng ? static_cast<uint64_t>(rng[0]) : 0, offset = rng ? static_cast<uint64_t>(rng[1]) : 0;
  for_each_job(batch, per_sample, [&](int64_t, int64_t b, int64_t begin, int64_t end) {
    const Sample s = sample_coefs(t, t_stride, abar, num_train, b);
    const float g = scale[b];
    // d target / d x0: 1 (sample), -sqrt(1 - a) (v_prediction); epsilon never asks for grad_x0
    const float neg_a = MODE == kSample ? -1.0f : s.a_noise;
    float d[kLanes];
    auto write = [&](int64_t i, int n) {
      float grad[kLanes];
      for (int j = 0; j < n; ++j) grad[j] = g * d[j];
      store_floats(grad, n, grad_pred + i);
      if (grad_x0) {
        for (int j = 0; j < n; ++j) grad[j] = neg_a * grad[j];
        store_floats(grad, n, grad_x0 + i);
      }
    };
    int64_t i = begin;
    for (; i + kLanes <= end; i += kLanes) {
      residual_block<MODE, true>(pred, x0, noise, seed, offset, s, i, kLanes, d);
      write(i, kLanes);
    }
    residual_block<MODE, false>(pred, x0, noise, seed, offset, s, i, static_cast<int>(end - i), d);
    write(i, static_cast<int>(end - i));
  }, MODE != kSample && !noise ? kParallelGrainNoise : kParallelGrain);
}

// Kernel<MODE, P, X>::run(args...) for the runtime mode and dtype codes; 1 for an unknown code.
template <template <int, typename, typename> class Kernel, int M, typename P, typename... Args>
int dispatch_x(int x_dtype, Args... args) {
  switch (x_dtype) {
    case kFloat32: Kernel<M, P, float>::run(args...); return 0;
    case kFloat16: Kernel<M, P, Half>::run(args...); return 0;
    case kBFloat16: Kernel<M, P, BFloat16>::run(args...); return 0;
    default: return 1;
  }
}

template <template <int, typename, typename> class Kernel, int M, typename... Args>
int dispatch_pred(int pred_dtype, int x_dtype, Args... args) {
  switch (pred_dtype) {
    case kFloat32: return dispatch_x<Kernel, M, float>(x_dtype, args...);
    case kFloat16: return dispatch_x<Kernel, M, Half>(x_dtype, args...);
    case kBFloat16: return dispatch_x<Kernel, M, BFloat16>(x_dtype, args...);
    default: return 1;
  }
}

template <template <int, typename, typename> class Kernel, typename... Args>
int dispatch(int mode, int pred_dtype, int x_dtype, Args... args) {
  switch (mode) {
    case kEpsilon: return dispatch_pred<Kernel, kEpsilon>(pred_dtype, x_dtype, args...);
    case kSample: return dispatch_pred<Kernel, kSample>(pred_dtype, x_dtype, args...);
    case kVPrediction: return dispatch_pred<Kernel, kVPrediction>(pred_dtype, x_dtype, args...);
    default: return 1;
  }
}

template <int M, typename P, typename X>
struct Forward {
  static void run(const void* pred, const void* x0, const void* noise, const int64_t* t, int64_t t_stride,
                  const float* abar, int64_t num_train, const int64_t* rng, int64_t batch, int64_t per_sample,
                  float* sums, void* residual) {
    loss_forward<M>(static_cast<const P*>(pred), static_cast<const X*>(x0), static_cast<const X*>(noise), t, t_stride,
                    abar, num_train, rng, batch, per_sample, sums, static_cast<P*>(residual));
  }
};

template <int M, typename P, typename X>
struct Backward {
  static void run(const void* pred, const void* x0, const void* noise, const int64_t* t, int64_t t_stride,
                  const float* abar, int64_t num_train, const int64_t* rng, const float* scale, int64_t batch,
                  int64_t per_sample, void* grad_pred, void* grad_x0) {
    loss_backward<M>(static_cast<const P*>(pred), static_cast<const X*>(x0), static_cast<const X*>(noise), t,
                     t_stride, abar, num_train, rng, scale, batch, per_sample, static_cast<P*>(grad_pred),
                     static_cast<X*>(grad_x0));
  }
};

}  // namespace
}  // namespace fastgen

using namespace fastgen;

// mode: 0 epsilon, 1 sample, 2 v_prediction. pred in pred_dtype; x0 and noise in x_dtype; noise null
// means eps from rng. Writes sums (batch,) float32, and the residual pred - target in pred_dtype with
// pred's strides unless residual is null.
extern "C" int fastgen_diffusion_loss_fwd_cpu(int mode, int pred_dtype, int x_dtype, const void* pred, const void* x0,
                                              const void* noise, const int64_t* t, int64_t t_stride, const float* abar,
                                              int64_t num_train, const int64_t* rng, int64_t batch, int64_t per_sample,
                                              float* sums, void* residual) {
  return dispatch<Forward>(mode, pred_dtype, x_dtype, pred, x0, noise, t, t_stride, abar, num_train, rng, batch,
                           per_sample, sums, residual);
}

// scale: (batch,) float32, 2 * dL/dsums[b]. grad_pred in pred_dtype; grad_x0 in x_dtype, or null.
extern "C" int fastgen_diffusion_loss_bwd_cpu(int mode, int pred_dtype, int x_dtype, const void* pred, const void* x0,
                                              const void* noise, const int64_t* t, int64_t t_stride, const float* abar,
                                              int64_t num_train, const int64_t* rng, const float* scale, int64_t batch,
                                              int64_t per_sample, void* grad_pred, void* grad_x0) {
  return dispatch<Backward>(mode, pred_dtype, x_dtype, pred, x0, noise, t, t_stride, abar, num_train, rng, scale,
                            batch, per_sample, grad_pred, grad_x0);
}

FASTGEN_EXPORT_SIGNATURE(fastgen_diffusion_loss_fwd_cpu)
FASTGEN_EXPORT_SIGNATURE(fastgen_diffusion_loss_bwd_cpu)

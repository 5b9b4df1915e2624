// Work split shared by the CPU kernels: (sample, chunk) jobs over OpenMP threads, so one huge
// sample and many small ones both keep every core busy.
#pragma once
#include <stdint.h>

namespace fastgen {

// Elements below which a kernel runs on the calling thread: waking an OpenMP team costs 5-400 us
// on a loaded 2-core machine (measured: a 4-element sampling step took 42-420 us in a team, 4.5 us
// without), more than a pass over this many elements. torch's at::internal::GRAIN_SIZE, so a
// fastgen kernel goes parallel where the torch ops it replaces do.
constexpr int64_t kParallelGrain = 32768;
// The same for loops that generate Philox noise (~10x the work per element of a plain pass).
constexpr int64_t kParallelGrainNoise = 4096;

// Calls body(b, begin, end) for flat index ranges [begin, end) inside sample b, in parallel when
// there are at least two jobs and `grain` elements in all.
template <typename Body>
inline void for_each_sample_chunk(int64_t batch, int64_t per_sample, Body body, int64_t grain = kParallelGrain) {
  const int64_t chunk = 1 << 14;  // 64 KiB of float32: big enough to amortise, small enough to balance
  const int64_t chunks = per_sample > 0 ? (per_sample + chunk - 1) / chunk : 0;
  const int64_t jobs = batch * chunks;
#pragma omp parallel for schedule(static) if (jobs > 1 && batch * per_sample >= grain)
  for (int64_t job = 0; job < jobs; ++job) {
    const int64_t b = job / chunks, c = job % chunks;
    const int64_t begin = b * per_sample + c * chunk;
    const int64_t end = begin + chunk < (b + 1) * per_sample ? begin + chunk : (b + 1) * per_sample;
    body(b, begin, end);
  }
}

inline int64_t clamp_index(int64_t i, int64_t n) { return i < 0 ? 0 : (i >= n ? n - 1 : i); }

}  // namespace fastgen

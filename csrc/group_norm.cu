// GroupNorm over channels_last (NHWC) storage with the fused prologue / epilogue of
// fastgen/ops/group_norm.py, forward and backward. x is (B, S, C) in storage order, S = H * W,
// channel c of position s of sample b at ((b * S + s) * C + c); statistics per (b, group) of
// Cg = C / G consecutive channels, in float32:
//
//   h = x + emb[b, c]   n = (h - mean) * rstd   z = n * w * (1 + scale) + bias * (1 + scale) + shift
//   y = silu(z) or z
//   backward: dz = dL/dz, k = w * (1 + scale), dx = rstd * (k dz - mean_g(k dz) - n mean_g(k dz n))
//
// The idea comes from NVIDIA's NHWC GroupNorm (Apex contrib group_norm / the TensorRT groupNorm
// plugin): in NHWC a group is Cg adjacent channels at every position, so a group-per-block
// kernel reads short strided runs; instead a block covers (sample, run of positions, channels)
// with threads owning channels, so a warp reads whole contiguous rows. Unlike those kernels,
// partial statistics are never combined with float atomics: every block writes its partials to
// a float32 workspace and a small kernel merges them in a fixed order, so results are bitwise
// reproducible run to run.
//
// Forward, three launches:
//   1. stats:    grid (B, chunk of rows, channel tile), each thread a vector of V channels over
//                every R-th row of the chunk. Per-channel (mean, M2) from batches of U rows held
//                in registers (two-pass inside the batch, Chan merge across batches), merged over
//                the block's thread rows in shared memory, then over each group's channels in the
//                tile: one partial (count, mean, M2) per (b, chunk, tile, group in the tile).
//   2. finalize: one warp per (b, group) merges its partials (Chan), writes mean and rstd.
//   3. apply:    same grid as 1; y = (h - mean) * a + d with a, d folded per channel, silu.
// x is read twice (NVIDIA's design too): keeping a whole group in registers or shared memory
// would cap the group size, and the second read often hits L2.
//
// Backward, three launches:
//   1. reduce:   grid as above; per-channel sums of dz, dz * n and n over the chunk (dz through
//                silu' recomputed from x), merged over the thread rows in shared memory and
//                written per (b, chunk, channel): the outputs are per channel anyway.
//   2. finalize: one warp per (b, group) sums the chunks per channel in chunk order, writes
//                sum_dz, sum_dz_n and d_emb = sum_s dh, and the group's two means for dx.
//   3. dx:       same grid; dx from x, dy and the group terms.
//
// No torch headers: nvcc compile-checks this file on machines without a GPU; bindings.cpp calls
// the launchers, which take a caller-allocated workspace (size queried first, as CUB does).
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "float_convert.cuh"
#include "launchers.h"

namespace fastgen {
namespace {

constexpr int kThreads = 256;  // threads of every block
// Rows each thread loads before using any, so that many vectors per tensor are in flight per
// thread: 4 where one tensor streams (forward), 2 where two do (backward: x and dy), which also
// keeps the backward's per-channel state plus its buffers within 128 registers (2 blocks per SM).
constexpr int kRowBatch = 4;
constexpr int kRowBatchBwd = 2;
// Channels of one tile (bounds the stats kernel's shared memory: 2 floats per channel). C up to
// this is one tile; wider C is tiled in whole groups where possible.
constexpr int64_t kMaxTile = 1024;
constexpr int kWarps = kThreads / 32;

// V adjacent channels moved as one V * sizeof(T)-byte transaction (at most 16 bytes).
template <typename T, int V> struct alignas(sizeof(T) * V) Vec { T v[V]; };

// How the launches split the work; computed identically by the workspace query and the launch.
struct Plan {
  int vec;             // V: channels per thread vector
  int64_t tile;        // CT: channels per tile (tile t covers [t * CT, min(C, (t + 1) * CT)))
  int64_t tiles;       // ceil(C / CT)
  int64_t slots;       // K: most groups any tile intersects (forward partials per tile)
  int cols;            // thread columns (blockDim.x): vectors of a tile handled at once
  int rows;            // thread rows (blockDim.y): R, each taking every R-th row of the chunk
  int64_t chunk_rows;  // L: positions per chunk (the last chunk may be shorter)
  int64_t chunks;      // ceil(S / L)
  int64_t blocks;      // B * tiles * chunks
};

// Geometry every kernel of a launch shares.
struct Shape {
  int64_t B, S, C, G, Cg;
  int64_t tile, tiles, slots, chunk_rows, chunks;
};

__host__ __device__ __forceinline__ Shape shape_of(const Plan& p, int64_t B, int64_t S, int64_t C, int64_t G) {
  return Shape{B, S, C, G, C / G, p.tile, p.tiles, p.slots, p.chunk_rows, p.chunks};
}

// The block's (sample, tile, chunk), its row range [s0, s0 + L) and channel range [c0, c0 + len).
struct BlockPos {
  int64_t b, t, chunk, s0, L, c0, len;
};

__device__ __forceinline__ BlockPos block_pos(const Shape& sh) {
  // blockIdx.x = (b * tiles + t) * chunks + chunk: neighbouring blocks read neighbouring rows.
  const int64_t id = blockIdx.x;
  BlockPos q;
  q.chunk = id % sh.chunks;
  q.t = (id / sh.chunks) % sh.tiles;
  q.b = id / (sh.chunks * sh.tiles);
  q.s0 = q.chunk * sh.chunk_rows;
  q.L = min(sh.chunk_rows, sh.S - q.s0);
  q.c0 = q.t * sh.tile;
  q.len = min(sh.tile, sh.C - q.c0);
  return q;
}

// Rows of a chunk of L that thread row r (of R) visits: r, r + R, ...
__device__ __forceinline__ int64_t rows_of(int64_t L, int r, int R) { return r < L ? (L - 1 - r) / R + 1 : 0; }

// --- statistics merges --------------------------------------------------------------------------

struct Stats { float n, mean, m2; };

// Chan et al.: the count-weighted merge of two (count, mean, sum of squared deviations).
__device__ __forceinline__ Stats merge(Stats a, Stats b) {
  if (b.n == 0.0f) return a;
  if (a.n == 0.0f) return b;
  const float n = a.n + b.n, wb = b.n / n, delta = b.mean - a.mean;
  return Stats{n, a.mean + delta * wb, a.m2 + b.m2 + delta * delta * a.n * wb};
}

// Lane 0 gets the merge of the warp's 32 values; a fixed tree, so the result is reproducible
// (merge is not symmetric in its operands, so a butterfly would leave lanes disagreeing).
__device__ __forceinline__ Stats warp_merge(Stats s) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    Stats other{__shfl_down_sync(0xffffffffu, s.n, o), __shfl_down_sync(0xffffffffu, s.mean, o),
                __shfl_down_sync(0xffffffffu, s.m2, o)};
    s = merge(s, other);
  }
  return s;
}

// Every lane gets the same sum: each butterfly step adds the same two values in either lane.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float silu(float z) { return z / (1.0f + expf(-z)); }
// d silu(z) / dz = sig * (1 + z * (1 - sig))
__device__ __forceinline__ float silu_grad(float z) {
  const float sig = 1.0f / (1.0f + expf(-z));
  return sig * (1.0f + z * (1.0f - sig));
}

// Optional operands: null means absent (block-uniform branches, read once per channel).
template <typename T>
struct Operands {
  const T* weight;  // (C,)
  const T* bias;    // (C,)
  const T* emb;     // (B, C)
  const T* scale;   // (B, C)
  const T* shift;   // (B, C)
};

template <typename T>
__device__ __forceinline__ float emb_of(const Operands<T>& o, int64_t b, int64_t C, int64_t c) {
  return o.emb ? to_f32(o.emb[b * C + c]) : 0.0f;
}

// k = w * (1 + scale) (dz/dn) and d = bias * (1 + scale) + shift, so that z = n * k + d.
template <typename T>
__device__ __forceinline__ void affine_of(const Operands<T>& o, int64_t b, int64_t C, int64_t c, float& k, float& d) {
  k = o.weight ? to_f32(o.weight[c]) : 1.0f;
  d = o.bias ? to_f32(o.bias[c]) : 0.0f;
  if (o.scale) {
    const float one_plus = 1.0f + to_f32(o.scale[b * C + c]);
    k *= one_plus;
    d *= one_plus;
  }
  if (o.shift) d += to_f32(o.shift[b * C + c]);
}

// k = w * (1 + scale) alone (the backward's finalize needs no d).
template <typename T>
__device__ __forceinline__ float gain_of(const Operands<T>& o, int64_t b, int64_t C, int64_t c) {
  const float k = o.weight ? to_f32(o.weight[c]) : 1.0f;
  return o.scale ? k * (1.0f + to_f32(o.scale[b * C + c])) : k;
}

// Loads up to U vectors of rows r0, r0 + R, ... (< L) of one channel vector; returns how many.
template <typename T, int V, int U>
__device__ __forceinline__ int load_rows(const T* __restrict__ base, int64_t r0, int R, int64_t L, int64_t C,
                                         Vec<T, V> (&buf)[U]) {
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int64_t r = r0 + static_cast<int64_t>(u) * R;
    if (r < L) buf[u] = *reinterpret_cast<const Vec<T, V>*>(base + r * C);
  }
  const int64_t left = (L - r0 + R - 1) / R;
  return left < U ? static_cast<int>(left) : U;
}

// --- forward ------------------------------------------------------------------------------------

// Partial statistics of h = x + emb per (b, chunk, tile, group in tile), written to part[.., 3].
template <typename T, int V>
__global__ void __launch_bounds__(kThreads, 2) gn_stats_kernel(
    const T* __restrict__ x,    // (B, S, C) input
    const T* __restrict__ emb,  // (B, C) prologue add, or null
    float* __restrict__ part,   // (B, chunks, tiles, slots, 3) workspace: (count, mean, M2)
    Shape sh) {
  __shared__ float row_mean[kThreads * V];  // [thread row][channel of the pass]
  __shared__ float row_m2[kThreads * V];
  __shared__ float chan_mean[kMaxTile];     // per channel of the tile, over the chunk's L rows
  __shared__ float chan_m2[kMaxTile];
  const BlockPos q = block_pos(sh);
  const int tx = threadIdx.x, ty = threadIdx.y, R = blockDim.y, cols = blockDim.x;
  const int64_t nvec = q.len / V;
  const T* xb = x + (q.b * sh.S + q.s0) * sh.C;
  const int pass_channels = cols * V;

  // Loop bounds are block-uniform (cv0 does not depend on the thread): the barriers below are safe.
  for (int64_t cv0 = 0; cv0 < nvec; cv0 += cols) {
    const int64_t cv = cv0 + tx;
    if (cv < nvec) {
      const int64_t c = q.c0 + cv * V;
      float e[V];
#pragma unroll
      for (int j = 0; j < V; ++j) e[j] = emb ? to_f32(emb[q.b * sh.C + c + j]) : 0.0f;
      float mean[V], m2[V], n = 0.0f;
#pragma unroll
      for (int j = 0; j < V; ++j) mean[j] = m2[j] = 0.0f;
      for (int64_t r0 = ty; r0 < q.L; r0 += static_cast<int64_t>(R) * kRowBatch) {
        Vec<T, V> buf[kRowBatch];
        const int nb = load_rows<T, V, kRowBatch>(xb + c, r0, R, q.L, sh.C, buf);
        // The batch's exact mean and M2 (two passes over registers), merged into the running
        // ones: no E[h^2] - E[h]^2 cancellation however far from zero h sits.
        const float inv_nb = 1.0f / nb, total = n + nb, wb = nb / total;
#pragma unroll
        for (int j = 0; j < V; ++j) {
          float h[kRowBatch], s = 0.0f;
#pragma unroll
          for (int u = 0; u < kRowBatch; ++u) {
            h[u] = u < nb ? to_f32(buf[u].v[j]) + e[j] : 0.0f;
            s += h[u];
          }
          const float bm = s * inv_nb;
          float bm2 = 0.0f;
#pragma unroll
          for (int u = 0; u < kRowBatch; ++u) {
            const float dv = u < nb ? h[u] - bm : 0.0f;
            bm2 += dv * dv;
          }
          const float delta = bm - mean[j];
          mean[j] += delta * wb;
          m2[j] += bm2 + delta * delta * n * wb;
        }
        n = total;
      }
#pragma unroll
      for (int j = 0; j < V; ++j) {
        row_mean[ty * pass_channels + tx * V + j] = mean[j];
        row_m2[ty * pass_channels + tx * V + j] = m2[j];
      }
    }
    __syncthreads();
    // Merge the R thread rows of each channel, in row order: count-weighted mean first, then M2
    // about it (the thread rows' counts differ by at most one).
    const int64_t in_pass = min(static_cast<int64_t>(cols), nvec - cv0) * V;
    for (int64_t i = ty * cols + tx; i < in_pass; i += cols * R) {
      float wsum = 0.0f;
      for (int r = 0; r < R; ++r) wsum += static_cast<float>(rows_of(q.L, r, R)) * row_mean[r * pass_channels + i];
      const float cm = wsum / static_cast<float>(q.L);
      float cm2 = 0.0f;
      for (int r = 0; r < R; ++r) {
        const float nr = static_cast<float>(rows_of(q.L, r, R)), dv = row_mean[r * pass_channels + i] - cm;
        cm2 += row_m2[r * pass_channels + i] + nr * dv * dv;
      }
      chan_mean[cv0 * V + i] = cm;
      chan_m2[cv0 * V + i] = cm2;
    }
    __syncthreads();
  }

  // One warp per group intersecting the tile: every channel has count L, so the group's mean is
  // the mean of its channel means and M2 adds L * (channel mean - group mean)^2 per channel.
  // Only full warps take part: the block may end in a partial one (e.g. 40 columns x 6 rows),
  // whose missing lanes would break the full-mask shuffles. There are at least 4 full warps.
  const int lane = (ty * cols + tx) & 31, warp = (ty * cols + tx) >> 5;
  const int warps = (cols * R) >> 5;
  const int64_t g_first = q.c0 / sh.Cg, g_last = (q.c0 + q.len - 1) / sh.Cg;
  float* out = part + ((q.b * sh.chunks + q.chunk) * sh.tiles + q.t) * sh.slots * 3;
  for (int64_t g = g_first + warp; warp < warps && g <= g_last; g += warps) {
    const int64_t lo = max(g * sh.Cg, q.c0) - q.c0, hi = min((g + 1) * sh.Cg, q.c0 + q.len) - q.c0;
    float s = 0.0f;
    for (int64_t i = lo + lane; i < hi; i += 32) s += chan_mean[i];
    const float gm = warp_sum(s) / static_cast<float>(hi - lo);
    float m2 = 0.0f;
    for (int64_t i = lo + lane; i < hi; i += 32) {
      const float dv = chan_mean[i] - gm;
      m2 += chan_m2[i] + static_cast<float>(q.L) * dv * dv;
    }
    m2 = warp_sum(m2);
    if (lane == 0) {
      float* o = out + (g - g_first) * 3;
      o[0] = static_cast<float>(q.L * (hi - lo));
      o[1] = gm;
      o[2] = m2;
    }
  }
}

// One warp per (b, group): Chan-merge the partials of every (tile, chunk) that holds the group.
__global__ void __launch_bounds__(kThreads) gn_finalize_kernel(
    const float* __restrict__ part,  // stats kernel's partials
    float* __restrict__ mean,        // (B, G) out: group mean of h
    float* __restrict__ rstd,        // (B, G) out: 1 / sqrt(var + eps)
    Shape sh, float eps) {
  const int64_t pair = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (pair >= sh.B * sh.G) return;  // warp-uniform: the whole warp leaves together
  const int64_t b = pair / sh.G, g = pair % sh.G;
  const int64_t t_first = g * sh.Cg / sh.tile, t_last = ((g + 1) * sh.Cg - 1) / sh.tile;
  const int64_t items = (t_last - t_first + 1) * sh.chunks;
  Stats s{0.0f, 0.0f, 0.0f};
  for (int64_t i = lane; i < items; i += 32) {
    const int64_t t = t_first + i / sh.chunks, chunk = i % sh.chunks;
    const int64_t slot = g - t * sh.tile / sh.Cg;
    const float* p = part + (((b * sh.chunks + chunk) * sh.tiles + t) * sh.slots + slot) * 3;
    s = merge(s, Stats{p[0], p[1], p[2]});
  }
  s = warp_merge(s);
  if (lane == 0) {
    mean[pair] = s.mean;
    rstd[pair] = 1.0f / sqrtf(s.m2 / s.n + eps);
  }
}

// y = silu?((h - mean) * a + d), a = rstd * k and d per channel, computed once per thread vector.
template <typename T, int V, bool kSilu>
__global__ void __launch_bounds__(kThreads, 2) gn_apply_kernel(
    const T* __restrict__ x,         // (B, S, C) input
    T* __restrict__ y,               // (B, S, C) output
    Operands<T> o,                   // optional weight, bias, emb, scale, shift
    const float* __restrict__ mean,  // (B, G) from the finalize kernel
    const float* __restrict__ rstd,  // (B, G)
    Shape sh) {
  const BlockPos q = block_pos(sh);
  const int tx = threadIdx.x, ty = threadIdx.y, R = blockDim.y, cols = blockDim.x;
  const int64_t nvec = q.len / V, base = (q.b * sh.S + q.s0) * sh.C;
  for (int64_t cv = tx; cv < nvec; cv += cols) {
    const int64_t c = q.c0 + cv * V;
    float e[V], m[V], a[V], d[V];
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const int64_t bg = q.b * sh.G + (c + j) / sh.Cg;
      affine_of(o, q.b, sh.C, c + j, a[j], d[j]);
      a[j] *= rstd[bg];
      m[j] = mean[bg];
      e[j] = emb_of(o, q.b, sh.C, c + j);
    }
    for (int64_t r0 = ty; r0 < q.L; r0 += static_cast<int64_t>(R) * kRowBatch) {
      Vec<T, V> buf[kRowBatch];
      const int nb = load_rows<T, V, kRowBatch>(x + base + c, r0, R, q.L, sh.C, buf);
#pragma unroll
      for (int u = 0; u < kRowBatch; ++u) {
        if (u < nb) {
          Vec<T, V> out;
#pragma unroll
          for (int j = 0; j < V; ++j) {
            float z = ((to_f32(buf[u].v[j]) + e[j]) - m[j]) * a[j] + d[j];
            if (kSilu) z = silu(z);
            out.v[j] = from_f32<T>(z);
          }
          *reinterpret_cast<Vec<T, V>*>(y + base + (r0 + static_cast<int64_t>(u) * R) * sh.C + c) = out;
        }
      }
    }
  }
}

// --- backward -----------------------------------------------------------------------------------

// dz = dL/dz from dy (through silu' when the forward applied silu) and n, for one element.
template <bool kSilu>
__device__ __forceinline__ float dz_of(float dy, float n, float k, float d) {
  return kSilu ? dy * silu_grad(n * k + d) : dy;
}

// Per (b, chunk, channel): sums over the chunk of dz, dz * n and n, to red[3][B, chunks, C].
template <typename T, int V, bool kSilu>
__global__ void __launch_bounds__(kThreads, 2) gn_bwd_reduce_kernel(
    const T* __restrict__ dy,        // (B, S, C) gradient of y
    const T* __restrict__ x,         // (B, S, C) forward input
    Operands<T> o,                   // the forward's optional operands
    const float* __restrict__ mean,  // (B, G) saved by the forward
    const float* __restrict__ rstd,  // (B, G)
    float* __restrict__ red,         // (3, B, chunks, C) workspace
    Shape sh) {
  __shared__ float rows_buf[3][kThreads * V];  // [quantity][thread row][channel of the pass]
  const BlockPos q = block_pos(sh);
  const int tx = threadIdx.x, ty = threadIdx.y, R = blockDim.y, cols = blockDim.x;
  const int64_t nvec = q.len / V, base = (q.b * sh.S + q.s0) * sh.C;
  const int pass_channels = cols * V;
  const int64_t plane = sh.B * sh.chunks * sh.C;  // elements per quantity of red
  for (int64_t cv0 = 0; cv0 < nvec; cv0 += cols) {  // block-uniform bounds: barriers are safe
    const int64_t cv = cv0 + tx;
    if (cv < nvec) {
      const int64_t c = q.c0 + cv * V;
      float e[V], m[V], rs[V], k[V], d[V], sdz[V], sdzn[V], sn[V];
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const int64_t bg = q.b * sh.G + (c + j) / sh.Cg;
        affine_of(o, q.b, sh.C, c + j, k[j], d[j]);
        m[j] = mean[bg];
        rs[j] = rstd[bg];
        e[j] = emb_of(o, q.b, sh.C, c + j);
        sdz[j] = sdzn[j] = sn[j] = 0.0f;
      }
      for (int64_t r0 = ty; r0 < q.L; r0 += static_cast<int64_t>(R) * kRowBatchBwd) {
        Vec<T, V> xs[kRowBatchBwd], gs[kRowBatchBwd];
        const int nb = load_rows<T, V, kRowBatchBwd>(x + base + c, r0, R, q.L, sh.C, xs);
        load_rows<T, V, kRowBatchBwd>(dy + base + c, r0, R, q.L, sh.C, gs);
#pragma unroll
        for (int u = 0; u < kRowBatchBwd; ++u) {
          if (u < nb) {
#pragma unroll
            for (int j = 0; j < V; ++j) {
              const float n = ((to_f32(xs[u].v[j]) + e[j]) - m[j]) * rs[j];
              const float dz = dz_of<kSilu>(to_f32(gs[u].v[j]), n, k[j], d[j]);
              sdz[j] += dz;
              sdzn[j] += dz * n;
              sn[j] += n;
            }
          }
        }
      }
#pragma unroll
      for (int j = 0; j < V; ++j) {
        rows_buf[0][ty * pass_channels + tx * V + j] = sdz[j];
        rows_buf[1][ty * pass_channels + tx * V + j] = sdzn[j];
        rows_buf[2][ty * pass_channels + tx * V + j] = sn[j];
      }
    }
    __syncthreads();
    const int64_t in_pass = min(static_cast<int64_t>(cols), nvec - cv0) * V;
    for (int64_t i = ty * cols + tx; i < in_pass; i += cols * R) {
      const int64_t at = (q.b * sh.chunks + q.chunk) * sh.C + q.c0 + cv0 * V + i;
#pragma unroll
      for (int w = 0; w < 3; ++w) {
        float s = 0.0f;
        for (int r = 0; r < R; ++r) s += rows_buf[w][r * pass_channels + i];  // row order: reproducible
        red[w * plane + at] = s;
      }
    }
    __syncthreads();
  }
}

// One warp per (b, group): per-channel sums over the chunks (in chunk order), the outputs, and
// the group terms c1 = mean_g(k dz), c2 = mean_g(k dz n) for the dx kernel.
template <typename T>
__global__ void __launch_bounds__(kThreads) gn_bwd_finalize_kernel(
    const float* __restrict__ red,   // (3, B, chunks, C) from the reduce kernel
    Operands<T> o,                   // weight and scale are read (k)
    const float* __restrict__ rstd,  // (B, G)
    float* __restrict__ sum_dz,      // (B, C) out: sum_s dz
    float* __restrict__ sum_dz_n,    // (B, C) out: sum_s dz * n
    float* __restrict__ d_emb,       // (B, C) out: sum_s dh; holds sum_s n until the second loop
    float* __restrict__ terms,       // (B, G, 2) workspace out: c1, c2
    Shape sh) {
  const int64_t pair = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (pair >= sh.B * sh.G) return;  // warp-uniform
  const int64_t b = pair / sh.G, g = pair % sh.G;
  const int64_t plane = sh.B * sh.chunks * sh.C;
  float kdz = 0.0f, kdzn = 0.0f;
  for (int64_t c = g * sh.Cg + lane; c < (g + 1) * sh.Cg; c += 32) {
    float s[3] = {0.0f, 0.0f, 0.0f};
    for (int64_t chunk = 0; chunk < sh.chunks; ++chunk) {
      const int64_t at = (b * sh.chunks + chunk) * sh.C + c;
#pragma unroll
      for (int w = 0; w < 3; ++w) s[w] += red[w * plane + at];
    }
    const float k = gain_of(o, b, sh.C, c);
    sum_dz[b * sh.C + c] = s[0];
    sum_dz_n[b * sh.C + c] = s[1];
    d_emb[b * sh.C + c] = s[2];
    kdz += k * s[0];
    kdzn += k * s[1];
  }
  const float inv_n = 1.0f / (static_cast<float>(sh.Cg) * static_cast<float>(sh.S));
  const float c1 = warp_sum(kdz) * inv_n, c2 = warp_sum(kdzn) * inv_n;
  const float r = rstd[pair];
  // The same lane wrote these channels above: its own writes, no barrier needed.
  for (int64_t c = g * sh.Cg + lane; c < (g + 1) * sh.Cg; c += 32) {
    const float k = gain_of(o, b, sh.C, c);
    const int64_t bc = b * sh.C + c;
    d_emb[bc] = r * (k * sum_dz[bc] - static_cast<float>(sh.S) * c1 - d_emb[bc] * c2);
  }
  if (lane == 0) {
    terms[pair * 2] = c1;
    terms[pair * 2 + 1] = c2;
  }
}

// dx = rstd * (k dz - c1 - n c2), n and dz recomputed from x and dy.
template <typename T, int V, bool kSilu>
__global__ void __launch_bounds__(kThreads, 2) gn_dx_kernel(
    const T* __restrict__ dy,         // (B, S, C) gradient of y
    const T* __restrict__ x,          // (B, S, C) forward input
    T* __restrict__ dx,               // (B, S, C) out
    Operands<T> o,                    // the forward's optional operands
    const float* __restrict__ mean,   // (B, G)
    const float* __restrict__ rstd,   // (B, G)
    const float* __restrict__ terms,  // (B, G, 2) c1, c2 from the finalize kernel
    Shape sh) {
  const BlockPos q = block_pos(sh);
  const int tx = threadIdx.x, ty = threadIdx.y, R = blockDim.y, cols = blockDim.x;
  const int64_t nvec = q.len / V, base = (q.b * sh.S + q.s0) * sh.C;
  for (int64_t cv = tx; cv < nvec; cv += cols) {
    const int64_t c = q.c0 + cv * V;
    float e[V], m[V], rs[V], k[V], d[V], c1[V], c2[V];
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const int64_t bg = q.b * sh.G + (c + j) / sh.Cg;
      affine_of(o, q.b, sh.C, c + j, k[j], d[j]);
      m[j] = mean[bg];
      rs[j] = rstd[bg];
      c1[j] = terms[bg * 2];
      c2[j] = terms[bg * 2 + 1];
      e[j] = emb_of(o, q.b, sh.C, c + j);
    }
    for (int64_t r0 = ty; r0 < q.L; r0 += static_cast<int64_t>(R) * kRowBatchBwd) {
      Vec<T, V> xs[kRowBatchBwd], gs[kRowBatchBwd];
      const int nb = load_rows<T, V, kRowBatchBwd>(x + base + c, r0, R, q.L, sh.C, xs);
      load_rows<T, V, kRowBatchBwd>(dy + base + c, r0, R, q.L, sh.C, gs);
#pragma unroll
      for (int u = 0; u < kRowBatchBwd; ++u) {
        if (u < nb) {
          Vec<T, V> out;
#pragma unroll
          for (int j = 0; j < V; ++j) {
            const float n = ((to_f32(xs[u].v[j]) + e[j]) - m[j]) * rs[j];
            const float dz = dz_of<kSilu>(to_f32(gs[u].v[j]), n, k[j], d[j]);
            out.v[j] = from_f32<T>(rs[j] * (dz * k[j] - c1[j] - n * c2[j]));
          }
          *reinterpret_cast<Vec<T, V>*>(dx + base + (r0 + static_cast<int64_t>(u) * R) * sh.C + c) = out;
        }
      }
    }
  }
}

// --- launch -------------------------------------------------------------------------------------

bool aligned(const void* p, int bytes) { return (reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(bytes)) == 0; }

int sm_count() {
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || sms <= 0) {
    cudaGetLastError();  // a failed query must not surface as the next launch's error
    return 108;          // A100's count: a sane split when the query fails
  }
  return sms;
}

// tensors: the (B, S, C) operands the vector loads and stores touch (their alignment bounds V).
// min_rows: fewest positions per chunk (more rows per chunk, less workspace traffic per element).
Plan make_plan(int elem_bytes, const void* const* tensors, int ntensors, int64_t B, int64_t S, int64_t C,
               int64_t G, int64_t min_rows) {
  Plan p{};
  // V: the widest vector (16 bytes, else 2 channels, else 1) that divides C and suits every
  // pointer; each thread then moves V channels per load with its rows' loads issued together.
  const int candidates[3] = {16 / elem_bytes, 2, 1};
  for (int v : candidates) {
    bool ok = C % v == 0;
    for (int i = 0; i < ntensors; ++i) ok = ok && aligned(tensors[i], v * elem_bytes);
    if (ok) { p.vec = v; break; }
  }
  const int64_t Cg = C / G;
  // Tiles of whole groups where possible, so most blocks write one partial per group; a group
  // wider than kMaxTile is split over tiles (its partials merge in the finalize all the same).
  p.tile = 0;
  if (C <= kMaxTile) {
    p.tile = C;
  } else {
    for (int64_t gpt = kMaxTile / Cg; gpt >= 1 && p.tile == 0; --gpt)
      if (G % gpt == 0 && (gpt * Cg) % p.vec == 0) p.tile = gpt * Cg;
    if (p.tile == 0) p.tile = kMaxTile;  // a multiple of every V
  }
  p.tiles = (C + p.tile - 1) / p.tile;
  p.slots = 1;
  for (int64_t t = 0; t < p.tiles; ++t) {
    const int64_t c0 = t * p.tile, c1 = (c0 + p.tile < C ? c0 + p.tile : C) - 1;
    const int64_t k = c1 / Cg - c0 / Cg + 1;
    if (k > p.slots) p.slots = k;
  }
  // Threads: as many columns as the tile has vectors (up to the block), the rest as rows, so a
  // warp reads whole rows of the tile: contiguous, coalesced memory.
  const int64_t nvec = p.tile / p.vec;
  p.cols = static_cast<int>(nvec < kThreads ? nvec : kThreads);
  p.rows = kThreads / p.cols;
  // Chunks: enough blocks for ~4 per SM, but at least one batch of rows per thread row and
  // min_rows positions per chunk.
  const int64_t want_blocks = 4LL * sm_count();
  const int64_t per_sample = (want_blocks + B * p.tiles - 1) / (B * p.tiles);
  int64_t L = (S + per_sample - 1) / per_sample;
  const int64_t floor_rows = static_cast<int64_t>(p.rows) * kRowBatch > min_rows ? static_cast<int64_t>(p.rows) * kRowBatch : min_rows;
  if (L < floor_rows) L = floor_rows;
  if (L > S) L = S;
  p.chunk_rows = L;
  p.chunks = (S + L - 1) / L;
  p.blocks = B * p.tiles * p.chunks;
  return p;
}

int64_t warp_blocks(int64_t B, int64_t G) { return (B * G + kWarps - 1) / kWarps; }

bool grid_fits(int64_t blocks) { return blocks > 0 && blocks <= 0x7FFFFFFFLL; }

template <typename T, int V>
int launch_forward(const Plan& p, const Shape& sh, const T* x, Operands<T> o, T* y, float* mean, float* rstd,
                   float eps, bool silu, float* part, cudaStream_t stream) {
  const dim3 block(p.cols, p.rows);
  gn_stats_kernel<T, V><<<static_cast<unsigned>(p.blocks), block, 0, stream>>>(x, o.emb, part, sh);
  gn_finalize_kernel<<<static_cast<unsigned>(warp_blocks(sh.B, sh.G)), kThreads, 0, stream>>>(part, mean, rstd, sh, eps);
  if (silu) gn_apply_kernel<T, V, true><<<static_cast<unsigned>(p.blocks), block, 0, stream>>>(x, y, o, mean, rstd, sh);
  else gn_apply_kernel<T, V, false><<<static_cast<unsigned>(p.blocks), block, 0, stream>>>(x, y, o, mean, rstd, sh);
  return static_cast<int>(cudaGetLastError());
}

template <typename T, int V>
int launch_backward(const Plan& p, const Shape& sh, const T* dy, const T* x, Operands<T> o, const float* mean,
                    const float* rstd, T* dx, float* sum_dz, float* sum_dz_n, float* d_emb, bool silu, float* red,
                    float* terms, cudaStream_t stream) {
  const dim3 block(p.cols, p.rows);
  const unsigned blocks = static_cast<unsigned>(p.blocks);
  if (silu) gn_bwd_reduce_kernel<T, V, true><<<blocks, block, 0, stream>>>(dy, x, o, mean, rstd, red, sh);
  else gn_bwd_reduce_kernel<T, V, false><<<blocks, block, 0, stream>>>(dy, x, o, mean, rstd, red, sh);
  gn_bwd_finalize_kernel<T><<<static_cast<unsigned>(warp_blocks(sh.B, sh.G)), kThreads, 0, stream>>>(
      red, o, rstd, sum_dz, sum_dz_n, d_emb, terms, sh);
  if (silu) gn_dx_kernel<T, V, true><<<blocks, block, 0, stream>>>(dy, x, dx, o, mean, rstd, terms, sh);
  else gn_dx_kernel<T, V, false><<<blocks, block, 0, stream>>>(dy, x, dx, o, mean, rstd, terms, sh);
  return static_cast<int>(cudaGetLastError());
}

size_t forward_workspace(const Plan& p, int64_t B) {
  return static_cast<size_t>(B * p.chunks * p.tiles * p.slots * 3) * sizeof(float);
}

size_t backward_workspace(const Plan& p, int64_t B, int64_t C, int64_t G) {
  return static_cast<size_t>(3 * B * p.chunks * C + 2 * B * G) * sizeof(float);
}

bool valid_sizes(int64_t B, int64_t S, int64_t C, int64_t G) {
  return B > 0 && S > 0 && C > 0 && G > 0 && C % G == 0;
}

template <typename T>
int forward_typed(const void* x, const void* weight, const void* bias, const void* emb, const void* scale,
                  const void* shift, void* y, float* mean, float* rstd, int64_t B, int64_t S, int64_t C, int64_t G,
                  float eps, bool silu, void* workspace, size_t* workspace_bytes, cudaStream_t stream) {
  const void* tensors[2] = {x, y};
  const Plan p = make_plan(sizeof(T), tensors, 2, B, S, C, G, 1);
  const size_t need = forward_workspace(p, B);
  if (workspace == nullptr) { *workspace_bytes = need; return 0; }
  if (*workspace_bytes < need || !grid_fits(p.blocks) || !grid_fits(warp_blocks(B, G)))
    return static_cast<int>(cudaErrorInvalidValue);
  const Shape sh = shape_of(p, B, S, C, G);
  const Operands<T> o{static_cast<const T*>(weight), static_cast<const T*>(bias), static_cast<const T*>(emb),
                      static_cast<const T*>(scale), static_cast<const T*>(shift)};
  const T* xt = static_cast<const T*>(x);
  T* yt = static_cast<T*>(y);
  float* part = static_cast<float*>(workspace);
  constexpr int kWide = 16 / sizeof(T);
  switch (p.vec) {
    case kWide: return launch_forward<T, kWide>(p, sh, xt, o, yt, mean, rstd, eps, silu, part, stream);
    case 2: return launch_forward<T, 2>(p, sh, xt, o, yt, mean, rstd, eps, silu, part, stream);
    default: return launch_forward<T, 1>(p, sh, xt, o, yt, mean, rstd, eps, silu, part, stream);
  }
}

template <typename T>
int backward_typed(const void* dy, const void* x, const void* weight, const void* bias, const void* emb,
                   const void* scale, const void* shift, const float* mean, const float* rstd, void* dx,
                   float* sum_dz, float* sum_dz_n, float* d_emb, int64_t B, int64_t S, int64_t C, int64_t G, bool silu,
                   void* workspace, size_t* workspace_bytes, cudaStream_t stream) {
  const void* tensors[3] = {dy, x, dx};
  // 64 positions per chunk at least: the reduce writes 3 floats per (chunk, channel).
  const Plan p = make_plan(sizeof(T), tensors, 3, B, S, C, G, 64);
  const size_t need = backward_workspace(p, B, C, G);
  if (workspace == nullptr) { *workspace_bytes = need; return 0; }
  if (*workspace_bytes < need || !grid_fits(p.blocks) || !grid_fits(warp_blocks(B, G)))
    return static_cast<int>(cudaErrorInvalidValue);
  const Shape sh = shape_of(p, B, S, C, G);
  const Operands<T> o{static_cast<const T*>(weight), static_cast<const T*>(bias), static_cast<const T*>(emb),
                      static_cast<const T*>(scale), static_cast<const T*>(shift)};
  const T* dyt = static_cast<const T*>(dy);
  const T* xt = static_cast<const T*>(x);
  T* dxt = static_cast<T*>(dx);
  float* red = static_cast<float*>(workspace);
  float* terms = red + 3 * B * p.chunks * C;
  constexpr int kWide = 16 / sizeof(T);
  switch (p.vec) {
    case kWide:
      return launch_backward<T, kWide>(p, sh, dyt, xt, o, mean, rstd, dxt, sum_dz, sum_dz_n, d_emb, silu, red, terms, stream);
    case 2:
      return launch_backward<T, 2>(p, sh, dyt, xt, o, mean, rstd, dxt, sum_dz, sum_dz_n, d_emb, silu, red, terms, stream);
    default:
      return launch_backward<T, 1>(p, sh, dyt, xt, o, mean, rstd, dxt, sum_dz, sum_dz_n, d_emb, silu, red, terms, stream);
  }
}

}  // namespace

int group_norm_forward_cuda(int dtype, const void* x, const void* weight, const void* bias, const void* emb,
                            const void* scale, const void* shift, void* y, float* mean, float* rstd, int64_t batch,
                            int64_t spatial, int64_t channels, int64_t groups, float eps, bool silu, void* workspace,
                            size_t* workspace_bytes, cudaStream_t stream) {
  if (!valid_sizes(batch, spatial, channels, groups) || workspace_bytes == nullptr)
    return static_cast<int>(cudaErrorInvalidValue);
  switch (dtype) {
    case kFloat32:
      return forward_typed<float>(x, weight, bias, emb, scale, shift, y, mean, rstd, batch, spatial, channels, groups,
                                  eps, silu, workspace, workspace_bytes, stream);
    case kFloat16:
      return forward_typed<__half>(x, weight, bias, emb, scale, shift, y, mean, rstd, batch, spatial, channels, groups,
                                   eps, silu, workspace, workspace_bytes, stream);
    case kBFloat16:
      return forward_typed<__nv_bfloat16>(x, weight, bias, emb, scale, shift, y, mean, rstd, batch, spatial, channels,
                                          groups, eps, silu, workspace, workspace_bytes, stream);
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}

int group_norm_backward_cuda(int dtype, const void* dy, const void* x, const void* weight, const void* bias,
                             const void* emb, const void* scale, const void* shift, const float* mean, const float* rstd,
                             void* dx, float* sum_dz, float* sum_dz_n, float* d_emb, int64_t batch, int64_t spatial,
                             int64_t channels, int64_t groups, bool silu, void* workspace, size_t* workspace_bytes,
                             cudaStream_t stream) {
  if (!valid_sizes(batch, spatial, channels, groups) || workspace_bytes == nullptr)
    return static_cast<int>(cudaErrorInvalidValue);
  switch (dtype) {
    case kFloat32:
      return backward_typed<float>(dy, x, weight, bias, emb, scale, shift, mean, rstd, dx, sum_dz, sum_dz_n, d_emb, batch,
                                   spatial, channels, groups, silu, workspace, workspace_bytes, stream);
    case kFloat16:
      return backward_typed<__half>(dy, x, weight, bias, emb, scale, shift, mean, rstd, dx, sum_dz, sum_dz_n, d_emb,
                                    batch, spatial, channels, groups, silu, workspace, workspace_bytes, stream);
    case kBFloat16:
      return backward_typed<__nv_bfloat16>(dy, x, weight, bias, emb, scale, shift, mean, rstd, dx, sum_dz, sum_dz_n,
                                           d_emb, batch, spatial, channels, groups, silu, workspace, workspace_bytes,
                                           stream);
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}

}  // namespace fastgen

// Element-type conversion with the kernels' own routines (csrc/dtypes.h): 16-bit input through
// floats_of, 16-bit output through store_floats, a tile at a time as the kernels do, so the F16C
// instructions of the avx2 / avx512 libraries and the arithmetic conversion (the baseline library,
// and every tile's tail) are both what the tests compare with torch, bit for bit, on all 65536
// half values and a dense sweep of floats.
#include <stdint.h>
#include <string.h>

#include <type_traits>

#include "../dtypes.h"
#include "signature.h"

namespace fastgen {
namespace {

constexpr int64_t kTile = 1000;  // not a multiple of 8: every tile has a tail

template <typename In, typename Out>
void convert(const In* in, Out* out, int64_t n) {
  alignas(64) float buf[kTile];
  for (int64_t i = 0; i < n; i += kTile) {
    const int64_t k = n - i < kTile ? n - i : kTile;
    const float* f = floats_of(in + i, k, buf);
    if constexpr (std::is_same_v<Out, float>) memcpy(out + i, f, static_cast<size_t>(k) * sizeof(float));
    else store_floats(f, k, out + i);
  }
}

template <typename In>
int convert_from(const In* in, int to_dtype, void* out, int64_t n) {
  switch (to_dtype) {
    case kFloat32: convert(in, static_cast<float*>(out), n); return 0;
    case kFloat16: convert(in, static_cast<Half*>(out), n); return 0;
    case kBFloat16: convert(in, static_cast<BFloat16*>(out), n); return 0;
    default: return 1;
  }
}

}  // namespace
}  // namespace fastgen

using namespace fastgen;

// out[i] = in[i] converted from from_dtype to to_dtype (codes of dtypes.h) through float32, i < n.
// Returns 0, or 1 for an unknown dtype code.
extern "C" int fastgen_convert_cpu(int from_dtype, int to_dtype, const void* in, void* out, int64_t n) {
  switch (from_dtype) {
    case kFloat32: return convert_from(static_cast<const float*>(in), to_dtype, out, n);
    case kFloat16: return convert_from(static_cast<const Half*>(in), to_dtype, out, n);
    case kBFloat16: return convert_from(static_cast<const BFloat16*>(in), to_dtype, out, n);
    default: return 1;
  }
}

FASTGEN_EXPORT_SIGNATURE(fastgen_convert_cpu)

// The argument list of an exported C kernel, as a string generated from the function's own type,
// so the ctypes side (fastgen/_cpu_signatures.py) can check at load time that it calls each kernel
// with the arguments the compiled library takes: a mismatch would otherwise corrupt memory
// instead of raising. One letter per argument: i int, l int64_t, f float, d double, p pointer.
#pragma once

#include <stdint.h>

#include <array>

namespace fastgen {

template <typename T> struct ArgCode;
template <> struct ArgCode<int> { static constexpr char value = 'i'; };
template <> struct ArgCode<int64_t> { static constexpr char value = 'l'; };
template <> struct ArgCode<float> { static constexpr char value = 'f'; };
template <> struct ArgCode<double> { static constexpr char value = 'd'; };
template <typename T> struct ArgCode<T*> { static constexpr char value = 'p'; };

// "i:ipppl..." : the return type's letter, a colon, then the arguments' letters.
template <typename R, typename... A>
constexpr std::array<char, sizeof...(A) + 3> signature_of(R (*)(A...)) {
  return {ArgCode<R>::value, ':', ArgCode<A>::value..., '\0'};
}

}  // namespace fastgen

// Exports `const char* <fn>_signature(void)` next to the kernel `fn`.
#define FASTGEN_EXPORT_SIGNATURE(fn)                                        \
  extern "C" const char* fn##_signature() {                                \
    static constexpr auto kSignature = fastgen::signature_of(&fn);         \
    return kSignature.data();                                              \
  }

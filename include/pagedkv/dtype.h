// Scalar conversions between f32 and the 16-bit storage dtypes, rounding to nearest even.
// Kernels convert in SIMD registers; these serve writes, read-back and references.
#ifndef PAGEDKV_DTYPE_H_
#define PAGEDKV_DTYPE_H_

#include <cstdint>
#include <cstring>

#include "pagedkv/config.h"

namespace pagedkv {

inline uint32_t BitsOf(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

inline float FloatOf(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

inline float F32FromBF16(uint16_t h) { return FloatOf(uint32_t{h} << 16); }

inline uint16_t BF16FromF32(float f) {
  const uint32_t u = BitsOf(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
  const uint32_t rounding_bias = 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>((u + rounding_bias) >> 16);
}

inline float F32FromF16(uint16_t h) {
  constexpr uint32_t kShiftedExponent = 0x7c00u << 13;
  uint32_t u = (uint32_t{h} & 0x7fffu) << 13;
  const uint32_t exponent = u & kShiftedExponent;
  u += (127u - 15u) << 23;
  float f;
  if (exponent == kShiftedExponent) {  // Inf or NaN.
    u += (128u - 16u) << 23;
    f = FloatOf(u);
  } else if (exponent == 0) {  // Zero or subnormal: renormalize through a float subtraction.
    u += 1u << 23;
    f = FloatOf(u) - FloatOf(113u << 23);
  } else {
    f = FloatOf(u);
  }
  return FloatOf(BitsOf(f) | ((uint32_t{h} & 0x8000u) << 16));
}

inline uint16_t F16FromF32(float f) {
  uint32_t u = BitsOf(f);
  const uint32_t sign = u & 0x80000000u;
  u ^= sign;
  uint32_t h;
  if (u >= ((127u + 16u) << 23)) {  // |f| >= 65536: Inf, or NaN kept quiet.
    h = u > 0x7f800000u ? 0x7e00u : 0x7c00u;
  } else if (u < (113u << 23)) {  // Result is subnormal or zero: let an f32 add do the rounding.
    const float denorm_magic = FloatOf(((127u - 15u) + (23u - 10u) + 1u) << 23);
    h = BitsOf(FloatOf(u) + denorm_magic) - BitsOf(denorm_magic);
  } else {
    const uint32_t mantissa_odd = (u >> 13) & 1u;
    u += ((15u - 127u) << 23) + 0xfffu + mantissa_odd;
    h = u >> 13;
  }
  return static_cast<uint16_t>(h | (sign >> 16));
}

// dst[i] = src[i] rounded to `dtype`, for i in [0, n). dst holds n elements of `dtype`.
void ConvertFromF32(DType dtype, const float* src, int64_t n, void* dst);
// dst[i] = src[i] widened to f32, for i in [0, n). src holds n elements of `dtype`.
void ConvertToF32(DType dtype, const void* src, int64_t n, float* dst);
// `x` rounded to `dtype` and back: the value a reader of the cache will see.
float RoundTrip(DType dtype, float x);

}  // namespace pagedkv

#endif  // PAGEDKV_DTYPE_H_

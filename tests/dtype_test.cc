#include "pagedkv/dtype.h"

#include <cmath>
#include <cstring>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace pagedkv {
namespace {

// Slow reference: the nearer of the two bf16 neighbours of x, ties to the even one.
uint16_t ReferenceBF16(float x) {
  if (std::isnan(x)) return static_cast<uint16_t>((BitsOf(x) >> 16) | 0x40);
  const uint16_t lo = static_cast<uint16_t>(BitsOf(x) >> 16);
  const uint16_t hi = static_cast<uint16_t>(lo + 1);
  // Past the largest finite value, IEEE rounding treats infinity as 2^128.
  auto value = [](uint16_t b) {
    const float f = F32FromBF16(b);
    return std::isinf(f) ? std::copysign(std::ldexp(1.0, 128), f) : static_cast<double>(f);
  };
  if (std::isinf(x)) return lo;
  const double d_lo = std::fabs(static_cast<double>(x) - value(lo));
  const double d_hi = std::fabs(static_cast<double>(x) - value(hi));
  if (d_lo != d_hi) return d_lo < d_hi ? lo : hi;
  return (lo & 1) == 0 ? lo : hi;
}

std::vector<float> EdgeFloats() {
  std::vector<float> v = {0.0f,      -0.0f,     1.0f,    -1.0f,   65504.0f, 65519.99f, 65520.0f,
                          65536.0f,  1e-8f,     6.1e-5f, 5.96e-8f, 2.98e-8f, 3.0e-8f,  1e38f,
                          -3.4e38f,  std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity(),
                          std::numeric_limits<float>::denorm_min(), 1.00390625f, 1.0078125f,
                          1.01171875f};
  std::mt19937 rng(7);
  std::uniform_int_distribution<uint32_t> bits;
  for (int i = 0; i < 200000; ++i) {
    const float f = FloatOf(bits(rng));
    if (!std::isnan(f)) v.push_back(f);
  }
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (int i = 0; i < 100000; ++i) v.push_back(normal(rng));
  return v;
}

TEST(DTypeTest, BF16MatchesSlowReference) {
  for (float x : EdgeFloats()) {
    ASSERT_EQ(BF16FromF32(x), ReferenceBF16(x)) << "x = " << x;
  }
}

TEST(DTypeTest, BF16RoundTripsEveryValue) {
  for (uint32_t b = 0; b < 0x10000; ++b) {
    const float f = F32FromBF16(static_cast<uint16_t>(b));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(F32FromBF16(BF16FromF32(f))));
      continue;
    }
    ASSERT_EQ(BF16FromF32(f), b);
  }
}

#if defined(__FLT16_MAX__)
// The compiler's _Float16 conversions (IEEE round to nearest even) are the oracle.
TEST(DTypeTest, F16WidensLikeCompiler) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    _Float16 half;
    const uint16_t bits = static_cast<uint16_t>(h);
    std::memcpy(&half, &bits, 2);
    const float want = static_cast<float>(half);
    const float got = F32FromF16(bits);
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << h;
    } else {
      ASSERT_EQ(BitsOf(got), BitsOf(want)) << "half bits " << h;
    }
  }
}

TEST(DTypeTest, F16NarrowsLikeCompiler) {
  for (float x : EdgeFloats()) {
    const _Float16 half = static_cast<_Float16>(x);
    uint16_t want;
    std::memcpy(&want, &half, 2);
    ASSERT_EQ(F16FromF32(x), want) << "x = " << x;
  }
}
#endif

TEST(DTypeTest, NaNStaysNaN) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT_TRUE(std::isnan(F32FromF16(F16FromF32(nan))));
  EXPECT_TRUE(std::isnan(F32FromBF16(BF16FromF32(nan))));
}

TEST(DTypeTest, ConvertArraysMatchScalar) {
  const std::vector<float> src = {1.5f, -2.25f, 3.14159f, 1e-6f, 70000.0f};
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
    std::vector<uint8_t> stored(src.size() * DTypeSize(dtype));
    ConvertFromF32(dtype, src.data(), static_cast<int64_t>(src.size()), stored.data());
    std::vector<float> back(src.size());
    ConvertToF32(dtype, stored.data(), static_cast<int64_t>(src.size()), back.data());
    for (size_t i = 0; i < src.size(); ++i) {
      EXPECT_EQ(BitsOf(back[i]), BitsOf(RoundTrip(dtype, src[i]))) << DTypeName(dtype) << " " << i;
    }
  }
}

}  // namespace
}  // namespace pagedkv

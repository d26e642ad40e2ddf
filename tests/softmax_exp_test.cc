// ExpBelowMax, the attention kernels' softmax exponential, against std::exp in double precision,
// for every compiled Highway target.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include "test_targets.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "tests/softmax_exp_test.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
// After foreach_target.h, which includes this file once per target.
#include "attention/softmax_exp-inl.h"

HWY_BEFORE_NAMESPACE();
namespace pagedkv::internal::HWY_NAMESPACE {

// out[i] = ExpBelowMax(x[i], max) for n values, n a multiple of 16.
void ExpBelowMaxOf(const float* x, size_t n, float max, float* out) {
  const hn::ScalableTag<float> d;
  const auto vmax = hn::Set(d, max);
  for (size_t i = 0; i < n; i += hn::Lanes(d)) {
    hn::StoreU(ExpBelowMax(d, hn::LoadU(d, x + i), vmax), d, out + i);
  }
}

}  // namespace pagedkv::internal::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "hwy/targets.h"

namespace pagedkv::internal {
HWY_EXPORT(ExpBelowMaxOf);
namespace {

TEST(SoftmaxExpTest, MatchesStdExpOnEveryTarget) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  for (const float max : {0.0f, 1.0f, -3.25f, 37.5f, 1e4f, -1e4f}) {
    // x - max from -130 to 0 (where the clamp at 2^-126 takes over), densest near 0, then x = max
    // and -inf; padded to a multiple of 16 with max.
    std::vector<float> x;
    for (int i = 0; i <= 130000; ++i) x.push_back(max - 130.0f * (static_cast<float>(i) / 130000) *
                                                          (static_cast<float>(i) / 130000));
    x.push_back(kNegInf);
    while (x.size() % 16 != 0) x.push_back(max);
    std::vector<float> out(x.size());
    for (int64_t target : ::pagedkv::test::TestTargets()) {
      hwy::SetSupportedTargetsForTest(target);
      SCOPED_TRACE(absl::StrCat(hwy::TargetName(target), ", max ", max));
      HWY_DYNAMIC_DISPATCH(ExpBelowMaxOf)(x.data(), x.size(), max, out.data());
      double worst_abs = 0, worst_rel = 0;
      for (size_t i = 0; i < x.size(); ++i) {
        if (x[i] == kNegInf) {
          EXPECT_EQ(out[i], 0.0f);
          continue;
        }
        if (x[i] == max) {
          ASSERT_EQ(out[i], 1.0f) << "at x = max";
        }
        // The kernels subtract in f32 first, as here.
        const double want = std::exp(static_cast<double>(x[i] - max));
        const double got = out[i];
        ASSERT_GE(got, 0.0) << "x - max = " << x[i] - max;
        worst_abs = std::max(worst_abs, std::abs(got - want));
        if (x[i] - max >= -1.0f) worst_rel = std::max(worst_rel, std::abs(got / want - 1));
        if (x[i] - max < -87.5f) {
          EXPECT_LE(got, 1.2e-38) << "x - max = " << x[i] - max;
        }
      }
      EXPECT_LE(worst_abs, 2e-7);
      EXPECT_LE(worst_rel, 2.5e-7);
    }
    hwy::SetSupportedTargetsForTest(0);
  }
}

}  // namespace
}  // namespace pagedkv::internal
#endif  // HWY_ONCE

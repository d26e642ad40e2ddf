// Long random operation sequences against the contiguous reference: every byte read back must
// match and CheckInvariants() must hold after every operation, including the failed ones.
//
// PAGEDKV_DIFF_OPS sets the operations per case (default 60000; 18 cases make over 10^6).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "differential_driver.h"

namespace pagedkv {
namespace {

using test::DifferentialConfig;
using test::Driver;

int64_t OpsPerCase() { return test::EnvOr("PAGEDKV_DIFF_OPS", 60000); }

using Case = std::tuple<int32_t, DType, bool>;  // block size, dtype, prefix caching

class DifferentialTest : public ::testing::TestWithParam<Case> {};

// With prefix caching, the f16 cases evict by sweep (EvictionOrder::kSweep), the others by LRU.
EvictionOrder EvictionOf(DType dtype) {
  return dtype == DType::kF16 ? EvictionOrder::kSweep : EvictionOrder::kLru;
}

TEST_P(DifferentialTest, MatchesContiguousReference) {
  const auto [block_size, dtype, caching] = GetParam();
  const CacheConfig config = DifferentialConfig(block_size, dtype, caching, EvictionOf(dtype));
  const uint64_t seed = static_cast<uint64_t>(block_size) * 131 + static_cast<int>(dtype) * 7 +
                        (caching ? 1 : 0);
  Driver driver(config, seed);
  driver.Run(OpsPerCase());
  std::printf("%lld ops: %lld ran out of blocks, %lld copy-on-write copies, %lld prefix-hit tokens\n",
              static_cast<long long>(OpsPerCase()), static_cast<long long>(driver.exhausted()),
              static_cast<long long>(driver.cow_copies()),
              static_cast<long long>(driver.prefix_hit_tokens()));
  // The run must have exercised the paths it claims to.
  EXPECT_GT(driver.exhausted(), 0) << "no operation ran out of blocks";
  if (block_size > 1) {  // With one-token blocks no block is ever partial: nothing to copy.
    EXPECT_GT(driver.cow_copies(), 0) << "no copy-on-write happened";
  }
  if (caching) {
    EXPECT_GT(driver.prefix_hit_tokens(), 0) << "no prefix hit happened";
  }
}

INSTANTIATE_TEST_SUITE_P(
    Cases, DifferentialTest,
    ::testing::Combine(::testing::Values(1, 16, 32),
                       ::testing::Values(DType::kF32, DType::kBF16, DType::kF16),
                       ::testing::Bool()),
    [](const ::testing::TestParamInfo<Case>& param) {
      return absl::StrCat("block", std::get<0>(param.param), "_",
                          DTypeName(std::get<1>(param.param)),
                          !std::get<2>(param.param) ? "_noprefix"
                          : EvictionOf(std::get<1>(param.param)) == EvictionOrder::kSweep
                              ? "_prefix_sweep"
                              : "_prefix");
    });

}  // namespace
}  // namespace pagedkv

// pagedkv-stress: the randomized differential test for as many operations as you like.
//   pagedkv-stress --ops=10000000 --seed=1 --block_size=16 --dtype=bf16 --prefix_caching
// Prints progress on stderr and exits non-zero at the first mismatch or broken invariant.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "differential_driver.h"
#include "gtest/gtest.h"

ABSL_FLAG(int64_t, ops, 10000000, "Random operations to run");
ABSL_FLAG(uint64_t, seed, 1, "Seed of the operation sequence");
ABSL_FLAG(int32_t, block_size, 16, "Tokens per block");
ABSL_FLAG(std::string, dtype, "bf16", "Storage dtype: f32, bf16 or f16");
ABSL_FLAG(bool, prefix_caching, true, "Turn on the prefix cache");
ABSL_FLAG(bool, sweep, false, "Evict cached blocks by sweep (EvictionOrder::kSweep), not LRU");

namespace pagedkv::test {
namespace {

class StressTest : public ::testing::Test {
 public:
  StressTest(const CacheConfig& config, uint64_t seed, int64_t ops)
      : config_(config), seed_(seed), ops_(ops) {}
  void TestBody() override {
    Driver driver(config_, seed_);
    const auto start = std::chrono::steady_clock::now();
    driver.Run(ops_, [&](int64_t done) {
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      std::fprintf(stderr, "\r%lld / %lld ops (%.0f%%), %.0f s", static_cast<long long>(done),
                   static_cast<long long>(ops_), 100.0 * done / ops_, seconds);
    });
    std::fprintf(stderr, "\n");
    std::printf("%lld ops, seed %llu: %lld ran out of blocks, %lld copy-on-write copies, %lld "
                "prefix-hit tokens, invariants checked after every op\n",
                static_cast<long long>(ops_), static_cast<unsigned long long>(seed_),
                static_cast<long long>(driver.exhausted()),
                static_cast<long long>(driver.cow_copies()),
                static_cast<long long>(driver.prefix_hit_tokens()));
  }

 private:
  CacheConfig config_;
  uint64_t seed_;
  int64_t ops_;
};

}  // namespace
}  // namespace pagedkv::test

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  absl::SetProgramUsageMessage("Runs pagedkv's randomized differential test for --ops operations.");
  absl::ParseCommandLine(argc, argv);
  const std::string dtype_name = absl::GetFlag(FLAGS_dtype);
  pagedkv::DType dtype;
  if (dtype_name == "f32") {
    dtype = pagedkv::DType::kF32;
  } else if (dtype_name == "bf16") {
    dtype = pagedkv::DType::kBF16;
  } else if (dtype_name == "f16") {
    dtype = pagedkv::DType::kF16;
  } else {
    std::fprintf(stderr, "pagedkv-stress: --dtype %s is not f32, bf16 or f16\n", dtype_name.c_str());
    return 2;
  }
  const int32_t block_size = absl::GetFlag(FLAGS_block_size);
  if (block_size < 1 || block_size > 512) {
    std::fprintf(stderr, "pagedkv-stress: --block_size %d is not in [1, 512]\n", block_size);
    return 2;
  }
  const pagedkv::CacheConfig config =
      pagedkv::test::DifferentialConfig(
          block_size, dtype, absl::GetFlag(FLAGS_prefix_caching),
          absl::GetFlag(FLAGS_sweep) ? pagedkv::EvictionOrder::kSweep : pagedkv::EvictionOrder::kLru);
  const uint64_t seed = absl::GetFlag(FLAGS_seed);
  const int64_t ops = absl::GetFlag(FLAGS_ops);
  testing::RegisterTest("Stress", "Differential", nullptr, nullptr, __FILE__, __LINE__,
                        [=]() -> testing::Test* {
                          return new pagedkv::test::StressTest(config, seed, ops);
                        });
  return RUN_ALL_TESTS();
}

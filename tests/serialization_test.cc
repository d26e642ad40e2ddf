#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "test_util.h"

namespace pagedkv {
namespace {

using test::ReadAll;
using test::ReserveAndWrite;
using test::SmallConfig;

class SerializationTest : public ::testing::TestWithParam<DType> {};

TEST_P(SerializationTest, RoundTripsTokensKvAndSalt) {
  CacheConfig config = SmallConfig(4, 32, GetParam());
  config.enable_prefix_caching = true;
  auto cache = test::MakeCache(config);
  PKV_ASSIGN_OR_FAIL(NewSequence seq, cache->CreateSequence({}, /*salt=*/77));
  PKV_ASSERT_OK(ReserveAndWrite(*cache, seq.id, 11, 1.5f, 40));
  PKV_ASSIGN_OR_FAIL(std::string payload, cache->Serialize(seq.id));

  // Into the same cache and into a cache with another block size.
  for (int32_t block_size : {4, 16}) {
    CacheConfig other = config;
    other.block_size = block_size;
    auto target = block_size == 4 ? nullptr : test::MakeCache(other);
    PagedKvCache& into = target ? *target : *cache;
    PKV_ASSIGN_OR_FAIL(SeqId restored, into.Restore(payload));
    PKV_ASSERT_OK(into.CheckInvariants());
    EXPECT_EQ(*into.Length(restored), 11);
    EXPECT_EQ(*into.Tokens(restored), *cache->Tokens(seq.id));
    for (int32_t layer = 0; layer < config.num_layers; ++layer) {
      EXPECT_EQ(ReadAll(into, restored, layer, false), ReadAll(*cache, seq.id, layer, false));
      EXPECT_EQ(ReadAll(into, restored, layer, true), ReadAll(*cache, seq.id, layer, true));
    }
    // The salt came along: the restored prompt's blocks serve salt 77 only.
    std::vector<int32_t> prompt = *cache->Tokens(seq.id);
    if (block_size == 16) {
      EXPECT_EQ(into.CreateSequence(prompt, 77)->cached_tokens, 0) << "11 tokens: no full block";
    } else {
      EXPECT_EQ(into.CreateSequence(prompt, 3)->cached_tokens, 0);
      EXPECT_EQ(into.CreateSequence(prompt, 77)->cached_tokens, 8);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllDtypes, SerializationTest,
                         ::testing::Values(DType::kF32, DType::kBF16, DType::kF16),
                         [](const ::testing::TestParamInfo<DType>& p) { return std::string(DTypeName(p.param)); });

TEST(SerializationErrors, EveryCorruptionIsRejectedAndChangesNothing) {
  auto cache = test::MakeCache(SmallConfig(4, 32, DType::kBF16));
  const SeqId seq = cache->CreateSequence()->id;
  PKV_ASSERT_OK(ReserveAndWrite(*cache, seq, 6));
  PKV_ASSERT_OK(cache->Reserve(seq, 1));  // Unknown token id: payload without tokens.
  PKV_ASSIGN_OR_FAIL(std::string good, cache->Serialize(seq));
  const test::Snapshot before = test::TakeSnapshot(*cache);

  auto expect_invalid = [&](const std::string& payload, absl::string_view needle) {
    absl::Status s = cache->Restore(payload).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(s.message().find(needle), absl::string_view::npos) << s << " lacks " << needle;
    EXPECT_EQ(test::TakeSnapshot(*cache), before);
  };
  expect_invalid("", "shorter than");
  expect_invalid(good.substr(0, good.size() - 1), "implies");
  expect_invalid(good + "x", "implies");
  std::string bad = good;
  bad[0] = 'X';
  expect_invalid(bad, "magic");
  bad = good;
  bad[8] = 9;  // Version.
  expect_invalid(bad, "version 9");
  bad = good;
  bad[12] = 3;  // num_layers.
  expect_invalid(bad, "num_layers is 3");
  bad = good;
  bad[16] = 5;  // num_kv_heads.
  expect_invalid(bad, "num_kv_heads is 5");
  bad = good;
  bad[20] = 16;  // head_dim.
  expect_invalid(bad, "head_dim is 16");
  bad = good;
  bad[28] = 2;  // dtype f16 into a bf16 cache.
  expect_invalid(bad, "dtype f16");
  bad = good;
  bad[29] = 7;  // has_tokens.
  expect_invalid(bad, "flags");
  bad = good;
  bad[32] = 100;  // length.
  expect_invalid(bad, "implies");
  bad = good;
  bad[39] = static_cast<char>(0x80);  // Negative length.
  expect_invalid(bad, "outside");
  bad = good;
  bad[bad.size() / 2] ^= 1;  // A K/V bit.
  expect_invalid(bad, "checksum");
  // The restored sequence keeps the unknown-token state.
  PKV_ASSIGN_OR_FAIL(SeqId restored, cache->Restore(good));
  EXPECT_EQ(cache->Tokens(restored).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(*cache->Length(restored), 7);
}

TEST(SerializationErrors, LongerThanMaxSeqLenIsRejected) {
  auto big = test::MakeCache(SmallConfig(4, 64));
  const SeqId seq = big->CreateSequence()->id;
  PKV_ASSERT_OK(ReserveAndWrite(*big, seq, 20));
  PKV_ASSIGN_OR_FAIL(std::string payload, big->Serialize(seq));
  CacheConfig small = SmallConfig(4, 64);
  small.max_seq_len = 10;
  auto cache = test::MakeCache(small);
  absl::Status s = cache->Restore(payload).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("max_seq_len 10"), absl::string_view::npos) << s;
}

TEST(SerializationErrors, EmptySequenceRoundTrips) {
  auto cache = test::MakeCache(SmallConfig(4, 8));
  const SeqId seq = cache->CreateSequence()->id;
  PKV_ASSIGN_OR_FAIL(std::string payload, cache->Serialize(seq));
  PKV_ASSIGN_OR_FAIL(SeqId restored, cache->Restore(payload));
  EXPECT_EQ(*cache->Length(restored), 0);
  PKV_ASSERT_OK(cache->CheckInvariants());
}

}  // namespace
}  // namespace pagedkv

// Faults: the arena cannot be had, memory runs out mid-batch, a stale view touches a freed page.
#include <cstdint>
#include <vector>

#include "allocator/arena.h"
#include "gtest/gtest.h"
#include "test_util.h"

namespace pagedkv {
namespace {

TEST(FaultsTest, ArenaAllocationFailureIsAStatus) {
  internal::FailArenaAllocationsForTest(1);
  absl::StatusOr<std::unique_ptr<PagedKvCache>> cache = PagedKvCache::Create(test::SmallConfig());
  EXPECT_EQ(cache.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(cache.status().message().find("cannot allocate the K/V arena"), absl::string_view::npos)
      << cache.status();
  // The next one succeeds: nothing was left behind.
  EXPECT_TRUE(PagedKvCache::Create(test::SmallConfig()).ok());
}

TEST(FaultsTest, ExhaustionInTheMiddleOfABatchLeavesEverySequenceAsBefore) {
  auto cache = test::MakeCache(test::SmallConfig(4, 12));
  std::vector<SeqId> seqs;
  std::vector<ReserveRequest> step;
  for (int i = 0; i < 4; ++i) {
    seqs.push_back(cache->CreateSequence()->id);
    ASSERT_TRUE(test::ReserveAndWrite(*cache, seqs.back(), 8 + i).ok());  // 2, 3, 3, 3 blocks.
    step.push_back({seqs.back(), 4, {}});
  }
  // 1 block free; the step needs 1 + 1 + 1 + 1 (three of them cross into a new block).
  const test::Snapshot before = test::TakeSnapshot(*cache);
  EXPECT_EQ(cache->ReserveBatch(step).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(test::TakeSnapshot(*cache), before);
  EXPECT_TRUE(cache->CheckInvariants().ok());
}

#if defined(__SANITIZE_ADDRESS__)
TEST(FaultsDeathTest, StaleViewIntoAFreedBlockIsCaught) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  auto cache = test::MakeCache(test::SmallConfig(4, 8));
  const SeqId seq = cache->CreateSequence()->id;
  ASSERT_TRUE(test::ReserveAndWrite(*cache, seq, 6).ok());
  PagedKvViewStorage storage;
  const PagedKvView view = *cache->MakeView({seq}, &storage);
  const float* page = reinterpret_cast<const float*>(view.Page(0, false, view.BlockTable(0)[0], 0));
  EXPECT_EQ(page[0], test::Pattern(cache->config(), 0, 1, 0, false)[0]);  // Live: readable.
  ASSERT_TRUE(cache->Free(seq).ok());
  EXPECT_DEATH({ volatile float x = page[0]; (void)x; }, "use-after-poison");
}
#endif

}  // namespace
}  // namespace pagedkv

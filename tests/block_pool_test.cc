#include "pagedkv/block_pool.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "test_util.h"

namespace pagedkv {
namespace {

// Tracks the references the test holds, as block tables would, and checks the pool against them.
class PoolFixture : public ::testing::Test {
 protected:
  void Make(CacheConfig config) {
    auto pool = BlockPool::Create(config);
    ASSERT_TRUE(pool.ok()) << pool.status();
    pool_ = *std::move(pool);
    refs_.assign(static_cast<size_t>(pool_->num_blocks()), 0);
  }
  BlockId Alloc() {
    absl::StatusOr<BlockId> b = pool_->Allocate();
    EXPECT_TRUE(b.ok()) << b.status();
    if (!b.ok()) return kNoBlock;
    ++refs_[static_cast<size_t>(*b)];
    Check();
    return *b;
  }
  std::vector<BlockId> AllocRun(BlockId prev, int64_t n) {
    std::vector<BlockId> got;
    EXPECT_GE(pool_->AllocateRun(prev, n, &got), 1);
    for (BlockId b : got) ++refs_[static_cast<size_t>(b)];
    Check();
    return got;
  }
  void Acquire(BlockId b) {
    pool_->Acquire(b);
    ++refs_[static_cast<size_t>(b)];
    Check();
  }
  void Release(BlockId b) {
    pool_->Release(b);
    --refs_[static_cast<size_t>(b)];
    Check();
  }
  void Check() { PKV_EXPECT_OK(pool_->CheckInvariants(refs_)); }

  std::unique_ptr<BlockPool> pool_;
  std::vector<int32_t> refs_;
};

TEST_F(PoolFixture, SizesFromBudgetAndAligns) {
  CacheConfig config = test::SmallConfig(/*block_size=*/4, /*num_blocks=*/0);
  config.memory_budget_bytes = 10 * config.BlockBytes() + 5;
  Make(config);
  EXPECT_EQ(pool_->num_blocks(), 10);
  EXPECT_EQ(pool_->stats().arena_bytes, 10 * config.BlockBytes());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(pool_->arena()) % (uintptr_t{2} << 20), 0u);
}

TEST(BlockPoolTest, RejectsBadConfigs) {
  CacheConfig config = test::SmallConfig();
  config.block_size = 0;
  EXPECT_EQ(BlockPool::Create(config).status().code(), absl::StatusCode::kInvalidArgument);
  config = test::SmallConfig(4, 0);
  config.memory_budget_bytes = config.BlockBytes() - 1;
  absl::Status s = BlockPool::Create(config).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("smaller than one block"), absl::string_view::npos) << s;
  config = test::SmallConfig(4, 0);
  config.memory_budget_bytes = 0;
  EXPECT_EQ(BlockPool::Create(config).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(PoolFixture, AllocatesEveryBlockThenExhausts) {
  Make(test::SmallConfig(4, 8));
  std::vector<BlockId> got;
  for (int i = 0; i < 8; ++i) got.push_back(Alloc());
  std::sort(got.begin(), got.end());
  for (int i = 0; i < 8; ++i) EXPECT_EQ(got[static_cast<size_t>(i)], i);
  const PoolStats before = pool_->stats();
  absl::StatusOr<BlockId> none = pool_->Allocate();
  EXPECT_EQ(none.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(pool_->stats().used_blocks, before.used_blocks);
  Check();
}

TEST_F(PoolFixture, ReusesMostRecentlyFreedFirst) {
  Make(test::SmallConfig(4, 8));
  const BlockId a = Alloc();
  const BlockId b = Alloc();
  Release(a);
  Release(b);
  EXPECT_EQ(Alloc(), b);
  EXPECT_EQ(Alloc(), a);
}

TEST_F(PoolFixture, RefCountsKeepBlocksUntilLastRelease) {
  Make(test::SmallConfig(4, 4));
  const BlockId a = Alloc();
  Acquire(a);
  EXPECT_EQ(pool_->ref_count(a), 2);
  Release(a);
  EXPECT_EQ(pool_->stats().used_blocks, 1);
  Release(a);
  EXPECT_EQ(pool_->stats().free_blocks, 4);
}

TEST_F(PoolFixture, CachedBlocksBecomeEvictableAndAreEvictedLeastRecentlyUsedFirst) {
  Make(test::SmallConfig(4, 3));
  const BlockId a = Alloc();
  const BlockId b = Alloc();
  const BlockId c = Alloc();
  ASSERT_TRUE(pool_->Register(a, 100, kNoBlock, 0));
  ASSERT_TRUE(pool_->Register(b, 200, kNoBlock, 0));
  EXPECT_FALSE(pool_->Register(c, 100, kNoBlock, 0)) << "key 100 is taken";
  Release(a);  // LRU: a
  Release(b);  // LRU: a, b
  Release(c);  // free
  EXPECT_EQ(pool_->stats().evictable_blocks, 2);
  EXPECT_EQ(pool_->stats().free_blocks, 1);
  // A free block goes first; then the least recently used cached block, losing its key.
  EXPECT_EQ(Alloc(), c);
  EXPECT_EQ(Alloc(), a);
  EXPECT_EQ(pool_->Lookup(100), kNoBlock);
  EXPECT_EQ(pool_->Lookup(200), b);
  EXPECT_EQ(pool_->stats().evictions, 1);
  // A hit revives b: it leaves the LRU order and cannot be evicted while held.
  Acquire(b);
  EXPECT_EQ(pool_->Allocate().status().code(), absl::StatusCode::kResourceExhausted);
  Check();
}

TEST_F(PoolFixture, RevivedBlockMovesToMostRecentEnd) {
  Make(test::SmallConfig(4, 3));
  const BlockId a = Alloc();
  const BlockId b = Alloc();
  ASSERT_TRUE(pool_->Register(a, 1, kNoBlock, 0));
  ASSERT_TRUE(pool_->Register(b, 2, kNoBlock, 0));
  Release(a);
  Release(b);  // LRU: a, b
  Acquire(a);
  Release(a);  // LRU: b, a
  Alloc();     // The free block.
  EXPECT_EQ(Alloc(), b);
  EXPECT_EQ(pool_->Lookup(1), a);
}

// A block's key names its prefix too, so when the prefix goes, no lookup can reach the block: its
// key is dropped with the prefix's and, when nothing holds it, it is free at once.
TEST_F(PoolFixture, EvictingAPrefixFreesItsCachedExtensions) {
  Make(test::SmallConfig(4, 5));
  const BlockId a = Alloc();
  const BlockId b = Alloc();
  const BlockId c = Alloc();
  const BlockId d = Alloc();
  const BlockId other = Alloc();
  ASSERT_TRUE(pool_->Register(a, 1, kNoBlock, 0));
  ASSERT_TRUE(pool_->Register(b, 2, a, 0));  // a b c, and a d.
  ASSERT_TRUE(pool_->Register(c, 3, b, 0));
  ASSERT_TRUE(pool_->Register(d, 4, a, 0));
  ASSERT_TRUE(pool_->Register(other, 5, kNoBlock, 0));
  EXPECT_EQ(pool_->cached(c)->parent, b);
  EXPECT_EQ(pool_->cached(c)->parent_registration, pool_->cached(b)->registration);
  Check();
  for (BlockId x : {a, b, c, d, other}) Release(x);  // LRU: a b c d other.
  Check();
  EXPECT_EQ(Alloc(), a) << "the least recently used block";
  for (uint64_t key : {1, 2, 3, 4}) EXPECT_EQ(pool_->Lookup(key), kNoBlock) << key;
  EXPECT_EQ(pool_->Lookup(5), other);
  const PoolStats st = pool_->stats();
  EXPECT_EQ(st.free_blocks, 3);
  EXPECT_EQ(st.evictable_blocks, 1);
  EXPECT_EQ(st.evictions, 4);
  EXPECT_EQ(st.dropped_extensions, 3);
  Check();
  EXPECT_EQ(Alloc(), d) << "the freed extensions go before any cached block";
  EXPECT_EQ(pool_->Lookup(5), other);
  Check();
}

TEST_F(PoolFixture, UnregisteringABlockDropsItsExtensions) {
  Make(test::SmallConfig(4, 4));
  const BlockId a = Alloc();
  const BlockId b = Alloc();
  const BlockId c = Alloc();
  ASSERT_TRUE(pool_->Register(a, 1, kNoBlock, 0));
  ASSERT_TRUE(pool_->Register(b, 2, a, 0));
  ASSERT_TRUE(pool_->Register(c, 3, b, 0));
  Release(c);
  Release(b);  // a stays held.
  pool_->Unregister(a);
  EXPECT_EQ(pool_->cached(a), nullptr);
  EXPECT_EQ(pool_->Lookup(3), kNoBlock);
  EXPECT_EQ(pool_->stats().free_blocks, 3);
  EXPECT_EQ(pool_->stats().dropped_extensions, 2);
  Check();
  EXPECT_TRUE(pool_->Register(Alloc(), 3, kNoBlock, 0)) << "the dropped key can be taken again";
  Check();
}

TEST_F(PoolFixture, AllocateRunContinuesThroughFreeBlocks) {
  Make(test::SmallConfig(4, 8));
  EXPECT_EQ(AllocRun(kNoBlock, 3), (std::vector<BlockId>{0, 1, 2})) << "a fresh pool, in order";
  EXPECT_EQ(AllocRun(kNoBlock, 1), (std::vector<BlockId>{3}));
  EXPECT_EQ(AllocRun(2, 2), (std::vector<BlockId>{4, 5})) << "3 is used: the top of the stack";
  Release(1);
  Release(3);  // Free stack, top first: 3 1 7 6.
  EXPECT_EQ(AllocRun(0, 4), (std::vector<BlockId>{1})) << "after 0, up to the used 2";
  EXPECT_EQ(AllocRun(5, 4), (std::vector<BlockId>{6, 7})) << "after 5, up to the end";
  EXPECT_EQ(AllocRun(7, 4), (std::vector<BlockId>{3})) << "the last block: the top of the stack";
  std::vector<BlockId> none;
  EXPECT_EQ(pool_->AllocateRun(kNoBlock, 2, &none), 0);
  EXPECT_TRUE(none.empty());
  Check();
}

// Without free blocks a run is evicted from the LRU head's end of a sequence's released blocks:
// the same blocks one-by-one eviction would take, deepest first, but from the lowest id up.
// (The victims' ids may also run upward: AllocateRunStopsWhereTheLruOrderLeavesTheRun.)
TEST_F(PoolFixture, AllocateRunEvictsTheNextVictimsAsARun) {
  Make(test::SmallConfig(4, 8));
  const std::vector<BlockId> seq = AllocRun(kNoBlock, 5);  // 0 .. 4: a sequence's blocks.
  AllocRun(kNoBlock, 3);                                   // 5 .. 7, held.
  for (BlockId b : seq) ASSERT_TRUE(pool_->Register(b, 100 + b, kNoBlock, 0));
  for (int i = 4; i >= 0; --i) Release(seq[static_cast<size_t>(i)]);  // LRU: 4 3 2 1 0.
  Release(6);  // Free.
  EXPECT_EQ(AllocRun(kNoBlock, 3), (std::vector<BlockId>{6})) << "a free block goes first";
  EXPECT_EQ(pool_->stats().evictions, 0);
  EXPECT_EQ(AllocRun(kNoBlock, 3), (std::vector<BlockId>{2, 3, 4})) << "the 3 next victims";
  EXPECT_EQ(pool_->Lookup(101), 1) << "the prefix 0 1 stays";
  EXPECT_EQ(pool_->Lookup(102), kNoBlock);
  EXPECT_EQ(pool_->stats().evictions, 3);
  EXPECT_EQ(AllocRun(6, 1), (std::vector<BlockId>{1})) << "7 is used; 1 is the LRU head";
  EXPECT_EQ(pool_->Lookup(100), 0);
  Check();
}

TEST_F(PoolFixture, AllocateRunStopsWhereTheLruOrderLeavesTheRun) {
  Make(test::SmallConfig(4, 4));
  AllocRun(kNoBlock, 4);
  for (BlockId b = 0; b < 4; ++b) ASSERT_TRUE(pool_->Register(b, 10 + b, kNoBlock, 0));
  Release(2);
  Release(0);
  Release(1);
  Release(3);  // LRU: 2 0 1 3.
  EXPECT_EQ(AllocRun(kNoBlock, 3), (std::vector<BlockId>{2})) << "0 is next, not 1 or 3";
  EXPECT_EQ(AllocRun(2, 3), (std::vector<BlockId>{0, 1}))
      << "3 is cached but not next in line; 0 and 1 are, upward";
  EXPECT_EQ(pool_->Lookup(13), 3);
  Check();
}

TEST_F(PoolFixture, CopySlotsCopiesOnlyThePrefixOfEachPage) {
  CacheConfig config = test::SmallConfig(4, 4, DType::kF32);
  Make(config);
  const BlockId src = Alloc();
  const BlockId dst = Alloc();
  const int64_t floats = pool_->page_bytes() / 4;
  for (int32_t layer = 0; layer < config.num_layers; ++layer) {
    for (bool v : {false, true}) {
      for (int32_t h = 0; h < config.num_kv_heads; ++h) {
        auto* s = reinterpret_cast<float*>(pool_->PageData(layer, v, src, h));
        auto* d = reinterpret_cast<float*>(pool_->PageData(layer, v, dst, h));
        for (int64_t i = 0; i < floats; ++i) {
          s[i] = static_cast<float>(i + 1000 * layer + 100 * h + (v ? 500 : 0));
          d[i] = -1.0f;
        }
      }
    }
  }
  for (int i = 0; i < 4; ++i) pool_->tokens(src)[i] = 10 + i;
  pool_->CopySlots(src, dst, 3);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(pool_->tokens(dst)[i], 10 + i);
  for (int32_t layer = 0; layer < config.num_layers; ++layer) {
    for (bool v : {false, true}) {
      for (int32_t h = 0; h < config.num_kv_heads; ++h) {
        const auto* s = reinterpret_cast<const float*>(pool_->PageData(layer, v, src, h));
        const auto* d = reinterpret_cast<const float*>(pool_->PageData(layer, v, dst, h));
        for (int32_t slot = 0; slot < config.block_size; ++slot) {
          for (int32_t e = 0; e < config.head_dim; ++e) {
            const int64_t i = int64_t{slot} * config.head_dim + e;
            EXPECT_EQ(d[i], slot < 3 ? s[i] : -1.0f) << layer << " " << v << " " << h << " " << slot;
          }
        }
      }
    }
  }
}

// Every (layer, K or V, block, kv head) page lies inside the arena, no two overlap, together they
// fill it, and the pages next to each other are a head's of consecutive blocks (kHeadMajor, so
// block runs read as one) or a block's of consecutive heads (kBlockMajor).
TEST_F(PoolFixture, PagesTileTheArenaInEitherLayout) {
  for (PageLayout layout : {PageLayout::kHeadMajor, PageLayout::kBlockMajor}) {
    CacheConfig config = test::SmallConfig(4, 6, DType::kBF16);
    config.num_layers = 3;
    config.num_kv_heads = 3;
    config.page_layout = layout;
    Make(config);
    const bool head_major = layout == PageLayout::kHeadMajor;
    const std::byte* arena = pool_->arena();
    const int64_t page = pool_->page_bytes();
    ASSERT_EQ(page, int64_t{config.block_size} * config.head_dim * 2);
    const int64_t pages = pool_->stats().arena_bytes / page;
    ASSERT_EQ(pages, 2 * int64_t{config.num_layers} * config.num_kv_heads * pool_->num_blocks());
    std::vector<int> hits(static_cast<size_t>(pages), 0);
    for (int32_t layer = 0; layer < config.num_layers; ++layer) {
      for (bool v : {false, true}) {
        for (int32_t h = 0; h < config.num_kv_heads; ++h) {
          for (BlockId b = 0; b < pool_->num_blocks(); ++b) {
            const int64_t offset = pool_->PageData(layer, v, b, h) - arena;
            ASSERT_EQ(offset % page, 0) << layer << " " << v << " " << h << " " << b;
            ASSERT_GE(offset, 0);
            ASSERT_LT(offset / page, pages);
            ++hits[static_cast<size_t>(offset / page)];
            if (head_major && b > 0) {
              EXPECT_EQ(pool_->PageData(layer, v, b - 1, h) + page, arena + offset);
            }
            if (!head_major && h > 0) {
              EXPECT_EQ(pool_->PageData(layer, v, b, h - 1) + page, arena + offset);
            }
          }
        }
      }
    }
    for (int64_t i = 0; i < pages; ++i) EXPECT_EQ(hits[static_cast<size_t>(i)], 1) << "page " << i;
  }
}

TEST_F(PoolFixture, MetadataOnlyHasNoArena) {
  CacheConfig config = test::SmallConfig(16, 0);
  config.metadata_only = true;
  config.memory_budget_bytes = int64_t{1} << 30;  // 1 GiB of K/V, accounted for, not allocated.
  Make(config);
  EXPECT_FALSE(pool_->has_storage());
  EXPECT_EQ(pool_->stats().arena_bytes, 0);
  EXPECT_EQ(pool_->num_blocks(), (int64_t{1} << 30) / config.BlockBytes());
  Release(Alloc());
}

CacheConfig SweepConfig(int32_t num_blocks) {
  CacheConfig config = test::SmallConfig(4, num_blocks);
  config.eviction_order = EvictionOrder::kSweep;
  return config;
}

TEST_F(PoolFixture, SweepHandsOutRunsFromTheCursorAndLeavesRoomToGrow) {
  Make(SweepConfig(40));
  EXPECT_EQ(AllocRun(kNoBlock, 3), (std::vector<BlockId>{0, 1, 2}));
  EXPECT_EQ(AllocRun(kNoBlock, 2), (std::vector<BlockId>{19, 20})) << "16 blocks left after 2";
  EXPECT_EQ(AllocRun(2, 4), (std::vector<BlockId>{3, 4, 5, 6})) << "growing into them";
  EXPECT_EQ(AllocRun(kNoBlock, 5), (std::vector<BlockId>{37, 38, 39})) << "up to the end";
  EXPECT_EQ(AllocRun(kNoBlock, 1), (std::vector<BlockId>{16})) << "the cursor wrapped";
  EXPECT_EQ(Alloc(), 33);
}

// An evictable block released since the cursor last passed it is passed over once.
TEST_F(PoolFixture, SweepGivesRecentlyReleasedBlocksASecondChance) {
  Make(SweepConfig(4));
  AllocRun(kNoBlock, 4);  // The cursor wraps to 0.
  for (BlockId b = 0; b < 3; ++b) ASSERT_TRUE(pool_->Register(b, 10 + b, kNoBlock, 0));
  for (BlockId b = 0; b < 3; ++b) Release(b);  // 3 stays held.
  EXPECT_EQ(AllocRun(kNoBlock, 1), (std::vector<BlockId>{0}))
      << "all three were released since the cursor passed: the second lap takes the first";
  EXPECT_EQ(pool_->Lookup(10), kNoBlock);
  Acquire(1);  // A prefix hit, then released again: 1 is recent, 2 is not.
  Release(1);
  EXPECT_EQ(AllocRun(kNoBlock, 1), (std::vector<BlockId>{2}));
  EXPECT_EQ(pool_->Lookup(11), 1);
  EXPECT_EQ(pool_->Lookup(12), kNoBlock);
  EXPECT_EQ(pool_->stats().evictions, 2);
}

// Each release gives a cached block one more chance, up to three: a block used often (a shared
// prompt) outlasts one used once, where one chance each would have evicted the first passed.
TEST_F(PoolFixture, SweepKeepsOftenReleasedBlocksLonger) {
  Make(SweepConfig(4));
  AllocRun(kNoBlock, 4);  // The cursor wraps to 0.
  ASSERT_TRUE(pool_->Register(1, 11, kNoBlock, 0));
  ASSERT_TRUE(pool_->Register(2, 12, kNoBlock, 0));
  Release(2);  // One chance.
  Release(1);
  for (int hit = 0; hit < 2; ++hit) {
    Acquire(1);
    Release(1);
  }  // Three chances.
  EXPECT_EQ(AllocRun(kNoBlock, 1), (std::vector<BlockId>{2}));
  EXPECT_EQ(pool_->Lookup(11), 1);
  EXPECT_EQ(AllocRun(kNoBlock, 1), (std::vector<BlockId>{1})) << "its chances ran out";
}

// The sweep may reach a prefix before its extensions: they go with it, freed, and a sequence
// grows into them.
TEST_F(PoolFixture, SweepEvictingAPrefixFreesItsExtensions) {
  Make(SweepConfig(4));
  AllocRun(kNoBlock, 4);
  ASSERT_TRUE(pool_->Register(0, 1, kNoBlock, 0));
  ASSERT_TRUE(pool_->Register(1, 2, 0, 0));
  ASSERT_TRUE(pool_->Register(2, 3, 1, 0));
  for (BlockId b : {2, 1, 0}) Release(b);  // Deepest first; 3 stays held.
  EXPECT_EQ(AllocRun(kNoBlock, 1), (std::vector<BlockId>{0}));
  EXPECT_EQ(pool_->stats().dropped_extensions, 2);
  EXPECT_EQ(pool_->stats().free_blocks, 2);
  EXPECT_EQ(AllocRun(0, 3), (std::vector<BlockId>{1, 2}));
  std::vector<BlockId> none;
  EXPECT_EQ(pool_->AllocateRun(2, 1, &none), 0);
  EXPECT_EQ(pool_->Allocate().status().code(), absl::StatusCode::kResourceExhausted);
  Check();
}

TEST_F(PoolFixture, CheckInvariantsCatchesAWrongCount) {
  Make(test::SmallConfig(4, 4));
  const BlockId a = Alloc();
  std::vector<int32_t> wrong = refs_;
  ++wrong[static_cast<size_t>(a)];
  EXPECT_EQ(pool_->CheckInvariants(wrong).code(), absl::StatusCode::kInternal);
}

TEST_F(PoolFixture, ResetReturnsEverything) {
  Make(test::SmallConfig(4, 4));
  const BlockId a = Alloc();
  ASSERT_TRUE(pool_->Register(a, 9, kNoBlock, 0));
  Release(a);
  pool_->Reset();
  EXPECT_EQ(pool_->stats().free_blocks, 4);
  EXPECT_EQ(pool_->Lookup(9), kNoBlock);
  Check();
}

}  // namespace
}  // namespace pagedkv

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
  ASSERT_TRUE(pool_->Register(a, 100, 0, 0));
  ASSERT_TRUE(pool_->Register(b, 200, 0, 0));
  EXPECT_FALSE(pool_->Register(c, 100, 0, 0)) << "key 100 is taken";
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
  ASSERT_TRUE(pool_->Register(a, 1, 0, 0));
  ASSERT_TRUE(pool_->Register(b, 2, 0, 0));
  Release(a);
  Release(b);  // LRU: a, b
  Acquire(a);
  Release(a);  // LRU: b, a
  Alloc();     // The free block.
  EXPECT_EQ(Alloc(), b);
  EXPECT_EQ(pool_->Lookup(1), a);
}

TEST_F(PoolFixture, CopySlotsCopiesOnlyThePrefixOfEachPage) {
  CacheConfig config = test::SmallConfig(4, 4, DType::kF32);
  Make(config);
  const BlockId src = Alloc();
  const BlockId dst = Alloc();
  const int64_t floats = pool_->block_bytes_per_layer() / 4;
  for (int32_t layer = 0; layer < config.num_layers; ++layer) {
    for (bool v : {false, true}) {
      auto* s = reinterpret_cast<float*>(pool_->BlockData(layer, v, src));
      auto* d = reinterpret_cast<float*>(pool_->BlockData(layer, v, dst));
      for (int64_t i = 0; i < floats; ++i) {
        s[i] = static_cast<float>(i + 1000 * layer + (v ? 500 : 0));
        d[i] = -1.0f;
      }
    }
  }
  for (int i = 0; i < 4; ++i) pool_->tokens(src)[i] = 10 + i;
  pool_->CopySlots(src, dst, 3);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(pool_->tokens(dst)[i], 10 + i);
  for (int32_t layer = 0; layer < config.num_layers; ++layer) {
    for (bool v : {false, true}) {
      const auto* s = reinterpret_cast<const float*>(pool_->BlockData(layer, v, src));
      const auto* d = reinterpret_cast<const float*>(pool_->BlockData(layer, v, dst));
      for (int32_t h = 0; h < config.num_kv_heads; ++h) {
        for (int32_t slot = 0; slot < config.block_size; ++slot) {
          for (int32_t e = 0; e < config.head_dim; ++e) {
            const int64_t i = (h * config.block_size + slot) * config.head_dim + e;
            EXPECT_EQ(d[i], slot < 3 ? s[i] : -1.0f) << layer << " " << v << " " << h << " " << slot;
          }
        }
      }
    }
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
  ASSERT_TRUE(pool_->Register(a, 9, 0, 0));
  Release(a);
  pool_->Reset();
  EXPECT_EQ(pool_->stats().free_blocks, 4);
  EXPECT_EQ(pool_->Lookup(9), kNoBlock);
  Check();
}

}  // namespace
}  // namespace pagedkv

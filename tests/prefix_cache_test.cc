// Prefix caching: hits, misses, LRU eviction order, salt separation and collision safety.
#include <cstdint>
#include <memory>
#include <numeric>
#include <vector>

#include "gtest/gtest.h"
#include "test_peer.h"
#include "test_util.h"

namespace pagedkv {
namespace {

using test::ReadAll;

std::vector<int32_t> Tokens(int32_t first, int32_t n) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  std::iota(t.begin(), t.end(), first);
  return t;
}

class PrefixCacheTest : public ::testing::Test {
 protected:
  void Make(int32_t block_size, int32_t num_blocks) {
    CacheConfig config = test::SmallConfig(block_size, num_blocks);
    config.enable_prefix_caching = true;
    cache_ = test::MakeCache(config);
    ASSERT_NE(cache_, nullptr);
  }
  // Creates a sequence for `prompt`, reserves the uncached rest and writes K/V that depend on
  // the token ids, as a model's would. Returns the sequence and its cached token count.
  NewSequence Prefill(const std::vector<int32_t>& prompt, uint64_t salt = 0) {
    absl::StatusOr<NewSequence> seq = cache_->CreateSequence(prompt, salt);
    EXPECT_TRUE(seq.ok()) << seq.status();
    const int64_t cached = seq->cached_tokens;
    absl::Span<const int32_t> rest = absl::MakeConstSpan(prompt).subspan(cached);
    absl::StatusOr<int64_t> start = cache_->Reserve(seq->id, rest);
    EXPECT_TRUE(start.ok()) << start.status();
    const CacheConfig& c = cache_->config();
    for (int32_t layer = 0; layer < c.num_layers; ++layer) {
      std::vector<float> k;
      for (int32_t t : rest) {
        for (int32_t i = 0; i < c.num_kv_heads * c.head_dim; ++i) {
          k.push_back(static_cast<float>(t * 100 + layer * 10 + i % 7) + salt);
        }
      }
      EXPECT_TRUE(cache_->WriteKv(seq->id, layer, cached, k, k).ok());
    }
    PKV_EXPECT_OK(cache_->CheckInvariants());
    return *seq;
  }

  std::unique_ptr<PagedKvCache> cache_;
};

TEST_F(PrefixCacheTest, SecondPromptSharesFullBlocksAndSeesTheSameKv) {
  Make(4, 32);
  const std::vector<int32_t> prompt = Tokens(10, 10);
  NewSequence first = Prefill(prompt);
  EXPECT_EQ(first.cached_tokens, 0);
  NewSequence second = Prefill(prompt);
  EXPECT_EQ(second.cached_tokens, 8);
  auto t1 = *cache_->BlockTable(first.id);
  auto t2 = *cache_->BlockTable(second.id);
  EXPECT_EQ(t1[0], t2[0]);
  EXPECT_EQ(t1[1], t2[1]);
  EXPECT_NE(t1[2], t2[2]);
  for (int32_t layer = 0; layer < 2; ++layer) {
    EXPECT_EQ(ReadAll(*cache_, first.id, layer, false), ReadAll(*cache_, second.id, layer, false));
  }
  EXPECT_EQ(*cache_->Tokens(second.id), prompt);
  const CacheStats st = cache_->Stats();
  EXPECT_EQ(st.prefix_queries, 2);
  EXPECT_EQ(st.prefix_hits, 1);
  EXPECT_EQ(st.prefix_query_tokens, 20);
  EXPECT_EQ(st.prefix_hit_tokens, 8);
  // Hit positions are read-only for the new sequence.
  EXPECT_EQ(*cache_->WritableFrom(second.id), 8);
}

TEST_F(PrefixCacheTest, FullyCachedPromptLeavesItsLastTokenToCompute) {
  Make(4, 32);
  const std::vector<int32_t> prompt = Tokens(10, 8);
  Prefill(prompt);
  NewSequence again = Prefill(prompt);
  EXPECT_EQ(again.cached_tokens, 4) << "the block holding the last token is recomputed";
  const std::vector<int32_t> longer = Tokens(10, 9);
  EXPECT_EQ(Prefill(longer).cached_tokens, 8);
}

TEST_F(PrefixCacheTest, DivergingPromptsShareOnlyTheCommonBlocks) {
  Make(4, 32);
  std::vector<int32_t> a = Tokens(1, 12);
  std::vector<int32_t> b = a;
  b[6] = 999;  // Differs in the second block.
  Prefill(a);
  EXPECT_EQ(Prefill(b).cached_tokens, 4);
  std::vector<int32_t> c = a;
  c[0] = 999;  // Differs in the first block: nothing shared.
  EXPECT_EQ(Prefill(c).cached_tokens, 0);
}

TEST_F(PrefixCacheTest, SaltsNeverShare) {
  Make(4, 32);
  const std::vector<int32_t> prompt = Tokens(10, 9);
  Prefill(prompt, /*salt=*/1);
  EXPECT_EQ(Prefill(prompt, 2).cached_tokens, 0);
  EXPECT_EQ(Prefill(prompt, 1).cached_tokens, 8);
}

TEST_F(PrefixCacheTest, FreedPrefixesStayUntilEvictedLeastRecentlyUsedFirst) {
  Make(4, 6);
  const std::vector<int32_t> a = Tokens(100, 9);  // 2 full blocks + 1.
  const std::vector<int32_t> b = Tokens(200, 9);
  PKV_ASSERT_OK(cache_->Free(Prefill(a).id));
  PKV_ASSERT_OK(cache_->Free(Prefill(b).id));
  EXPECT_EQ(cache_->pool().stats().evictable_blocks, 4);
  EXPECT_EQ(cache_->pool().stats().free_blocks, 2);
  // Revive a: a hit after free. b is now the least recently used.
  NewSequence a_again = Prefill(a);
  EXPECT_EQ(a_again.cached_tokens, 8);
  PKV_ASSERT_OK(cache_->Free(a_again.id));
  // Four blocks of new tokens: two free ones, then b's blocks, deepest first.
  NewSequence c = Prefill(Tokens(300, 16));
  EXPECT_EQ(c.cached_tokens, 0);
  EXPECT_EQ(cache_->pool().stats().evictions, 2);
  PKV_ASSERT_OK(cache_->Free(c.id));
  EXPECT_EQ(Prefill(a).cached_tokens, 8) << "a was used more recently than b";
  EXPECT_EQ(Prefill(b).cached_tokens, 0) << "b was evicted";
}

TEST_F(PrefixCacheTest, DeepestBlocksAreEvictedBeforeTheirPrefix) {
  Make(4, 4);
  const std::vector<int32_t> a = Tokens(100, 13);  // 3 full blocks + 1.
  PKV_ASSERT_OK(cache_->Free(Prefill(a).id));
  EXPECT_EQ(cache_->pool().stats().evictable_blocks, 3);
  // Two new blocks: the free one, then a's deepest block.
  NewSequence other = Prefill(Tokens(500, 5));
  PKV_ASSERT_OK(cache_->Free(other.id));
  EXPECT_EQ(Prefill(a).cached_tokens, 8) << "a's first two blocks survive";
}

TEST_F(PrefixCacheTest, RevivedBlocksAreNotEvictedByTheSameCall) {
  Make(4, 3);
  const std::vector<int32_t> a = Tokens(100, 9);
  PKV_ASSERT_OK(cache_->Free(Prefill(a).id));  // 2 evictable, 1 free.
  NewSequence again = Prefill(a);               // Revives 2, needs 1 more: the free one.
  EXPECT_EQ(again.cached_tokens, 8);
  EXPECT_EQ(cache_->pool().stats().evictions, 0);
  EXPECT_EQ(*cache_->Tokens(again.id), a);
}

uint64_t CollidingHash(uint64_t, absl::Span<const int32_t>, uint64_t) { return 42; }

TEST_F(PrefixCacheTest, HashCollisionNeverSharesKv) {
  Make(4, 32);
  PagedKvCacheTestPeer::SetBlockHash(*cache_, &CollidingHash);
  NewSequence a = Prefill(Tokens(100, 9));
  NewSequence b = Prefill(Tokens(200, 9));
  EXPECT_EQ(b.cached_tokens, 0) << "same key, different tokens: a miss";
  EXPECT_NE((*cache_->BlockTable(a.id))[0], (*cache_->BlockTable(b.id))[0]);
  EXPECT_NE(ReadAll(*cache_, a.id, 0, false), ReadAll(*cache_, b.id, 0, false));
  // Identical first block, but every block collides on one key: only the confirmed block matches.
  NewSequence c = Prefill(Tokens(100, 9));
  EXPECT_EQ(c.cached_tokens, 4);
  PKV_EXPECT_OK(cache_->CheckInvariants());
}

// A hit must extend the block that hit before it (parent registration ids), so a child block can
// never be reached through a different parent that merely has the same key.
TEST_F(PrefixCacheTest, CollidingParentStopsTheChain) {
  Make(4, 8);
  PagedKvCacheTestPeer::SetBlockHash(
      *cache_, [](uint64_t parent, absl::Span<const int32_t> tokens, uint64_t) -> uint64_t {
        // Keys ignore the first block's tokens: parents [1..4] and [9..12] collide.
        return parent * 31 + static_cast<uint64_t>(tokens[0] >= 100 ? tokens[0] : 0);
      });
  std::vector<int32_t> a = {1, 2, 3, 4, 100, 101, 102, 103, 7};
  std::vector<int32_t> b = {9, 10, 11, 12, 100, 101, 102, 103, 7};
  Prefill(a);
  NewSequence second = Prefill(b);
  EXPECT_EQ(second.cached_tokens, 0);
  PKV_EXPECT_OK(cache_->CheckInvariants());
}

TEST_F(PrefixCacheTest, TruncatedCachedBlockIsNotCorruptedByNewTokens) {
  Make(4, 32);
  const std::vector<int32_t> prompt = Tokens(10, 9);
  NewSequence first = Prefill(prompt);
  // Roll back into the second full block, then append different tokens.
  PKV_ASSERT_OK(cache_->Truncate(first.id, 6));
  PKV_ASSERT_OK(cache_->Reserve(first.id, Tokens(900, 3)));
  PKV_EXPECT_OK(cache_->CheckInvariants());
  // The original prompt now hits only its first block: the second changed and left the index.
  NewSequence again = Prefill(prompt);
  EXPECT_EQ(again.cached_tokens, 4);
  std::vector<int32_t> tokens = *cache_->Tokens(again.id);
  EXPECT_EQ(tokens, prompt);
}

// Speculative tokens rolled back into a cached block: the block leaves the index when it is
// rewritten, and so does the cached block after it, which no lookup can reach any more. Kept, it
// held its key, so recomputing the same prompt could not register its third block again.
TEST_F(PrefixCacheTest, RewrittenBlockTakesItsCachedExtensionsOutOfTheIndex) {
  Make(4, 32);
  const std::vector<int32_t> prompt = Tokens(10, 13);  // 3 full blocks + 1.
  NewSequence first = Prefill(prompt);
  const BlockId third = (*cache_->BlockTable(first.id))[2];
  PKV_ASSERT_OK(cache_->Truncate(first.id, 6));  // The third block is released, still cached.
  EXPECT_NE(cache_->pool().cached(third), nullptr);
  PKV_ASSERT_OK(cache_->Reserve(first.id, Tokens(900, 3)));  // Rewrites the second block.
  PKV_EXPECT_OK(cache_->CheckInvariants());
  EXPECT_EQ(cache_->pool().cached(third), nullptr);
  EXPECT_EQ(cache_->pool().stats().dropped_extensions, 1);
  EXPECT_EQ(Prefill(prompt).cached_tokens, 4) << "only the first block still matches";
  EXPECT_EQ(Prefill(prompt).cached_tokens, 12) << "the recomputed blocks were all registered";
}

TEST_F(PrefixCacheTest, SharedTruncatedBlockIsCopiedNotOverwritten) {
  Make(4, 32);
  const std::vector<int32_t> prompt = Tokens(10, 9);
  NewSequence first = Prefill(prompt);
  NewSequence second = Prefill(prompt);  // Shares blocks 0 and 1.
  const std::vector<float> second_k = ReadAll(*cache_, second.id, 0, false);
  PKV_ASSERT_OK(cache_->Truncate(first.id, 6));
  PKV_ASSERT_OK(cache_->Reserve(first.id, Tokens(900, 3)));
  EXPECT_EQ(cache_->Stats().cow_copies, 1);
  EXPECT_EQ(ReadAll(*cache_, second.id, 0, false), second_k);
  EXPECT_EQ(Prefill(prompt).cached_tokens, 8);
}

TEST_F(PrefixCacheTest, CachingOffNeverShares) {
  cache_ = test::MakeCache(test::SmallConfig(4, 32));
  const std::vector<int32_t> prompt = Tokens(10, 9);
  Prefill(prompt);
  EXPECT_EQ(Prefill(prompt).cached_tokens, 0);
  EXPECT_EQ(cache_->Stats().prefix_queries, 0);
}

}  // namespace
}  // namespace pagedkv

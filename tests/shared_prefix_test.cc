// FindSharedPrefixes: which sequences of a call are read together, on block tables built by hand.
#include "attention/shared_prefix.h"

#include <cstdint>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "pagedkv/view.h"

namespace pagedkv::internal {
namespace {

using ::testing::ElementsAre;

// Block tables (one per sequence) and lengths, viewed with 4-token blocks.
struct Tables {
  std::vector<std::vector<BlockId>> tables;
  std::vector<int64_t> lens;
  std::vector<int32_t> offsets, ids;
  PagedKvView view;

  PagedKvView& View() {
    offsets = {0};
    ids.clear();
    for (const auto& t : tables) {
      ids.insert(ids.end(), t.begin(), t.end());
      offsets.push_back(static_cast<int32_t>(ids.size()));
    }
    view.block_size = 4;
    view.num_seqs = static_cast<int32_t>(tables.size());
    view.block_offsets = offsets.data();
    view.block_ids = ids.data();
    view.seq_lens = lens.data();
    return view;
  }
};

// Decode: one query per sequence.
std::vector<int32_t> OneEach(size_t seqs) {
  std::vector<int32_t> offsets;
  for (size_t s = 0; s <= seqs; ++s) offsets.push_back(static_cast<int32_t>(s));
  return offsets;
}

TEST(SharedPrefixTest, ForksOfOnePromptShareItsWholeBlocks) {
  Tables t;
  // A prompt of 3 blocks (12 tokens) forked three times; sequence 2 is another prompt.
  t.tables = {{7, 8, 9, 20}, {7, 8, 9, 21}, {1, 2, 3, 4}, {7, 8, 9, 22, 23}};
  t.lens = {14, 13, 15, 17};
  const auto groups = FindSharedPrefixes(t.View(), OneEach(4), 8, 64);
  ASSERT_EQ(groups.size(), 1u);
  EXPECT_THAT(groups[0].seqs, ElementsAre(0, 1, 3));
  EXPECT_EQ(groups[0].tokens, 12);
}

TEST(SharedPrefixTest, SharedKeysStopBeforeEachMembersQueries) {
  Tables t;
  // Both share 4 blocks, but sequence 1's 6 queries start at position 10: keys before it only,
  // and whole blocks: 2 (8 tokens).
  t.tables = {{5, 6, 7, 8, 9}, {5, 6, 7, 8, 10}};
  t.lens = {18, 16};
  EXPECT_EQ(FindSharedPrefixes(t.View(), {0, 1, 7}, 4, 64)[0].tokens, 8);
  // At least 12 keys asked for: none.
  EXPECT_TRUE(FindSharedPrefixes(t.View(), {0, 1, 7}, 12, 64).empty());
  // One query each, at positions 17 and 15: the fourth block holds sequence 1's newest key,
  // which stays its own.
  EXPECT_EQ(FindSharedPrefixes(t.View(), {0, 1, 2}, 12, 64)[0].tokens, 12);
  t.lens[1] = 17;
  EXPECT_EQ(FindSharedPrefixes(t.View(), {0, 1, 2}, 12, 64)[0].tokens, 16);
  // A sequence with no queries is in no group.
  EXPECT_TRUE(FindSharedPrefixes(t.View(), {0, 0, 1}, 4, 64).empty());
}

TEST(SharedPrefixTest, GroupsAreCutAtMaxRowsAndWhereTablesPart) {
  Tables t;
  // Five forks of one prompt, two queries each: at most 4 rows a group.
  for (BlockId b = 0; b < 5; ++b) {
    t.tables.push_back({1, 2, 3, 40 + b, 50 + b});
    t.lens.push_back(20);
  }
  // Same first block, then apart: shares one block with the others, fewer than asked.
  t.tables.push_back({1, 9, 9, 9});
  t.lens.push_back(16);
  const std::vector<int32_t> q_offsets = {0, 2, 4, 6, 8, 10, 11};
  const auto groups = FindSharedPrefixes(t.View(), q_offsets, 8, 4);
  ASSERT_EQ(groups.size(), 2u);
  EXPECT_THAT(groups[0].seqs, ElementsAre(0, 1));
  EXPECT_THAT(groups[1].seqs, ElementsAre(2, 3));
  EXPECT_EQ(groups[0].tokens, 12);
  // Sequence 4 is left alone (sequence 5 shares too little with it): no group of one.
  const auto wide = FindSharedPrefixes(t.View(), q_offsets, 8, 64);
  ASSERT_EQ(wide.size(), 1u);
  EXPECT_THAT(wide[0].seqs, ElementsAre(0, 1, 2, 3, 4));
  // Asked for one block: sequence 5 joins, and the group keeps only what all share.
  const auto loose = FindSharedPrefixes(t.View(), q_offsets, 1, 64);
  ASSERT_EQ(loose.size(), 1u);
  EXPECT_EQ(loose[0].seqs.size(), 6u);
  EXPECT_EQ(loose[0].tokens, 4);
}

}  // namespace
}  // namespace pagedkv::internal

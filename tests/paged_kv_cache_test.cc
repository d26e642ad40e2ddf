#include "pagedkv/paged_kv_cache.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "test_util.h"

namespace pagedkv {
namespace {

using test::Pattern;
using test::ReadAll;
using test::ReserveAndWrite;
using test::SmallConfig;
using test::TakeSnapshot;

class CacheTest : public ::testing::Test {
 protected:
  void Make(const CacheConfig& config) {
    cache_ = test::MakeCache(config);
    ASSERT_NE(cache_, nullptr);
  }
  SeqId NewSeq() {
    absl::StatusOr<NewSequence> s = cache_->CreateSequence();
    EXPECT_TRUE(s.ok()) << s.status();
    Check();
    return s.ok() ? s->id : -1;
  }
  void Check() { PKV_EXPECT_OK(cache_->CheckInvariants()); }

  std::unique_ptr<PagedKvCache> cache_;
};

TEST_F(CacheTest, CreateRejectsBadConfig) {
  CacheConfig config = SmallConfig();
  config.head_dim = 0;
  absl::Status s = PagedKvCache::Create(config).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("head_dim = 0"), absl::string_view::npos) << s;
  config = SmallConfig();
  config.page_layout = static_cast<PageLayout>(7);
  s = PagedKvCache::Create(config).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("page_layout = 7"), absl::string_view::npos) << s;
  config = SmallConfig();
  config.eviction_order = static_cast<EvictionOrder>(3);
  s = PagedKvCache::Create(config).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("eviction_order = 3"), absl::string_view::npos) << s;
}

// kAuto lays pages out head-major without prefix caching or with sweep eviction (runs of blocks
// stay adjacent) and block-major with LRU-evicted prefix caching (pages stay scattered there);
// the view's strides say which.
TEST_F(CacheTest, AutoPageLayoutFollowsPrefixCaching) {
  for (int mode = 0; mode < 3; ++mode) {
    CacheConfig config = SmallConfig(4, 16);
    config.enable_prefix_caching = mode > 0;
    config.eviction_order = mode == 2 ? EvictionOrder::kSweep : EvictionOrder::kLru;
    const bool prefix = mode == 1;  // Block-major.
    Make(config);
    const SeqId seq = NewSeq();
    PKV_ASSERT_OK(cache_->Reserve(seq, 5));
    PagedKvViewStorage storage;
    PKV_ASSIGN_OR_FAIL(PagedKvView view, cache_->MakeView({seq}, &storage));
    const int64_t page = int64_t{config.block_size} * view.row_stride_bytes;
    EXPECT_EQ(prefix ? view.head_stride_bytes : view.block_stride_bytes, page) << prefix;
    EXPECT_EQ(prefix ? view.block_stride_bytes : view.head_stride_bytes,
              page * (prefix ? config.num_kv_heads : 16)) << prefix;
  }
}

TEST_F(CacheTest, ReserveGrowsBlockTableAtBlockBoundaries) {
  Make(SmallConfig(4, 16));
  const SeqId seq = NewSeq();
  for (int64_t i = 0; i < 9; ++i) {
    PKV_ASSIGN_OR_FAIL(int64_t start, cache_->Reserve(seq, 1));
    EXPECT_EQ(start, i);
    EXPECT_EQ(cache_->BlockTable(seq)->size(), static_cast<size_t>((i + 4) / 4));
    Check();
  }
  EXPECT_EQ(*cache_->Length(seq), 9);
  EXPECT_EQ(cache_->pool().stats().used_blocks, 3);
}

TEST_F(CacheTest, WrittenKvReadsBackInEveryDtype) {
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
    Make(SmallConfig(4, 16, dtype));
    const SeqId seq = NewSeq();
    PKV_ASSERT_OK(ReserveAndWrite(*cache_, seq, 7));
    PKV_ASSERT_OK(ReserveAndWrite(*cache_, seq, 6));
    for (int32_t layer = 0; layer < 2; ++layer) {
      EXPECT_EQ(ReadAll(*cache_, seq, layer, false), Pattern(cache_->config(), 0, 13, layer, false))
          << DTypeName(dtype);
      EXPECT_EQ(ReadAll(*cache_, seq, layer, true), Pattern(cache_->config(), 0, 13, layer, true));
    }
    Check();
  }
}

TEST_F(CacheTest, AppendKvWritesEveryLayer) {
  Make(SmallConfig(4, 16));
  const SeqId seq = NewSeq();
  const CacheConfig& c = cache_->config();
  std::vector<float> k, v;
  for (int32_t layer = 0; layer < c.num_layers; ++layer) {
    auto kl = Pattern(c, 0, 5, layer, false);
    auto vl = Pattern(c, 0, 5, layer, true);
    k.insert(k.end(), kl.begin(), kl.end());
    v.insert(v.end(), vl.begin(), vl.end());
  }
  PKV_ASSERT_OK(cache_->AppendKv(seq, k, v, std::vector<int32_t>{1, 2, 3, 4, 5}));
  EXPECT_EQ(*cache_->Tokens(seq), (std::vector<int32_t>{1, 2, 3, 4, 5}));
  for (int32_t layer = 0; layer < c.num_layers; ++layer) {
    EXPECT_EQ(ReadAll(*cache_, seq, layer, false), Pattern(c, 0, 5, layer, false));
  }
  // Wrong shape: nothing reserved.
  k.pop_back();
  PKV_ASSERT_CODE(cache_->AppendKv(seq, k, v), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*cache_->Length(seq), 5);
  Check();
}

TEST_F(CacheTest, UnknownAndFreedSequencesAreNotFound) {
  Make(SmallConfig(4, 16));
  const SeqId seq = NewSeq();
  PKV_ASSERT_OK(cache_->Free(seq));
  for (SeqId bad : {seq, SeqId{-1}, SeqId{12345}}) {
    PKV_ASSERT_CODE(cache_->Reserve(bad, 1), absl::StatusCode::kNotFound);
    PKV_ASSERT_CODE(cache_->Fork(bad), absl::StatusCode::kNotFound);
    PKV_ASSERT_CODE(cache_->Truncate(bad, 0), absl::StatusCode::kNotFound);
    PKV_ASSERT_CODE(cache_->Free(bad), absl::StatusCode::kNotFound);
    PKV_ASSERT_CODE(cache_->Length(bad), absl::StatusCode::kNotFound);
    PKV_ASSERT_CODE(cache_->Serialize(bad), absl::StatusCode::kNotFound);
    PKV_ASSERT_CODE(cache_->WriteKv(bad, 0, 0, {}, {}), absl::StatusCode::kNotFound);
    std::vector<float> out;
    PKV_ASSERT_CODE(cache_->ReadKv(bad, 0, 0, 0, absl::MakeSpan(out), absl::MakeSpan(out)),
                    absl::StatusCode::kNotFound);
    PagedKvViewStorage storage;
    PKV_ASSERT_CODE(cache_->MakeView({bad}, &storage), absl::StatusCode::kNotFound);
  }
  // The slot is reused under a new id; the old id stays dead.
  const SeqId again = NewSeq();
  EXPECT_NE(again, seq);
  EXPECT_FALSE(cache_->Contains(seq));
  EXPECT_TRUE(cache_->Contains(again));
}

TEST_F(CacheTest, BadCountsAndLengthsAreInvalidAndChangeNothing) {
  CacheConfig config = SmallConfig(4, 64);
  config.max_seq_len = 10;
  Make(config);
  const SeqId seq = NewSeq();
  PKV_ASSERT_OK(ReserveAndWrite(*cache_, seq, 6));
  const test::Snapshot before = TakeSnapshot(*cache_);
  // The message names what was wrong, with the values (PlanReserve checks, ReserveError says).
  const auto expect_error = [](const absl::Status& status, const std::string& want) {
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_NE(status.message().find(want), absl::string_view::npos) << status;
  };
  expect_error(cache_->Reserve(seq, -1).status(),
               absl::StrCat("cannot reserve -1 tokens for sequence ", seq));
  expect_error(cache_->Reserve(seq, 5).status(),
               absl::StrCat("sequence ", seq,
                            " of length 6 cannot grow by 5 tokens past "
                            "max_seq_len 10"));
  PKV_ASSERT_CODE(cache_->Truncate(seq, 7), absl::StatusCode::kInvalidArgument);
  PKV_ASSERT_CODE(cache_->Truncate(seq, -1), absl::StatusCode::kInvalidArgument);
  std::vector<int32_t> two_ids = {1, 2};
  ReserveRequest mismatched{seq, 3, two_ids};
  expect_error(cache_->ReserveBatch({mismatched}),
               absl::StrCat("reserving 3 tokens for sequence ", seq, " with 2 token ids"));
  PKV_ASSERT_CODE(cache_->ReserveBatch({{seq, 1, {}}, {seq, 1, {}}}),
                  absl::StatusCode::kInvalidArgument);
  PKV_ASSERT_CODE(cache_->CreateSequence(std::vector<int32_t>(11, 1)),
                  absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(TakeSnapshot(*cache_), before);
  Check();
}

TEST_F(CacheTest, WriteAndReadRejectBadShapesLayersAndRanges) {
  Make(SmallConfig(4, 16));
  const SeqId seq = NewSeq();
  PKV_ASSERT_OK(ReserveAndWrite(*cache_, seq, 5));
  const test::Snapshot before = TakeSnapshot(*cache_);
  const CacheConfig& c = cache_->config();
  auto k = Pattern(c, 0, 1, 0, false, 9.0f);
  PKV_ASSERT_CODE(cache_->WriteKv(seq, 2, 0, k, k), absl::StatusCode::kInvalidArgument);
  PKV_ASSERT_CODE(cache_->WriteKv(seq, -1, 0, k, k), absl::StatusCode::kInvalidArgument);
  std::vector<float> short_k(k.begin(), k.end() - 1);
  PKV_ASSERT_CODE(cache_->WriteKv(seq, 0, 0, short_k, short_k), absl::StatusCode::kInvalidArgument);
  PKV_ASSERT_CODE(cache_->WriteKv(seq, 0, 0, k, short_k), absl::StatusCode::kInvalidArgument);
  PKV_ASSERT_CODE(cache_->WriteKv(seq, 0, 5, k, k), absl::StatusCode::kFailedPrecondition);
  PKV_ASSERT_CODE(cache_->WriteKv(seq, 0, -1, k, k), absl::StatusCode::kFailedPrecondition);
  std::vector<float> out(1000);
  PKV_ASSERT_CODE(cache_->ReadKv(seq, 0, 3, 3, absl::MakeSpan(out), absl::MakeSpan(out)),
                  absl::StatusCode::kInvalidArgument);
  std::vector<float> small(5);
  PKV_ASSERT_CODE(cache_->ReadKv(seq, 0, 0, 1, absl::MakeSpan(small), absl::MakeSpan(out)),
                  absl::StatusCode::kInvalidArgument);
  PKV_ASSERT_CODE(cache_->ReadKv(seq, 5, 0, 1, absl::MakeSpan(out), absl::MakeSpan(out)),
                  absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(TakeSnapshot(*cache_), before);
  // A rewrite of a reserved position is allowed and lands.
  PKV_ASSERT_OK(cache_->WriteKv(seq, 1, 4, k, k));
  std::vector<float> k4(k.size()), v4(k.size());
  PKV_ASSERT_OK(cache_->ReadKv(seq, 1, 4, 1, absl::MakeSpan(k4), absl::MakeSpan(v4)));
  EXPECT_EQ(k4, k);
}

TEST_F(CacheTest, ForkSharesEveryBlockAndCopiesOnlyTheTailOnWrite) {
  Make(SmallConfig(4, 16));
  const SeqId parent = NewSeq();
  PKV_ASSERT_OK(ReserveAndWrite(*cache_, parent, 10));  // Blocks: 4 + 4 + 2.
  PKV_ASSIGN_OR_FAIL(SeqId child, cache_->Fork(parent));
  Check();
  PKV_ASSIGN_OR_FAIL(absl::Span<const BlockId> child_blocks, cache_->BlockTable(child));
  PKV_ASSIGN_OR_FAIL(absl::Span<const BlockId> parent_blocks, cache_->BlockTable(parent));
  EXPECT_EQ(child_blocks, parent_blocks);
  for (BlockId b : parent_blocks) EXPECT_EQ(cache_->pool().ref_count(b), 2);
  EXPECT_EQ(cache_->pool().stats().used_blocks, 3);
  EXPECT_EQ(cache_->Stats().blocks_saved_by_sharing, 3);
  // Shared positions are read-only for both.
  auto k = Pattern(cache_->config(), 9, 1, 0, false, 5.0f);
  PKV_ASSERT_CODE(cache_->WriteKv(parent, 0, 9, k, k), absl::StatusCode::kFailedPrecondition);
  PKV_ASSERT_CODE(cache_->WriteKv(child, 0, 9, k, k), absl::StatusCode::kFailedPrecondition);

  const auto parent_before = TakeSnapshot(*cache_).seqs[0];
  PKV_ASSERT_OK(ReserveAndWrite(*cache_, child, 3, /*seed=*/7.0f));  // Copies the tail block.
  Check();
  EXPECT_EQ(cache_->Stats().cow_copies, 1);
  PKV_ASSIGN_OR_FAIL(absl::Span<const BlockId> child_table, cache_->BlockTable(child));
  PKV_ASSIGN_OR_FAIL(absl::Span<const BlockId> parent_table, cache_->BlockTable(parent));
  EXPECT_EQ(child_table[0], parent_table[0]);
  EXPECT_EQ(child_table[1], parent_table[1]);
  EXPECT_NE(child_table[2], parent_table[2]);
  EXPECT_EQ(cache_->pool().ref_count(parent_table[2]), 1);
  // The parent did not change; the child kept the shared prefix and has its own tokens.
  EXPECT_EQ(TakeSnapshot(*cache_).seqs[0], parent_before);
  for (int32_t layer = 0; layer < 2; ++layer) {
    std::vector<float> want = Pattern(cache_->config(), 0, 10, layer, false);
    auto tail = Pattern(cache_->config(), 10, 3, layer, false, 7.0f);
    want.insert(want.end(), tail.begin(), tail.end());
    EXPECT_EQ(ReadAll(*cache_, child, layer, false), want);
  }
  // The parent now writes its own tail in place: no second copy.
  PKV_ASSERT_OK(ReserveAndWrite(*cache_, parent, 1, 3.0f));
  EXPECT_EQ(cache_->Stats().cow_copies, 1);
  Check();
}

TEST_F(CacheTest, ForkAtBlockBoundaryNeedsNoCopy) {
  Make(SmallConfig(4, 16));
  const SeqId parent = NewSeq();
  PKV_ASSERT_OK(ReserveAndWrite(*cache_, parent, 8));
  PKV_ASSIGN_OR_FAIL(SeqId child, cache_->Fork(parent));
  PKV_ASSERT_OK(ReserveAndWrite(*cache_, child, 1));
  PKV_ASSERT_OK(ReserveAndWrite(*cache_, parent, 1));
  EXPECT_EQ(cache_->Stats().cow_copies, 0);
  EXPECT_EQ(cache_->pool().stats().used_blocks, 4);
  Check();
}

TEST_F(CacheTest, TruncateReleasesWholeBlocksAndNeverWritesSharedPages) {
  Make(SmallConfig(4, 16));
  const SeqId seq = NewSeq();
  PKV_ASSERT_OK(ReserveAndWrite(*cache_, seq, 11));
  PKV_ASSIGN_OR_FAIL(SeqId fork, cache_->Fork(seq));
  const auto fork_before = TakeSnapshot(*cache_).seqs[1];
  PKV_ASSERT_OK(cache_->Truncate(seq, 5));
  Check();
  EXPECT_EQ(cache_->BlockTable(seq)->size(), 2u);
  EXPECT_EQ(*cache_->WritableFrom(seq), 5);
  // Speculative tokens re-appended after rollback go to a private copy of the tail.
  PKV_ASSERT_OK(ReserveAndWrite(*cache_, seq, 4, 8.0f));
  Check();
  EXPECT_EQ(TakeSnapshot(*cache_).seqs[1], fork_before);
  PKV_ASSERT_OK(cache_->Truncate(seq, 0));
  EXPECT_TRUE(cache_->BlockTable(seq)->empty());
  PKV_ASSERT_OK(cache_->Truncate(fork, 11));  // A no-op.
  EXPECT_EQ(TakeSnapshot(*cache_).seqs[1], fork_before);
  Check();
}

TEST_F(CacheTest, ExhaustionAtEveryOperationChangesNothing) {
  Make(SmallConfig(4, 6));
  const SeqId a = NewSeq();
  PKV_ASSERT_OK(ReserveAndWrite(*cache_, a, 10));  // 3 blocks.
  PKV_ASSIGN_OR_FAIL(SeqId b, cache_->Fork(a));
  const SeqId c = NewSeq();
  PKV_ASSERT_OK(ReserveAndWrite(*cache_, c, 8));  // 2 blocks; 1 free left.
  PKV_ASSIGN_OR_FAIL(std::string payload, cache_->Serialize(a));
  const test::Snapshot before = TakeSnapshot(*cache_);

  // Reserve: b needs a copy of the shared tail plus one new block.
  absl::Status s = cache_->Reserve(b, 5).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(s.message().find("needs 2 blocks but only 1"), absl::string_view::npos) << s;
  EXPECT_EQ(TakeSnapshot(*cache_), before);
  // A batch whose first entries fit but whose total does not.
  PKV_ASSERT_CODE(cache_->ReserveBatch({{c, 1, {}}, {a, 1, {}}, {b, 1, {}}}),
                  absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(TakeSnapshot(*cache_), before);
  // AppendKv of 6 tokens to c needs 2 blocks.
  const CacheConfig& cfg = cache_->config();
  std::vector<float> kv(static_cast<size_t>(cfg.num_layers * 6 * cfg.num_kv_heads * cfg.head_dim));
  PKV_ASSERT_CODE(cache_->AppendKv(c, kv, kv), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(TakeSnapshot(*cache_), before);
  // Restore needs 3.
  PKV_ASSERT_CODE(cache_->Restore(payload), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(TakeSnapshot(*cache_), before);
  Check();
  // What fits still works afterwards: a's copy of the shared tail takes the last block.
  PKV_ASSERT_OK(cache_->ReserveBatch({{a, 1, {}}}));
  Check();
}

TEST_F(CacheTest, ReserveBatchAppliesToEverySequence) {
  Make(SmallConfig(4, 32));
  std::vector<SeqId> seqs;
  for (int i = 0; i < 5; ++i) {
    seqs.push_back(NewSeq());
    PKV_ASSERT_OK(ReserveAndWrite(*cache_, seqs.back(), i + 2));
  }
  std::vector<ReserveRequest> step;
  std::vector<std::vector<int32_t>> ids(seqs.size());
  for (size_t i = 0; i < seqs.size(); ++i) {
    ids[i] = {static_cast<int32_t>(100 + i), static_cast<int32_t>(200 + i)};
    step.push_back({seqs[i], 2, ids[i]});
  }
  PKV_ASSERT_OK(cache_->ReserveBatch(step));
  Check();
  for (size_t i = 0; i < seqs.size(); ++i) {
    EXPECT_EQ(*cache_->Length(seqs[i]), static_cast<int64_t>(i) + 4);
    std::vector<int32_t> tokens = *cache_->Tokens(seqs[i]);
    EXPECT_EQ(tokens[i + 2], ids[i][0]);
    EXPECT_EQ(tokens[i + 3], ids[i][1]);
  }
}

TEST_F(CacheTest, TokensUnknownAfterReserveWithoutIds) {
  Make(SmallConfig(4, 16));
  const SeqId seq = NewSeq();
  PKV_ASSERT_OK(ReserveAndWrite(*cache_, seq, 3));
  PKV_ASSERT_OK(cache_->Reserve(seq, 2));
  PKV_ASSERT_CODE(cache_->Tokens(seq), absl::StatusCode::kFailedPrecondition);
  PKV_ASSERT_OK(cache_->Truncate(seq, 0));
  EXPECT_TRUE(cache_->Tokens(seq).ok());
}

TEST_F(CacheTest, VisitKvWalksPositionsInPlace) {
  Make(SmallConfig(4, 16, DType::kF16));
  const SeqId seq = NewSeq();
  PKV_ASSERT_OK(ReserveAndWrite(*cache_, seq, 6));
  const CacheConfig& c = cache_->config();
  std::vector<float> k = ReadAll(*cache_, seq, 1, false);
  int64_t visits = 0;
  PKV_ASSERT_OK(cache_->VisitKv(seq, 1, [&](int64_t pos, int32_t h, const std::byte* kr,
                                            const std::byte* vr) {
    EXPECT_EQ(pos, visits / c.num_kv_heads);
    EXPECT_EQ(h, visits % c.num_kv_heads);
    std::vector<float> row(static_cast<size_t>(c.head_dim));
    ConvertToF32(c.dtype, kr, c.head_dim, row.data());
    for (int32_t d = 0; d < c.head_dim; ++d) {
      EXPECT_EQ(row[static_cast<size_t>(d)], k[static_cast<size_t>((pos * c.num_kv_heads + h) * c.head_dim + d)]);
    }
    EXPECT_NE(vr, nullptr);
    ++visits;
  }));
  EXPECT_EQ(visits, 6 * c.num_kv_heads);
}

TEST_F(CacheTest, ViewAddressesTheSamePages) {
  Make(SmallConfig(4, 16, DType::kBF16));
  const SeqId a = NewSeq();
  const SeqId b = NewSeq();
  PKV_ASSERT_OK(ReserveAndWrite(*cache_, a, 6));
  PKV_ASSERT_OK(ReserveAndWrite(*cache_, b, 9, 2.0f));
  PagedKvViewStorage storage;
  PKV_ASSIGN_OR_FAIL(PagedKvView view, cache_->MakeView({b, a}, &storage));
  ASSERT_EQ(view.num_seqs, 2);
  EXPECT_EQ(view.seq_lens[0], 9);
  EXPECT_EQ(view.seq_lens[1], 6);
  const CacheConfig& c = cache_->config();
  for (int32_t s = 0; s < 2; ++s) {
    const SeqId id = s == 0 ? b : a;
    for (int32_t layer = 0; layer < c.num_layers; ++layer) {
      std::vector<float> v = ReadAll(*cache_, id, layer, true);
      for (int64_t pos = 0; pos < view.seq_lens[s]; ++pos) {
        const BlockId block = view.BlockTable(s)[pos / c.block_size];
        for (int32_t h = 0; h < c.num_kv_heads; ++h) {
          const std::byte* row =
              view.Page(layer, true, block, h) + (pos % c.block_size) * view.row_stride_bytes;
          std::vector<float> got(static_cast<size_t>(c.head_dim));
          ConvertToF32(c.dtype, row, c.head_dim, got.data());
          for (int32_t d = 0; d < c.head_dim; ++d) {
            ASSERT_EQ(got[static_cast<size_t>(d)],
                      v[static_cast<size_t>((pos * c.num_kv_heads + h) * c.head_dim + d)]);
          }
        }
      }
    }
  }
}

TEST_F(CacheTest, StatsCountWasteAndSharing) {
  Make(SmallConfig(4, 16));
  const SeqId a = NewSeq();
  PKV_ASSERT_OK(ReserveAndWrite(*cache_, a, 6));  // 2 blocks, 2 slots of waste.
  PKV_ASSERT_OK(cache_->Fork(a));
  CacheStats st = cache_->Stats();
  EXPECT_EQ(st.num_sequences, 2);
  EXPECT_EQ(st.logical_tokens, 12);
  EXPECT_EQ(st.physical_tokens, 6);
  EXPECT_EQ(st.tail_waste_tokens, 2);
  EXPECT_DOUBLE_EQ(st.utilization, 6.0 / 8.0);
  EXPECT_EQ(st.blocks_saved_by_sharing, 2);
}

// Runs of consecutive block ids (decode streams a run as one array): a growing sequence takes
// the block after its last one where that one is free.
TEST_F(CacheTest, StatsCountTableRunsAndSequencesGrowIntoTheNextBlock) {
  Make(SmallConfig(4, 16));
  const SeqId a = NewSeq();
  PKV_ASSERT_OK(cache_->Reserve(a, 12));  // Blocks 0, 1, 2.
  const SeqId b = NewSeq();
  PKV_ASSERT_OK(cache_->Reserve(b, 4));   // Block 3.
  PKV_ASSERT_OK(cache_->Reserve(a, 1));   // Block 4: a is [0 1 2][4].
  Check();
  CacheStats st = cache_->Stats();
  EXPECT_EQ(st.table_entries, 5);
  EXPECT_EQ(st.table_runs, 3);
  PKV_ASSIGN_OR_FAIL(const SeqId fork, cache_->Fork(a));  // Its table has a's two runs.
  st = cache_->Stats();
  EXPECT_EQ(st.table_entries, 9);
  EXPECT_EQ(st.table_runs, 5);
  Check();
  // The free stack's top is now 0 1 2 4 (the fork's, which were a's, deepest first), then 3
  // (b's). c takes 0 from the top, then grows into 1, 2, 3 and 4 though 4 is above 3.
  PKV_ASSERT_OK(cache_->Free(b));
  PKV_ASSERT_OK(cache_->Free(a));
  PKV_ASSERT_OK(cache_->Free(fork));
  const SeqId c = NewSeq();
  PKV_ASSERT_OK(cache_->Reserve(c, 17));
  PKV_ASSERT_OK(cache_->Reserve(c, 3));
  PagedKvViewStorage storage;
  PKV_ASSIGN_OR_FAIL(PagedKvView view, cache_->MakeView({c}, &storage));
  EXPECT_EQ(std::vector<BlockId>(view.BlockTable(0), view.BlockTable(0) + 5),
            (std::vector<BlockId>{0, 1, 2, 3, 4}));
  st = cache_->Stats();
  EXPECT_EQ(st.table_entries, 5);
  EXPECT_EQ(st.table_runs, 1);
  Check();
}

TEST_F(CacheTest, MetadataOnlyRefusesKvButCountsBlocks) {
  CacheConfig config = SmallConfig(16, 8);
  config.metadata_only = true;
  Make(config);
  const SeqId seq = NewSeq();
  PKV_ASSERT_OK(cache_->Reserve(seq, 40));
  EXPECT_EQ(cache_->pool().stats().used_blocks, 3);
  std::vector<float> kv(static_cast<size_t>(config.num_kv_heads * config.head_dim));
  PKV_ASSERT_CODE(cache_->WriteKv(seq, 0, 0, kv, kv), absl::StatusCode::kFailedPrecondition);
  PKV_ASSERT_CODE(cache_->ReadKv(seq, 0, 0, 1, absl::MakeSpan(kv), absl::MakeSpan(kv)),
                  absl::StatusCode::kFailedPrecondition);
  PKV_ASSERT_CODE(cache_->Serialize(seq), absl::StatusCode::kFailedPrecondition);
  PagedKvViewStorage storage;
  PKV_ASSERT_CODE(cache_->MakeView({seq}, &storage), absl::StatusCode::kFailedPrecondition);
  PKV_ASSIGN_OR_FAIL(SeqId fork, cache_->Fork(seq));
  PKV_ASSERT_OK(cache_->Reserve(fork, 1));  // Copy-on-write is metadata too.
  EXPECT_EQ(cache_->Stats().cow_copies, 1);
  Check();
}

TEST_F(CacheTest, ClearFreesEverything) {
  CacheConfig config = SmallConfig(4, 16);
  config.enable_prefix_caching = true;
  Make(config);
  std::vector<int32_t> prompt = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  PKV_ASSIGN_OR_FAIL(NewSequence seq, cache_->CreateSequence(prompt));
  PKV_ASSERT_OK(cache_->Reserve(seq.id, prompt));
  PKV_ASSERT_OK(cache_->Fork(seq.id));
  cache_->Clear();
  Check();
  EXPECT_EQ(cache_->num_sequences(), 0);
  EXPECT_EQ(cache_->pool().stats().free_blocks, 16);
  EXPECT_FALSE(cache_->Contains(seq.id));
}

}  // namespace
}  // namespace pagedkv

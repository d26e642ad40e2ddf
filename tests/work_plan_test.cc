// WorkPlan: which items an attention call runs, on block tables built by hand (no kernel runs).
#include "attention/work_plan.h"

#include <cstdint>
#include <numeric>
#include <vector>

#include "gtest/gtest.h"
#include "pagedkv/attention.h"
#include "pagedkv/view.h"

namespace pagedkv::internal {
namespace {

// A prompt of 2,048 tokens (128 16-token blocks) forked into four sequences of 2,100 tokens, and
// a fifth sequence of its own, each with one query: 8 KV heads, GQA 4, head dim 128.
struct Forks {
  std::vector<int32_t> offsets = {0};
  std::vector<BlockId> ids;
  std::vector<int64_t> lens;
  std::vector<int32_t> q_offsets;
  std::vector<float> q, out;
  KernelArgs args;

  explicit Forks(DType dtype) {
    BlockId next = 1000;
    for (int s = 0; s < 5; ++s) {
      for (BlockId b = 0; b < 132; ++b) ids.push_back(s < 4 && b < 128 ? b : next++);
      offsets.push_back(static_cast<int32_t>(ids.size()));
      lens.push_back(2100);
    }
    q_offsets.resize(6);
    std::iota(q_offsets.begin(), q_offsets.end(), 0);
    q.assign(5 * 32 * 128, 0.5f);
    out.assign(q.size(), 0.0f);
    args.view.block_size = 16;
    args.view.num_kv_heads = 8;
    args.view.head_dim = 128;
    args.view.dtype = dtype;
    args.view.num_seqs = 5;
    args.view.block_offsets = offsets.data();
    args.view.block_ids = ids.data();
    args.view.seq_lens = lens.data();
    args.num_q_heads = 32;
    args.group = 4;
    args.q_offsets = q_offsets.data();
    args.q = q.data();
    args.out = out.data();
  }
};

// Keys [kv_begin, kv_end) each (sequence, KV head) of the call's own sequences reads, summed over
// its items; and the shared items' keys, per KV head.
struct Coverage {
  std::vector<int64_t> own;     // [seq * 8 + kv head]
  std::vector<int64_t> shared;  // [kv head]
};

Coverage CoverageOf(const WorkPlan& plan, const KernelArgs& args) {
  Coverage c{std::vector<int64_t>(5 * 8), std::vector<int64_t>(8)};
  for (size_t i = 0; i < plan.size(); ++i) {
    const WorkItem& it = plan.item(i);
    for (int32_t h = it.kv_head; h < it.kv_head + it.kv_heads; ++h) {
      if (&plan.args_of(i) == &args) {
        c.own[static_cast<size_t>(it.seq * 8 + h)] += it.kv_end - it.kv_begin;
      } else {
        EXPECT_EQ(it.seq, 0);
        EXPECT_EQ(plan.args_of(i).view.num_seqs, 1);
        c.shared[static_cast<size_t>(h)] += it.kv_end - it.kv_begin;
      }
    }
  }
  return c;
}

TEST(WorkPlanTest, ForksReadTheirSharedPrefixOnce) {
  for (DType dtype : {DType::kBF16, DType::kF32}) {
    for (int32_t threads : {1, 2, 16}) {
      Forks f(dtype);
      const WorkPlan plan(f.args, AttentionOptions{}, threads);
      ASSERT_EQ(plan.groups().size(), 1u);
      EXPECT_EQ(plan.groups()[0].tokens, 2048);
      const Coverage c = CoverageOf(plan, f.args);
      for (int32_t h = 0; h < 8; ++h) {
        EXPECT_EQ(c.shared[static_cast<size_t>(h)], 2048) << "head " << h;
        for (int32_t s = 0; s < 5; ++s) {
          EXPECT_EQ(c.own[static_cast<size_t>(s * 8 + h)], s < 4 ? 2100 - 2048 : 2100)
              << "sequence " << s << " head " << h << " threads " << threads;
        }
      }
    }
  }
}

TEST(WorkPlanTest, NoSharingWhereTheOptionsOrDtypeSayNot) {
  const auto unshared = [](DType dtype, const AttentionOptions& options) {
    Forks f(dtype);
    const WorkPlan plan(f.args, options, 2);
    const Coverage c = CoverageOf(plan, f.args);
    for (int64_t keys : c.own) EXPECT_EQ(keys, 2100);
    return plan.groups().empty();
  };
  AttentionOptions never;
  never.min_shared_prefix_tokens = 0;
  EXPECT_TRUE(unshared(DType::kBF16, never));
  AttentionOptions window;
  window.sliding_window = 4096;
  EXPECT_TRUE(unshared(DType::kBF16, window));
  AttentionOptions longer;
  longer.min_shared_prefix_tokens = 2049;
  EXPECT_TRUE(unshared(DType::kBF16, longer));
  // kAutoSharedPrefix leaves f16 pages unshared; asked for, they share.
  EXPECT_TRUE(unshared(DType::kF16, AttentionOptions{}));
  Forks f16(DType::kF16);
  AttentionOptions asked;
  asked.min_shared_prefix_tokens = 1024;
  EXPECT_EQ(WorkPlan(f16.args, asked, 1).groups().size(), 1u);
}

// Partials of a call with nothing to combine: none allocated, nothing combined.
TEST(WorkPlanTest, OneThreadWithoutForksWritesNoPartials) {
  Forks f(DType::kBF16);
  AttentionOptions never;
  never.min_shared_prefix_tokens = 0;
  const WorkPlan plan(f.args, never, 1);
  EXPECT_EQ(f.args.partials, nullptr);
  for (size_t i = 0; i < plan.size(); ++i) EXPECT_EQ(plan.item(i).partial, -1);
}

}  // namespace
}  // namespace pagedkv::internal

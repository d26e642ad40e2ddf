// Attention kernels against the double-precision reference, for every compiled Highway target.
#include "pagedkv/attention.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "attention/kernel_args.h"
#include "attention/reference_attention.h"
#include "gtest/gtest.h"
#include "hwy/targets.h"
#include "test_targets.h"
#include "test_util.h"

namespace pagedkv {
namespace {

using internal::ContiguousKv;

// How RunCase multiplies bf16 pages (AttentionOptions::bf16_products).
Bf16Products bf16_products = Bf16Products::kDot;

// Runs the body once per Highway target this binary has and this CPU supports; where the CPU
// has vdpbf16ps, the AVX-512 targets run twice, with kDot and kWiden.
template <typename Fn>
void ForEachTarget(const Fn& fn) {
  for (int64_t target : test::TestTargets()) {
    const bool avx512 = target == HWY_AVX3 || target == HWY_AVX3_DL;
    for (bool products : {true, false}) {
      if (!products && !(internal::CpuHasBf16Dot() && avx512)) continue;
      hwy::SetSupportedTargetsForTest(target);
      bf16_products = products ? Bf16Products::kDot : Bf16Products::kWiden;
      SCOPED_TRACE(absl::StrCat(hwy::TargetName(target), products ? "" : " without bf16 products"));
      fn();
      if (::testing::Test::HasFatalFailure()) break;
    }
    if (::testing::Test::HasFatalFailure()) break;
  }
  hwy::SetSupportedTargetsForTest(0);
  bf16_products = Bf16Products::kDot;
}

struct Case {
  int32_t head_dim = 64;
  int32_t block_size = 16;
  int32_t group = 1;
  DType dtype = DType::kF32;
  int32_t num_kv_heads = 2;
  std::vector<int64_t> lengths;   // One sequence each.
  std::vector<int32_t> q_lens;    // Queries per sequence (1 = decode).
  std::vector<int> fork_of;       // -1, or the index of the sequence this one forks.
  AttentionOptions options;
  // Also run in place (out == q) and expect the same bits as with separate buffers.
  bool in_place = false;
  // Also run with the other PageFetch (kFar for kNear or kAuto, kNear for kFar) and expect the
  // same bits: fetching ahead must not change what is read.
  bool other_fetch = false;
};

// Builds the cache, runs ExtendAttention and the reference, and returns the max abs error
// relative to the largest output.
double RunCase(const Case& c, uint64_t seed) {
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  CacheConfig config;
  config.num_layers = 2;
  config.num_kv_heads = c.num_kv_heads;
  config.head_dim = c.head_dim;
  config.block_size = c.block_size;
  config.dtype = c.dtype;
  // Both page orders: with kHeadMajor, runs of consecutive block ids are read as one page.
  config.page_layout = seed % 2 == 0 ? PageLayout::kHeadMajor : PageLayout::kBlockMajor;
  int64_t tokens = 0;
  for (int64_t l : c.lengths) tokens += l + c.block_size;
  // Three times the blocks needed: a third, chosen at random, stay held, and the rest are freed
  // in a shuffled order, so block tables mix runs of consecutive ids (which the kernel reads as
  // one page) of random lengths with jumps.
  config.num_blocks = static_cast<int32_t>(3 * (tokens / c.block_size + 8));
  config.max_seq_len = 1 << 20;
  auto cache = test::MakeCache(config);
  std::vector<SeqId> loose;
  for (int32_t b = 0; b < config.num_blocks; ++b) {
    const SeqId id = cache->CreateSequence()->id;
    EXPECT_TRUE(cache->Reserve(id, 1).ok());
    if (rng() % 3 != 0) loose.push_back(id);
  }
  std::shuffle(loose.begin(), loose.end(), rng);
  for (SeqId id : loose) EXPECT_TRUE(cache->Free(id).ok());
  std::vector<SeqId> ids;
  const int32_t layer = 1;
  for (size_t s = 0; s < c.lengths.size(); ++s) {
    SeqId id;
    int64_t have = 0;
    if (!c.fork_of.empty() && c.fork_of[s] >= 0) {
      id = *cache->Fork(ids[static_cast<size_t>(c.fork_of[s])]);
      have = *cache->Length(id);
    } else {
      id = cache->CreateSequence()->id;
    }
    const int64_t n = c.lengths[s] - have;
    EXPECT_GE(n, 0);
    const int64_t start = *cache->Reserve(id, n);
    const size_t floats = static_cast<size_t>(n * c.num_kv_heads * c.head_dim);
    for (int32_t l = 0; l < config.num_layers; ++l) {
      std::vector<float> k(floats), v(floats);
      for (float& x : k) x = u(rng);
      for (float& x : v) x = u(rng);
      EXPECT_TRUE(cache->WriteKv(id, l, start, k, v).ok());
    }
    ids.push_back(id);
  }
  std::vector<ContiguousKv> contiguous;
  std::vector<int32_t> q_offsets = {0};
  for (size_t s = 0; s < ids.size(); ++s) {
    ContiguousKv kv;
    kv.length = c.lengths[s];
    kv.k = test::ReadAll(*cache, ids[s], layer, false);
    kv.v = test::ReadAll(*cache, ids[s], layer, true);
    contiguous.push_back(std::move(kv));
    q_offsets.push_back(q_offsets.back() + c.q_lens[s]);
  }
  const int32_t num_q_heads = c.num_kv_heads * c.group;
  std::vector<float> q(static_cast<size_t>(q_offsets.back()) * num_q_heads * c.head_dim);
  for (float& x : q) x = u(rng);
  PagedKvViewStorage storage;
  PagedKvView view = *cache->MakeView(ids, &storage);
  std::vector<float> out(q.size(), -7.0f);
  AttentionOptions options = c.options;
  options.bf16_products = bf16_products;
  const absl::Status status = ExtendAttention(view, layer, num_q_heads, q_offsets, q,
                                              absl::MakeSpan(out), options);
  EXPECT_TRUE(status.ok()) << status;
  if (c.in_place) {
    std::vector<float> q_and_out = q;
    EXPECT_TRUE(ExtendAttention(view, layer, num_q_heads, q_offsets, q_and_out,
                                absl::MakeSpan(q_and_out), options)
                    .ok());
    size_t differ = 0;
    for (size_t i = 0; i < out.size(); ++i) differ += q_and_out[i] != out[i];
    EXPECT_EQ(differ, 0u) << "of " << out.size() << " floats differ in place";
  }
  if (c.other_fetch) {
    AttentionOptions other = options;
    other.page_fetch = options.page_fetch == PageFetch::kFar ? PageFetch::kNear : PageFetch::kFar;
    std::vector<float> other_out(q.size(), -7.0f);
    EXPECT_TRUE(
        ExtendAttention(view, layer, num_q_heads, q_offsets, q, absl::MakeSpan(other_out), other)
            .ok());
    size_t differ = 0;
    for (size_t i = 0; i < out.size(); ++i) differ += other_out[i] != out[i];
    EXPECT_EQ(differ, 0u) << "of " << out.size() << " floats differ with page_fetch "
                          << static_cast<int>(other.page_fetch);
  }
  const std::vector<float> want = internal::ReferenceAttention(
      contiguous, c.num_kv_heads, c.head_dim, num_q_heads, q_offsets, q, c.options);
  double scale = 1e-30, err = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    scale = std::max(scale, std::fabs(double(want[i])));
    err = std::max(err, std::fabs(double(want[i]) - double(out[i])));
  }
  return err / scale;
}

double Tolerance(DType dtype) { return dtype == DType::kF32 ? 1e-5 : 2e-2; }

// The full sweep: head dims x block sizes x GQA ratios x dtypes, contexts that cross block
// boundaries (1, block_size - 1, block_size + 1, long), a ragged batch of decode and extend.
TEST(AttentionTest, MatchesReferenceEverywhere) {
  int64_t runs = 0;
  double worst[3] = {0, 0, 0};
  ForEachTarget([&] {
    for (int32_t head_dim : {64, 80, 96, 128, 256}) {
      for (int32_t block_size : {1, 8, 16, 32, 128}) {
        for (int32_t group : {1, 2, 4, 8}) {
          for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
            Case c;
            c.head_dim = head_dim;
            c.block_size = block_size;
            c.group = group;
            c.dtype = dtype;
            c.lengths = {1, std::max(1, block_size - 1), block_size + 1, 2 * block_size + 37};
            c.q_lens = {1, 1, std::min(3, block_size + 1), 9};
            const double err = RunCase(c, static_cast<uint64_t>(runs));
            worst[static_cast<int>(dtype)] = std::max(worst[static_cast<int>(dtype)], err);
            ASSERT_LE(err, Tolerance(dtype))
                << "head_dim " << head_dim << " block " << block_size << " group " << group
                << " " << DTypeName(dtype);
            ++runs;
          }
        }
      }
    }
  });
  std::string targets;
  for (int64_t t : test::TestTargets()) absl::StrAppend(&targets, " ", hwy::TargetName(t));
  std::printf("%lld runs over targets%s (vdpbf16ps %s); worst relative error f32 %.2e, "
              "bf16 %.2e, f16 %.2e\n",
              static_cast<long long>(runs), targets.c_str(),
              internal::CpuHasBf16Dot() ? "on and off" : "not on this CPU", worst[0], worst[1],
              worst[2]);
}

// The GQA ratios between the sweep's 1, 2, 4 and 8, each of which takes its own mix of query
// paths: 3 and 7 (padded to 4 and 8), 5 and 6 (a group of four and one or two after it, whose
// values are summed in one pass on AVX-512), decode and two query rows.
TEST(AttentionTest, OtherGqaRatiosMatchReference) {
  ForEachTarget([&] {
    for (int32_t group : {3, 5, 6, 7}) {
      for (int32_t head_dim : {64, 80, 128}) {
        for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
          Case c;
          c.head_dim = head_dim;
          c.block_size = 16;
          c.group = group;
          c.dtype = dtype;
          c.lengths = {1, 17, 100};
          c.q_lens = {1, 1, 2};
          ASSERT_LE(RunCase(c, static_cast<uint64_t>(group * 1000 + head_dim)), Tolerance(dtype))
              << "group " << group << " head_dim " << head_dim << " " << DTypeName(dtype);
        }
      }
    }
  });
}

// PageFetch::kFar on every path that fetches ahead: block sizes whose pages are split where the
// lead rows move on (32), shorter than the lead (1, 8) and longer than a step (512), GQA groups
// of the row and pair paths, decode and short extends, contexts with pages a step ahead, items
// of several KV heads (whose steps go head by head under kFar), partitioned or not. The results
// match the reference and, bit for bit, kNear's.
TEST(AttentionTest, FarPageFetchReadsTheSameValues) {
  int64_t runs = 0;
  ForEachTarget([&] {
    for (int32_t block_size : {1, 8, 16, 32, 512}) {
      for (int32_t group : {1, 2, 4, 5, 8}) {
        for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
          Case c;
          c.head_dim = 128;
          c.block_size = block_size;
          c.group = group;
          c.dtype = dtype;
          c.num_kv_heads = 2;
          c.lengths = {300, 700};
          c.q_lens = {1, 3};
          c.options.page_fetch = PageFetch::kFar;
          c.other_fetch = true;
          ASSERT_LE(RunCase(c, static_cast<uint64_t>(runs++)), Tolerance(dtype))
              << "block " << block_size << " group " << group << " " << DTypeName(dtype);
        }
      }
    }
    // Two threads: one sequence's four heads go two to an item, each item in two partitions.
    for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
      Case c;
      c.head_dim = 64;
      c.block_size = 16;
      c.group = 4;
      c.dtype = dtype;
      c.num_kv_heads = 4;
      c.lengths = {5000};
      c.q_lens = {1};
      c.options.num_threads = 2;
      c.options.page_fetch = PageFetch::kFar;
      c.other_fetch = true;
      ASSERT_LE(RunCase(c, static_cast<uint64_t>(runs++)), Tolerance(dtype)) << DTypeName(dtype);
    }
  });
  EXPECT_GT(runs, 0);
}

TEST(AttentionTest, SlidingWindowAndSoftCap) {
  ForEachTarget([&] {
    for (int32_t window : {1, 5, 40}) {
      for (float cap : {0.0f, 0.5f, 30.0f}) {
        for (DType dtype : {DType::kF32, DType::kBF16}) {
          Case c;
          c.head_dim = 64;
          c.block_size = 16;
          c.group = 4;
          c.dtype = dtype;
          c.lengths = {3, 50, 130};
          c.q_lens = {1, 20, 7};
          c.options.sliding_window = window;
          c.options.soft_cap = cap;
          c.options.scale = 0.3f;
          ASSERT_LE(RunCase(c, 11), Tolerance(dtype)) << "window " << window << " cap " << cap;
        }
      }
    }
  });
}

TEST(AttentionTest, ForkedSequencesShareBlocks) {
  ForEachTarget([&] {
    for (int32_t shared : {0, 16}) {
      Case c;
      c.head_dim = 128;
      c.block_size = 16;
      c.group = 2;
      c.dtype = DType::kBF16;
      c.lengths = {40, 45, 52, 40};
      c.fork_of = {-1, 0, 0, 0};
      c.q_lens = {1, 5, 12, 1};
      c.options.min_shared_prefix_tokens = shared;
      ASSERT_LE(RunCase(c, 3), Tolerance(c.dtype)) << "min_shared_prefix_tokens " << shared;
    }
  });
}

// f16 pages at GQA 7 and 8 are scored eight queries at a time (Scores8) on AVX-512 on some CPUs
// and in two groups of four on others (KernelArgs::scores8): both, on every target.
TEST(AttentionTest, EightQueryScoresMatchReference) {
  for (int scores8 : {0, 1}) {
    internal::SetScores8ForTest(scores8);
    ForEachTarget([&] {
      for (int32_t group : {7, 8}) {
        Case c;
        c.head_dim = 128;
        c.group = group;
        c.dtype = DType::kF16;
        c.lengths = {300, 41, 17};
        c.q_lens = {1, 2, 1};
        ASSERT_LE(RunCase(c, 23), Tolerance(c.dtype))
            << "group " << group << " scores8 " << scores8;
      }
    });
  }
  internal::SetScores8ForTest(-1);
}

// Beam search and parallel sampling: two families of forks (and forks of forks) of different
// prompts in one batch, read with their shared prefixes once for all (min_shared_prefix_tokens),
// with queries of one and several tokens, in groups cut short by the 64 query vectors a KV head
// takes (GQA 8: 8 rows), and with their keys partitioned over threads too.
TEST(AttentionTest, SharedPrefixesMatchReference) {
  ForEachTarget([&] {
    for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
      for (int32_t threads : {1, 3}) {
        for (int32_t block_size : {16, 5}) {
          Case c;
          c.head_dim = 64;
          c.block_size = block_size;
          c.group = dtype == DType::kF16 ? 8 : 4;
          c.dtype = dtype;
          c.lengths = {300, 301, 310, 350, 302, 200, 305, 230, 360, 205, 309};
          c.fork_of = {-1, 0, 0, 0, 0, -1, 1, 5, 3, 5, 0};
          c.q_lens = {1, 1, 3, 1, 2, 1, 1, 4, 1, 1, 1};
          c.options.num_threads = threads;
          c.options.min_partition_tokens = 64;
          c.options.min_shared_prefix_tokens = 32;
          c.in_place = threads == 3;
          ASSERT_LE(RunCase(c, 17), Tolerance(dtype))
              << DTypeName(dtype) << " threads " << threads << " block " << block_size;
        }
      }
    }
  });
}

// bf16_products picks the path for bf16 pages: with kWiden only f32 arithmetic separates the
// kernel from the reference (K/V are read back exactly), so it meets the f32 tolerance; with
// kDot, on a CPU that has vdpbf16ps, the bf16 rounding of queries and probabilities shows; kAuto
// shows it only where CpuPrefersBf16Dot (an AMD CPU with the instruction).
// GQA 2 (and 1 with q_len 9) takes the vdpbf16ps path with groups padded to four queries.
TEST(AttentionTest, Bf16ProductsOptionChoosesThePath) {
  for (int32_t group : {1, 2, 4}) {
    SCOPED_TRACE(absl::StrCat("group ", group));
    Case c;
    c.head_dim = 128;
    c.group = group;
    c.dtype = DType::kBF16;
    c.lengths = {300, 77};
    c.q_lens = {1, 9};
    bf16_products = Bf16Products::kWiden;
    EXPECT_LE(RunCase(c, 21), Tolerance(DType::kF32));
    bf16_products = Bf16Products::kDot;
    const double err = RunCase(c, 21);
    EXPECT_LE(err, Tolerance(DType::kBF16));
    if (internal::CpuHasBf16Dot()) {
      EXPECT_GT(err, Tolerance(DType::kF32)) << "the vdpbf16ps path did not run";
    }
    bf16_products = Bf16Products::kAuto;
    const double auto_err = RunCase(c, 21);
    if (internal::CpuPrefersBf16Dot()) {
      EXPECT_GT(auto_err, Tolerance(DType::kF32)) << "kAuto did not take the vdpbf16ps path";
      EXPECT_LE(auto_err, Tolerance(DType::kBF16));
    } else {
      EXPECT_LE(auto_err, Tolerance(DType::kF32)) << "kAuto took the vdpbf16ps path";
    }
  }
  bf16_products = Bf16Products::kDot;
}

// Long contexts with more threads than work: flash-decoding partitions and their reduction.
// bf16 runs at GQA 2, so the vdpbf16ps path's two-query groups meet the partitions too.
// 512-token pages are split every 64 keys, inside the pages.
TEST(AttentionTest, PartitionedLongContextsMatch) {
  for (int32_t threads : {1, 2, 3, 8}) {
    for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
      Case c;
      c.head_dim = 128;
      c.block_size = threads == 8 ? 512 : 16;
      c.group = dtype == DType::kBF16 ? 2 : 4;
      c.num_kv_heads = 1;
      c.dtype = dtype;
      c.lengths = {3000, 777};
      c.q_lens = {1, 2};
      c.options.num_threads = threads;
      c.options.min_partition_tokens = 100;
      c.options.sliding_window = threads == 3 ? 1000 : 0;
      c.in_place = true;  // Partitions read the same queries, and their reduction writes out.
      ASSERT_LE(RunCase(c, 5), Tolerance(dtype)) << threads << " threads";
    }
  }
}

// More threads than work, and far more than kMaxThreads (libgomp used to start every one asked
// for, and crashed at 100,000): capped, with the same results.
TEST(AttentionTest, HugeThreadCountsAreCapped) {
  for (int32_t threads : {64, 100000}) {
    Case c;
    c.head_dim = 64;
    c.group = 2;
    c.dtype = DType::kBF16;
    c.lengths = {3000, 50};
    c.q_lens = {1, 3};
    c.options.num_threads = threads;
    c.options.min_partition_tokens = 100;
    ASSERT_LE(RunCase(c, 8), Tolerance(c.dtype)) << threads << " threads";
  }
}

// Head dims past the sweep's 256: 512 and 576 (the latent-attention decode of DeepSeek-style
// models), and 1000, which the vdpbf16ps path cannot take (not a multiple of 8), on every target.
TEST(AttentionTest, LargeHeadDimsMatchReference) {
  ForEachTarget([&] {
    for (int32_t head_dim : {512, 576, 1000}) {
      for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
        Case c;
        c.head_dim = head_dim;
        c.group = 4;
        c.num_kv_heads = 1;
        c.dtype = dtype;
        c.lengths = {70, 300};
        c.q_lens = {1, 5};
        c.options.num_threads = 2;
        c.options.min_partition_tokens = 64;
        ASSERT_LE(RunCase(c, static_cast<uint64_t>(head_dim)), Tolerance(dtype))
            << "head_dim " << head_dim << " " << DTypeName(dtype);
      }
    }
  });
}

// Shapes and options the sweeps above do not name, drawn at random: head dims that are not
// multiples of 8 or 16 (the scalar tails, and the widening path where vdpbf16ps needs whole
// 8-dim blocks), odd block sizes, GQA ratios up to 6, forks, windows, soft-caps, scales, and
// 1-4 threads with small partitions. A failure prints the case's seed.
// PAGEDKV_ATTENTION_CASES sets the cases per target (default 100).
TEST(AttentionTest, RandomShapesAndOptionsMatchReference) {
  const int64_t cases_per_target = test::EnvOr("PAGEDKV_ATTENTION_CASES", 100);
  int64_t runs = 0;
  ForEachTarget([&] {
    for (int64_t i = 0; i < cases_per_target; ++i) {
      const uint64_t seed = 1000 + static_cast<uint64_t>(runs++);
      std::mt19937 rng(static_cast<uint32_t>(seed));
      const auto pick = [&rng](int lo, int hi) {
        return std::uniform_int_distribution<int>(lo, hi)(rng);
      };
      const int32_t dims[] = {1, 3, 8, 12, 24, 40, 56, 72, 100, 136, 200};
      Case c;
      c.head_dim = dims[pick(0, 10)];
      c.block_size = pick(1, 40);
      c.num_kv_heads = pick(1, 3);
      c.group = pick(1, 6);
      c.dtype = static_cast<DType>(pick(0, 2));
      const int seqs = pick(1, 4);
      for (int s = 0; s < seqs; ++s) {
        // Some sequences fork an earlier one and grow past it.
        const int parent = s > 0 && pick(0, 3) == 0 ? pick(0, s - 1) : -1;
        const int64_t floor = parent >= 0 ? c.lengths[static_cast<size_t>(parent)] : 1;
        c.fork_of.push_back(parent);
        c.lengths.push_back(floor + pick(0, 300));
        c.q_lens.push_back(static_cast<int32_t>(
            std::min<int64_t>(c.lengths.back(), pick(0, 2) == 0 ? pick(2, 12) : 1)));
      }
      c.options.scale = pick(0, 1) == 0 ? 0.0f : 0.05f * static_cast<float>(pick(1, 20));
      c.options.sliding_window = pick(0, 2) == 0 ? pick(1, 100) : 0;
      c.options.soft_cap = pick(0, 2) == 0 ? 0.5f * static_cast<float>(pick(1, 60)) : 0.0f;
      c.options.num_threads = pick(1, 4);
      c.options.min_partition_tokens = pick(16, 200);
      c.in_place = pick(0, 3) == 0;
      c.options.page_fetch = static_cast<PageFetch>(pick(0, 2));
      c.other_fetch = pick(0, 3) == 0;
      c.options.min_shared_prefix_tokens = pick(0, 2) == 0 ? pick(-1, 0) : pick(1, 64);
      const double err = RunCase(c, seed);
      ASSERT_LE(err, Tolerance(c.dtype))
          << "seed " << seed << ": head_dim " << c.head_dim << " block " << c.block_size
          << " kv heads " << c.num_kv_heads << " group " << c.group << " " << DTypeName(c.dtype)
          << " seqs " << seqs << " window " << c.options.sliding_window << " cap "
          << c.options.soft_cap << " threads " << c.options.num_threads << " page_fetch "
          << static_cast<int>(c.options.page_fetch) << " min_shared_prefix_tokens "
          << c.options.min_shared_prefix_tokens;
    }
  });
  EXPECT_GT(runs, 0);
}

TEST(AttentionTest, PrefillOfAWholePromptIsCausal) {
  Case c;
  c.head_dim = 64;
  c.block_size = 8;
  c.group = 2;
  c.lengths = {100, 33};
  c.q_lens = {100, 33};
  c.options.num_threads = 2;
  c.in_place = true;  // Tiles of query rows, each read before it is written.
  ASSERT_LE(RunCase(c, 9), Tolerance(c.dtype));
}

TEST(AttentionTest, BadInputIsRejectedAndNothingIsWritten) {
  CacheConfig config = test::SmallConfig(4, 16);
  auto cache = test::MakeCache(config);
  const SeqId seq = cache->CreateSequence()->id;
  ASSERT_TRUE(test::ReserveAndWrite(*cache, seq, 5).ok());
  PagedKvViewStorage storage;
  const PagedKvView view = *cache->MakeView({seq}, &storage);
  const int32_t hq = 4;
  std::vector<float> q(static_cast<size_t>(hq * config.head_dim), 0.5f);
  std::vector<float> out(q.size(), -3.0f);
  auto expect_invalid = [&](absl::Status s, absl::string_view needle) {
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(s.message().find(needle), absl::string_view::npos) << s;
    EXPECT_TRUE(std::all_of(out.begin(), out.end(), [](float x) { return x == -3.0f; }));
  };
  expect_invalid(DecodeAttention(view, 2, hq, q, absl::MakeSpan(out)), "layer 2 out of range");
  expect_invalid(DecodeAttention(view, 0, 3, q, absl::MakeSpan(out)), "num_q_heads 3");
  std::vector<float> short_q(q.begin(), q.end() - 1);
  expect_invalid(DecodeAttention(view, 0, hq, short_q, absl::MakeSpan(out)), "q has");
  expect_invalid(ExtendAttention(view, 0, hq, std::vector<int32_t>{0, 6}, q, absl::MakeSpan(out)),
                 "6 queries but 5 cached positions");
  expect_invalid(ExtendAttention(view, 0, hq, std::vector<int32_t>{0}, q, absl::MakeSpan(out)),
                 "q_offsets has 1 entries");
  AttentionOptions bad;
  bad.sliding_window = -1;
  expect_invalid(DecodeAttention(view, 0, hq, q, absl::MakeSpan(out), bad), "bad options");
  AttentionOptions negative_shared;
  negative_shared.min_shared_prefix_tokens = -2;
  expect_invalid(DecodeAttention(view, 0, hq, q, absl::MakeSpan(out), negative_shared),
                 "min_shared_prefix_tokens -2");
  AttentionOptions infinite_cap;
  infinite_cap.soft_cap = std::numeric_limits<float>::infinity();
  expect_invalid(DecodeAttention(view, 0, hq, q, absl::MakeSpan(out), infinite_cap),
                 "soft_cap inf");
  AttentionOptions unknown_products;
  unknown_products.bf16_products = static_cast<Bf16Products>(7);
  expect_invalid(DecodeAttention(view, 0, hq, q, absl::MakeSpan(out), unknown_products),
                 "bf16_products 7");
  AttentionOptions unknown_fetch;
  unknown_fetch.page_fetch = static_cast<PageFetch>(9);
  expect_invalid(DecodeAttention(view, 0, hq, q, absl::MakeSpan(out), unknown_fetch),
                 "page_fetch 9");
  // out one float on from q in the same buffer: rows would be overwritten before they are read.
  std::vector<float> shared(q.size() + 1, 0.5f);
  const std::vector<float> before = shared;
  const absl::Status overlap =
      DecodeAttention(view, 0, hq, absl::MakeConstSpan(shared.data(), q.size()),
                      absl::MakeSpan(shared.data() + 1, q.size()));
  EXPECT_EQ(overlap.code(), absl::StatusCode::kInvalidArgument) << overlap;
  EXPECT_NE(overlap.message().find("out overlaps q 4 bytes away"), absl::string_view::npos)
      << overlap;
  EXPECT_EQ(shared, before);
  EXPECT_TRUE(DecodeAttention(view, 0, hq, q, absl::MakeSpan(out)).ok());
}

// A view is a plain struct that a caller may fill in by hand (over memory of its own): each
// field that would send the kernels out of bounds, or divide by zero, is refused by name.
TEST(AttentionTest, BrokenViewsAreRejectedAndNothingIsWritten) {
  CacheConfig config = test::SmallConfig(4, 16, DType::kBF16);
  auto cache = test::MakeCache(config);
  std::vector<SeqId> seqs;
  for (int64_t length : {7, 9}) {
    seqs.push_back(cache->CreateSequence()->id);
    ASSERT_TRUE(test::ReserveAndWrite(*cache, seqs.back(), length).ok());
  }
  PagedKvViewStorage storage;
  const PagedKvView good = *cache->MakeView(seqs, &storage);
  ASSERT_TRUE(CheckView(good).ok()) << CheckView(good);
  EXPECT_EQ(good.num_blocks, config.num_blocks);
  EXPECT_EQ(good.arena_bytes, config.num_blocks * config.BlockBytes());
  const int32_t hq = 4;
  std::vector<float> q(static_cast<size_t>(2 * hq * config.head_dim), 0.5f);
  std::vector<float> out(q.size(), -3.0f);
  // Applies `edit` to a copy of the good view (and of its tables) and expects the call refused.
  const auto expect_refused = [&](absl::string_view needle, const auto& edit) {
    PagedKvView view = good;
    std::vector<int32_t> offsets = storage.block_offsets;
    std::vector<BlockId> ids = storage.block_ids;
    std::vector<int64_t> lens = storage.seq_lens;
    view.block_offsets = offsets.data();
    view.block_ids = ids.data();
    view.seq_lens = lens.data();
    edit(view, offsets, ids, lens);
    SCOPED_TRACE(needle);
    const absl::Status check = CheckView(view);
    EXPECT_EQ(check.code(), absl::StatusCode::kInvalidArgument) << check;
    EXPECT_NE(check.message().find(needle), absl::string_view::npos) << check;
    const absl::Status s = DecodeAttention(view, 0, hq, q, absl::MakeSpan(out));
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(s.message().find(needle), absl::string_view::npos) << s;
    EXPECT_TRUE(std::all_of(out.begin(), out.end(), [](float x) { return x == -3.0f; }));
  };
  using Offsets = std::vector<int32_t>;
  using Ids = std::vector<BlockId>;
  using Lens = std::vector<int64_t>;
  expect_refused("arena is null", [](PagedKvView& v, Offsets&, Ids&, Lens&) { v.arena = nullptr; });
  expect_refused("num_kv_heads 0",
                 [](PagedKvView& v, Offsets&, Ids&, Lens&) { v.num_kv_heads = 0; });
  expect_refused("block_size 0", [](PagedKvView& v, Offsets&, Ids&, Lens&) { v.block_size = 0; });
  expect_refused("head_dim -8", [](PagedKvView& v, Offsets&, Ids&, Lens&) { v.head_dim = -8; });
  expect_refused("unknown dtype 9",
                 [](PagedKvView& v, Offsets&, Ids&, Lens&) { v.dtype = static_cast<DType>(9); });
  expect_refused("row_stride_bytes 18 is not head_dim 8 * 2",
                 [](PagedKvView& v, Offsets&, Ids&, Lens&) { v.row_stride_bytes += 2; });
  expect_refused("strides (pool", [](PagedKvView& v, Offsets&, Ids&, Lens&) {
    v.block_stride_bytes = -v.block_stride_bytes;
  });
  expect_refused("strides (pool", [](PagedKvView& v, Offsets&, Ids&, Lens&) { v.arena += 1; });
  expect_refused("into an arena of arena_bytes",
                 [](PagedKvView& v, Offsets&, Ids&, Lens&) { v.arena_bytes -= 1; });
  expect_refused("into an arena of arena_bytes",
                 [](PagedKvView& v, Offsets&, Ids&, Lens&) { v.num_blocks += 1; });
  expect_refused("more than 2^63", [](PagedKvView& v, Offsets&, Ids&, Lens&) {
    v.head_stride_bytes = std::numeric_limits<int64_t>::max() / 2 * 2;
  });
  expect_refused("names block 16 at table entry 1",
                 [](PagedKvView&, Offsets&, Ids& ids, Lens&) { ids[1] = 16; });
  expect_refused("sequence 1 names block -1", [](PagedKvView&, Offsets& o, Ids& ids, Lens&) {
    ids[static_cast<size_t>(o[1])] = -1;
  });
  // Sequence 1's 9 positions need 3 pages of 4; a length of 13 needs a 4th its table lacks.
  expect_refused("sequence 1 has length 13",
                 [](PagedKvView&, Offsets&, Ids&, Lens& lens) { lens[1] = 13; });
  expect_refused("sequence 0 has length -1",
                 [](PagedKvView&, Offsets&, Ids&, Lens& lens) { lens[0] = -1; });
  expect_refused("block_offsets or seq_lens is null",
                 [](PagedKvView& v, Offsets&, Ids&, Lens&) { v.block_offsets = nullptr; });
  expect_refused("block_ids is null",
                 [](PagedKvView& v, Offsets&, Ids&, Lens&) { v.block_ids = nullptr; });
  // The tables may name more pages than the lengths cover (reserved ahead); those are not read.
  PagedKvView reserved = good;
  std::vector<BlockId> ids = storage.block_ids;
  std::vector<int64_t> lens = {4, 9};  // Sequence 0's second page is no longer read.
  ids[1] = std::numeric_limits<BlockId>::max();
  reserved.block_ids = ids.data();
  reserved.seq_lens = lens.data();
  EXPECT_TRUE(CheckView(reserved).ok()) << CheckView(reserved);
  EXPECT_TRUE(DecodeAttention(reserved, 0, hq, q, absl::MakeSpan(out)).ok());
}

}  // namespace
}  // namespace pagedkv

// Attention kernels, compared in the same run with the machine's limits
// (machine_limits_bench.cc):
//   bytes/s of decode vs BM_StreamRead at the same working-set size and thread count;
//   paged vs contiguous (the same kernel over one page per sequence: a contiguous array);
//   FLOP/s of extend vs BM_FmaPeak.
// Shape: Llama-3-8B attention, 32 query heads, 8 KV heads, head dim 128, 16-token pages.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <vector>

#include "bench/machine_limits.h"
#include "bench_util.h"
#include "benchmark/benchmark.h"
#include "pagedkv/attention.h"

namespace pagedkv::bench {
namespace {

constexpr int32_t kQHeads = 32;
constexpr int32_t kKvHeads = 8;
constexpr int32_t kHeadDim = 128;

DType DTypeArg(int64_t code) { return static_cast<DType>(code); }

// Block-table entries of the viewed sequences per run of consecutive block ids.
double PagesPerRun(const PagedKvView& view) {
  int64_t runs = 0;
  const int32_t entries = view.block_offsets[view.num_seqs];
  for (int32_t s = 0; s < view.num_seqs; ++s) {
    const BlockId* table = view.BlockTable(s);
    for (int32_t i = 0; i < view.block_offsets[s + 1] - view.block_offsets[s]; ++i) {
      if (i == 0 || table[i] != table[i - 1] + 1) ++runs;
    }
  }
  return static_cast<double>(entries) / static_cast<double>(std::max<int64_t>(runs, 1));
}

// K/V bytes of one layer of the viewed sequences.
int64_t ViewKvBytes(const PagedKvView& view) {
  int64_t tokens = 0;
  for (int32_t s = 0; s < view.num_seqs; ++s) tokens += view.seq_lens[s];
  return tokens * view.num_kv_heads * view.head_dim * DTypeSize(view.dtype) * 2;
}

// A cache of `layers` layers (one unless asked) holding `batch` sequences of `context` tokens with
// random K/V. Paged: pages of `page_tokens` (16 unless asked) handed out in random order, as a
// long-running server's pool would, in runs of `run` consecutive block ids (1 unless asked: every
// page on its own) in block-major pools unless asked: the page order PageLayout::kAuto picks
// where pages stay scattered (with prefix caching). Contiguous: one page per sequence, so each
// (sequence, head) is one contiguous array. Heads of kHeadDim dims unless asked.
struct Fixture {
  int32_t kv_heads;
  std::unique_ptr<PagedKvCache> cache;
  std::vector<SeqId> seqs;
  PagedKvViewStorage storage;
  PagedKvView view;

  Fixture(int64_t batch, int64_t context, DType dtype, bool paged, int32_t heads = kKvHeads,
          int32_t layers = 1, int32_t page_tokens = 16, int32_t run = 1,
          PageLayout layout = PageLayout::kBlockMajor, int32_t head_dim = kHeadDim)
      : kv_heads(heads) {
    CacheConfig config;
    config.page_layout = layout;
    config.num_layers = layers;
    config.num_kv_heads = heads;
    config.head_dim = head_dim;
    config.dtype = dtype;
    config.block_size = paged ? page_tokens : static_cast<int32_t>(context);
    const auto blocks = static_cast<int32_t>(batch * ((context + config.block_size - 1) /
                                                      config.block_size));
    config.num_blocks = paged ? blocks + (blocks + run - 1) / run : blocks;  // Spacers.
    config.max_seq_len = context;
    cache = OrDie(PagedKvCache::Create(config), "cache");
    if (paged) Scatter(*cache, blocks, run);
    for (int64_t s = 0; s < batch; ++s) {
      const SeqId id = OrDie(cache->CreateSequence(), "create").id;
      Append(*cache, id, context);
      seqs.push_back(id);
    }
    view = OrDie(cache->MakeView(seqs, &storage), "view");
  }

  // Leaves `blocks` free blocks in random order, in runs of `run` consecutive ids, each run
  // followed by a spacer block that stays held: sequences of `run` blocks and of one (a fresh
  // pool hands out ids in order) are created in turn and the former freed in a shuffled order.
  // Without the spacers the pool would grow each sequence into the next free block
  // (BlockPool::AllocateRun) and hand out the whole free pool as one run.
  static void Scatter(PagedKvCache& cache, int32_t blocks, int32_t run) {
    const int64_t bs = cache.config().block_size;
    std::vector<SeqId> runs;
    for (int32_t b = 0; b < blocks; b += run) {
      const SeqId id = OrDie(cache.CreateSequence(), "create").id;
      OrDie(cache.Reserve(id, std::min<int64_t>(run, blocks - b) * bs), "reserve");
      runs.push_back(id);
      OrDie(cache.Reserve(OrDie(cache.CreateSequence(), "create").id, 1), "spacer");
    }
    std::shuffle(runs.begin(), runs.end(), std::mt19937(7));
    for (SeqId id : runs) OrDie(cache.Free(id), "free");
  }

  // Appends `tokens` positions of random K/V to sequence `id`, in every layer.
  static void Append(PagedKvCache& cache, SeqId id, int64_t tokens) {
    const CacheConfig& config = cache.config();
    std::mt19937 rng(42);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    const int64_t chunk = 256;
    std::vector<float> k(static_cast<size_t>(chunk * config.num_kv_heads * config.head_dim));
    std::vector<float> v(k.size());
    for (float& x : k) x = u(rng);
    for (float& x : v) x = u(rng);
    const int64_t start = OrDie(cache.Reserve(id, tokens), "reserve");
    for (int32_t layer = 0; layer < config.num_layers; ++layer) {
      for (int64_t p = 0; p < tokens; p += chunk) {
        const size_t n = static_cast<size_t>(std::min(chunk, tokens - p) * config.num_kv_heads *
                                             config.head_dim);
        OrDie(cache.WriteKv(id, layer, start + p, absl::MakeConstSpan(k).first(n),
                            absl::MakeConstSpan(v).first(n)),
              "write");
      }
    }
  }

  int64_t KvBytes() const { return ViewKvBytes(view); }
};

// Times DecodeAttention of one token per viewed sequence with `q_heads` query heads; bytes/s
// counts the K/V bytes.
void RunDecode(benchmark::State& state, const PagedKvView& view, int32_t q_heads,
               const AttentionOptions& options) {
  std::vector<float> q(static_cast<size_t>(int64_t{view.num_seqs} * q_heads * view.head_dim),
                       0.01f);
  std::vector<float> out(q.size());
  for (auto _ : state) {
    OrDie(DecodeAttention(view, 0, q_heads, q, absl::MakeSpan(out), options), "decode");
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(state.iterations() * ViewKvBytes(view));
  state.counters["pages_per_run"] = PagesPerRun(view);
}

void Decode(benchmark::State& state, bool paged) {
  Fixture f(state.range(0), state.range(1), DTypeArg(state.range(2)), paged);
  AttentionOptions options;
  options.num_threads = static_cast<int32_t>(state.range(3));
  RunDecode(state, f.view, kQHeads, options);
  state.counters["kv_bytes"] = static_cast<double>(f.KvBytes());
}

void BM_DecodePaged(benchmark::State& state) { Decode(state, true); }
void BM_DecodeContiguous(benchmark::State& state) { Decode(state, false); }

// {batch, context, dtype (0 f32, 1 bf16, 2 f16), threads}: in L3, then from DRAM.
void DecodeShapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"batch", "context", "dtype", "threads"});
  for (int64_t threads : ThreadCounts()) {
    for (int64_t dtype : {1, 0, 2}) b->Args({1, 2048, dtype, threads});
    b->Args({32, 2048, 1, threads});
    b->Args({1, 32768, 1, threads});
  }
}
void DecodeArgs(benchmark::internal::Benchmark* b) {
  DecodeShapes(b);
  b->UseRealTime();
}
BENCHMARK(BM_DecodePaged)->Apply(DecodeArgs);
BENCHMARK(BM_DecodeContiguous)->Apply(DecodeArgs);

// Decode of short contexts (8 sequences of 16, 64 and 256 tokens, paged), where what a work item
// costs whatever its keys (its queries packed, its rows written, q read and out written) is a
// large part of the call: at 16 tokens the 256 KiB of q and out are half as many bytes as bf16
// K/V.
void BM_DecodeShortContext(benchmark::State& state) { Decode(state, true); }
BENCHMARK(BM_DecodeShortContext)
    ->ArgNames({"batch", "context", "dtype", "threads"})
    ->ArgsProduct({{8}, {16, 64, 256}, {1, 0, 2}, ThreadCounts()})
    ->UseRealTime();

// Runs calls[0], calls[1], ... in turn, once each per iteration, each iteration starting one call
// later than the one before, and returns each call's median time in seconds. Alternating call by
// call takes the machine's drift (a shared host's neighbours, its clock) out of the ratio of two
// medians, which two separate benchmarks, minutes apart, carry in full. The iteration time is
// the sum of the calls'.
std::vector<double> MedianSecondsOfAlternatedCalls(
    benchmark::State& state, const std::vector<std::function<void()>>& calls) {
  const size_t n = calls.size();
  std::vector<std::vector<double>> seconds(n);
  using Clock = std::chrono::steady_clock;
  size_t first = 0;  // Which call this iteration makes first.
  for (auto _ : state) {
    double total = 0;
    for (size_t i = 0; i < n; ++i) {
      const size_t which = (first + i) % n;
      const auto start = Clock::now();
      calls[which]();
      const double s = std::chrono::duration<double>(Clock::now() - start).count();
      seconds[which].push_back(s);
      total += s;
    }
    state.SetIterationTime(total);
    first = (first + 1) % n;
  }
  std::vector<double> medians;
  for (std::vector<double>& v : seconds) {
    std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2), v.end());
    medians.push_back(v.empty() ? 0.0 : v[v.size() / 2]);
  }
  return medians;
}

// One decode call of a view (all its sequences), as the decode rows time it.
std::function<void()> DecodeCall(const PagedKvView& view, const AttentionOptions& options,
                                 std::vector<float>& q, std::vector<float>& out) {
  return [&view, options, &q, &out] {
    OrDie(DecodeAttention(view, 0, kQHeads, q, absl::MakeSpan(out), options), "decode");
    benchmark::DoNotOptimize(out.data());
  };
}

// Paged against contiguous in one benchmark, for the ratio the issue sets a goal for (paged at
// most 1.03x the contiguous time), over BM_DecodePaged's rows: each iteration decodes {batch,
// context, dtype} once from 16-token shuffled pages and once from one contiguous page per
// sequence, in alternating order, and paged_over_contiguous is the ratio of the two calls' median
// times. Time and bytes/s count both calls.
void BM_DecodePagedOverContiguous(benchmark::State& state) {
  const DType dtype = DTypeArg(state.range(2));
  const Fixture paged(state.range(0), state.range(1), dtype, true);
  const Fixture contiguous(state.range(0), state.range(1), dtype, false);
  AttentionOptions options;
  options.num_threads = static_cast<int32_t>(state.range(3));
  std::vector<float> q(static_cast<size_t>(state.range(0) * kQHeads * kHeadDim), 0.01f);
  std::vector<float> out(q.size());
  const std::vector<double> median = MedianSecondsOfAlternatedCalls(
      state,
      {DecodeCall(paged.view, options, q, out), DecodeCall(contiguous.view, options, q, out)});
  state.counters["paged_over_contiguous"] = median[0] / median[1];
  state.SetBytesProcessed(state.iterations() * (paged.KvBytes() + contiguous.KvBytes()));
}
BENCHMARK(BM_DecodePagedOverContiguous)->Apply(DecodeShapes)->UseManualTime();

// The decode goal (K/V bytes/s at least 0.9 of the stream) measured with calls alternated, as
// BM_DecodePagedOverContiguous measures the paged goal, for BM_DecodePaged's rows: each iteration
// decodes {batch, context, dtype} from 16-token shuffled pages and streams a buffer of the same
// bytes with the same threads, in alternating order; paged_over_stream is the stream's median time
// over the decode's, that is the decode's bytes/s over the stream's. The separate BM_DecodePaged
// and BM_StreamRead rows have given one row 0.53 in one run and 0.92 in another on a shared VM.
void BM_DecodePagedOverStream(benchmark::State& state) {
  const Fixture paged(state.range(0), state.range(1), DTypeArg(state.range(2)), true);
  const int threads = static_cast<int>(state.range(3));
  AttentionOptions options;
  options.num_threads = threads;
  std::vector<float> q(static_cast<size_t>(state.range(0) * kQHeads * kHeadDim), 0.01f);
  std::vector<float> out(q.size());
  const ArenaArray<float> stream(static_cast<size_t>(paged.KvBytes()) / sizeof(float), 1.0f);
  const std::vector<double> median = MedianSecondsOfAlternatedCalls(
      state, {DecodeCall(paged.view, options, q, out),
              [&] { benchmark::DoNotOptimize(StreamOnce(stream.span(), threads)); }});
  state.counters["paged_over_stream"] = median[1] / median[0];
  state.counters["kv_bytes"] = static_cast<double>(paged.KvBytes());
  state.SetBytesProcessed(state.iterations() * 2 * paged.KvBytes());
}
BENCHMARK(BM_DecodePagedOverStream)->Apply(DecodeShapes)->UseManualTime();

// Beam search and parallel sampling: `families` prompts of `prompt` tokens, each forked into
// `beams` sequences that have gone on for `own` tokens each (16-token pages in random order, a
// family's sequences next to each other in the batch), decoded with the shared prompts' pages read
// once for each family (AttentionOptions::min_shared_prefix_tokens 1, whatever the dtype) and with
// every sequence reading all of its pages (0), calls alternated: shared_over_unshared is the ratio
// of their median times. bytes/s counts the K/V bytes the sequences attend to (what the unshared
// calls read) for both calls.
void BM_DecodeForked(benchmark::State& state) {
  const int64_t families = state.range(0), beams = state.range(1);
  const int64_t prompt = state.range(2), own = state.range(3);
  CacheConfig config;
  config.num_layers = 1;
  config.num_kv_heads = kKvHeads;
  config.head_dim = kHeadDim;
  config.dtype = DTypeArg(state.range(4));
  config.block_size = 16;
  const auto blocks =
      static_cast<int32_t>(families * ((prompt + 15) / 16 + beams * ((own + 15) / 16 + 1)));
  config.num_blocks = 2 * blocks;  // With Scatter's spacers.
  config.max_seq_len = prompt + own;
  const auto cache = OrDie(PagedKvCache::Create(config), "cache");
  Fixture::Scatter(*cache, blocks, 1);
  std::vector<SeqId> seqs;
  for (int64_t f = 0; f < families; ++f) {
    const SeqId parent = OrDie(cache->CreateSequence(), "create").id;
    Fixture::Append(*cache, parent, prompt);
    seqs.push_back(parent);
    for (int64_t b = 1; b < beams; ++b) seqs.push_back(OrDie(cache->Fork(parent), "fork"));
    for (auto it = seqs.end() - beams; it != seqs.end(); ++it) Fixture::Append(*cache, *it, own);
  }
  PagedKvViewStorage storage;
  const PagedKvView view = OrDie(cache->MakeView(seqs, &storage), "view");
  AttentionOptions shared;
  shared.num_threads = static_cast<int32_t>(state.range(5));
  AttentionOptions unshared = shared;
  shared.min_shared_prefix_tokens = 1;
  unshared.min_shared_prefix_tokens = 0;
  std::vector<float> q(seqs.size() * kQHeads * kHeadDim, 0.01f);
  std::vector<float> out(q.size());
  const std::vector<double> median = MedianSecondsOfAlternatedCalls(
      state, {DecodeCall(view, shared, q, out), DecodeCall(view, unshared, q, out)});
  state.counters["shared_over_unshared"] = median[0] / median[1];
  state.SetBytesProcessed(state.iterations() * 2 * ViewKvBytes(view));
}
BENCHMARK(BM_DecodeForked)
    ->ArgNames({"families", "beams", "prompt", "own", "dtype", "threads"})
    ->ArgsProduct({{1}, {2, 4, 16}, {2048}, {64}, {1, 0, 2}, ThreadCounts()})
    ->ArgsProduct({{8}, {4}, {2048}, {64}, {1, 0, 2}, ThreadCounts()})
    ->ArgsProduct({{8}, {4}, {256, 1024}, {16}, {1}, ThreadCounts()})
    ->UseManualTime();

// Times ExtendAttention of `fresh` new tokens of the fixture's one sequence (its last `fresh`).
void RunExtend(benchmark::State& state, const Fixture& f, int64_t fresh,
               const AttentionOptions& options) {
  const std::vector<int32_t> offsets = {0, static_cast<int32_t>(fresh)};
  std::vector<float> q(static_cast<size_t>(fresh * kQHeads * kHeadDim), 0.01f);
  std::vector<float> out(q.size());
  for (auto _ : state) {
    OrDie(ExtendAttention(f.view, 0, kQHeads, offsets, q, absl::MakeSpan(out), options), "extend");
    benchmark::DoNotOptimize(out.data());
  }
}

// bf16 pages with AttentionOptions::bf16_products kWiden (products:0, widening to f32) and kDot
// (products:1, vdpbf16ps where the CPU has it), in L3, one thread: decode (1 x 2,048) and extend
// (512 new on 1,536).
void BM_Bf16Products(benchmark::State& state) {
  const bool extend = state.range(0) != 0;
  const int64_t fresh = extend ? 512 : 1;
  Fixture f(1, 2048, DType::kBF16, true);
  AttentionOptions options;
  options.bf16_products = state.range(1) != 0 ? Bf16Products::kDot : Bf16Products::kWiden;
  RunExtend(state, f, fresh, options);
  if (!extend) state.SetBytesProcessed(state.iterations() * f.KvBytes());
}
BENCHMARK(BM_Bf16Products)
    ->ArgNames({"extend", "products"})
    ->ArgsProduct({{0, 1}, {0, 1}})
    ->UseRealTime();

// The same shape without GQA (32 KV heads, one per query head), f16, as the widely used CPU
// flash-attention measured in the issue runs it: every query head reads its own K/V.
void BM_DecodePagedNoGqa(benchmark::State& state) {
  const int64_t context = state.range(0);
  Fixture f(1, context, DType::kF16, true, kQHeads);
  AttentionOptions options;
  options.num_threads = static_cast<int32_t>(state.range(1));
  RunDecode(state, f.view, kQHeads, options);
}
BENCHMARK(BM_DecodePagedNoGqa)->ArgNames({"context", "threads"})->Args({2048, 1})->UseRealTime();

// Query heads per KV head: 8 KV heads, 1 x 2,048 (8 MiB of bf16 or f16, 16 MiB of f32, in L3),
// one thread, with 1 to 8 query heads per KV head, in each dtype. The K/V bytes are the same
// for every group, so bytes/s compares the work per KV byte of the groups: the goal report puts
// each group's rate over group 1's.
void BM_DecodeGqa(benchmark::State& state) {
  Fixture f(1, 2048, DTypeArg(state.range(0)), true);
  AttentionOptions options;
  options.num_threads = 1;
  RunDecode(state, f.view, kKvHeads * static_cast<int32_t>(state.range(1)), options);
}
BENCHMARK(BM_DecodeGqa)
    ->ArgNames({"dtype", "group"})
    ->ArgsProduct({{1, 0, 2}, {1, 2, 3, 4, 5, 6, 7, 8}})
    ->UseRealTime();

// Head dims of other models, GQA 4 (8 KV heads, 32 query heads), 1 x 2,048 from 16-token
// shuffled pages, one thread, in each dtype: 64 (Llama-3.2-1B), 80 (Phi-2; on AVX-512 not a
// multiple of 32, so bf16 splits dims 0-63 only and the last 16 dims are one vector),
// 96 (Phi-3), 128 (Llama-3) and 256 (Gemma). Bytes/s counts K/V bytes, as the decode rows.
void BM_DecodeHeadDim(benchmark::State& state) {
  const Fixture f(1, 2048, DTypeArg(state.range(0)), true, kKvHeads, 1, 16, 1,
                  PageLayout::kBlockMajor, static_cast<int32_t>(state.range(1)));
  AttentionOptions options;
  options.num_threads = 1;
  RunDecode(state, f.view, kQHeads, options);
}
BENCHMARK(BM_DecodeHeadDim)
    ->ArgNames({"dtype", "head_dim"})
    ->ArgsProduct({{1, 0, 2}, {64, 80, 96, 128, 256}})
    ->UseRealTime();

// The logits soft-cap's cost at Gemma 2's shape (16 query heads over 8 KV heads, head dim 256,
// cap 50), bf16, 1 x 2,048 from 16-token shuffled pages, one thread: capped and uncapped calls
// alternated, capped_over_uncapped the ratio of their median times.
void BM_DecodeSoftCap(benchmark::State& state) {
  const Fixture f(1, 2048, DType::kBF16, true, kKvHeads, 1, 16, 1, PageLayout::kBlockMajor, 256);
  const int32_t q_heads = 2 * kKvHeads;
  std::vector<float> q(static_cast<size_t>(q_heads * f.view.head_dim), 0.01f);
  std::vector<float> out(q.size());
  const auto call = [&](float cap) {
    return [&, cap] {
      AttentionOptions options;
      options.num_threads = 1;
      options.soft_cap = cap;
      OrDie(DecodeAttention(f.view, 0, q_heads, q, absl::MakeSpan(out), options), "decode");
      benchmark::DoNotOptimize(out.data());
    };
  };
  const std::vector<double> median = MedianSecondsOfAlternatedCalls(state, {call(50), call(0)});
  state.counters["capped_over_uncapped"] = median[0] / median[1];
}
BENCHMARK(BM_DecodeSoftCap)->UseManualTime();

// PageFetch::kFar against kNear over BM_DecodePaged's shape, 16-token shuffled pages: each
// iteration decodes {batch, context, dtype} once with each, in alternating order, and
// far_over_near is the ratio of their median times. 1 x 2,048 sits in L3, the others in DRAM.
void BM_DecodePageFetch(benchmark::State& state) {
  const Fixture f(state.range(0), state.range(1), DTypeArg(state.range(2)), true);
  std::vector<float> q(static_cast<size_t>(state.range(0) * kQHeads * kHeadDim), 0.01f);
  std::vector<float> out(q.size());
  AttentionOptions near;
  near.num_threads = static_cast<int32_t>(state.range(3));
  near.page_fetch = PageFetch::kNear;
  AttentionOptions far = near;
  far.page_fetch = PageFetch::kFar;
  const std::vector<double> median = MedianSecondsOfAlternatedCalls(
      state, {DecodeCall(f.view, near, q, out), DecodeCall(f.view, far, q, out)});
  state.counters["far_over_near"] = median[1] / median[0];
  state.SetBytesProcessed(state.iterations() * 2 * f.KvBytes());
}
BENCHMARK(BM_DecodePageFetch)
    ->ArgNames({"batch", "context", "dtype", "threads"})
    ->Args({1, 2048, 1, 1})
    ->Args({32, 2048, 1, 1})
    ->Args({1, 32768, 1, 1})
    ->Args({32, 2048, 0, 1})
    ->Args({32, 2048, 2, 1})
    ->Args({1, 2048, 1, 2})
    ->Args({32, 2048, 1, 2})
    ->UseManualTime();

// One decode step of the whole model as an engine runs it: Llama-3-8B's 32 layers one after
// another, 1 x 2,048 tokens, bf16 (8 MiB of K/V per layer, 256 MiB in all). By the time the
// step comes back to a layer, its pages have left the caches: this is the DRAM figure a server
// sees, where BM_DecodePaged's 1 x 2,048 reads one layer again and again from L3. Compare with
// BM_StreamRead of 256 MiB.
void DecodeModelStep(const Fixture& f, int32_t layers, const AttentionOptions& options,
                     const std::vector<float>& q, std::vector<float>& out) {
  for (int32_t layer = 0; layer < layers; ++layer) {
    OrDie(DecodeAttention(f.view, layer, kQHeads, q, absl::MakeSpan(out), options), "decode");
    benchmark::DoNotOptimize(out.data());
  }
}
void BM_DecodeModelStep(benchmark::State& state) {
  const auto layers = static_cast<int32_t>(state.range(0));
  Fixture f(1, 2048, DType::kBF16, true, kKvHeads, layers);
  AttentionOptions options;
  options.num_threads = static_cast<int32_t>(state.range(1));
  std::vector<float> q(static_cast<size_t>(kQHeads * kHeadDim), 0.01f);
  std::vector<float> out(q.size());
  for (auto _ : state) DecodeModelStep(f, layers, options, q, out);
  state.SetBytesProcessed(state.iterations() * f.KvBytes() * layers);
}
BENCHMARK(BM_DecodeModelStep)
    ->ArgNames({"layers", "threads"})
    ->ArgsProduct({{32}, ThreadCounts()})
    ->UseRealTime();

// The model step's goal measured with calls alternated, as BM_DecodePagedOverStream measures
// one layer's: each iteration runs BM_DecodeModelStep's step and streams a buffer of the same
// 256 MiB with the same threads, in alternating order; step_over_stream is the stream's median
// time over the step's (the step's K/V bytes/s over the stream's). On the shared VM the separate
// rows have given 0.67 in one run and 0.84 in another.
void BM_DecodeModelStepOverStream(benchmark::State& state) {
  const auto layers = static_cast<int32_t>(state.range(0));
  const int threads = static_cast<int>(state.range(1));
  const Fixture f(1, 2048, DType::kBF16, true, kKvHeads, layers);
  AttentionOptions options;
  options.num_threads = threads;
  std::vector<float> q(static_cast<size_t>(kQHeads * kHeadDim), 0.01f);
  std::vector<float> out(q.size());
  const int64_t bytes = f.KvBytes() * layers;
  const ArenaArray<float> stream(static_cast<size_t>(bytes) / sizeof(float), 1.0f);
  const std::vector<double> median = MedianSecondsOfAlternatedCalls(
      state, {[&] { DecodeModelStep(f, layers, options, q, out); },
              [&] { benchmark::DoNotOptimize(StreamOnce(stream.span(), threads)); }});
  state.counters["step_over_stream"] = median[1] / median[0];
  state.SetBytesProcessed(state.iterations() * 2 * bytes);
}
BENCHMARK(BM_DecodeModelStepOverStream)
    ->ArgNames({"layers", "threads"})
    ->ArgsProduct({{32}, ThreadCounts()})
    ->UseManualTime();

// Page size, for choosing one: bf16 decode, one thread, with pages of 16 to 128 tokens (shuffled),
// in L3 (batch 1) and from DRAM (batch 32), context 2,048. Compare each with
// BM_DecodeContiguous of the same batch.
void BM_DecodePageSize(benchmark::State& state) {
  Fixture f(state.range(1), 2048, DType::kBF16, true, kKvHeads, 1,
            static_cast<int32_t>(state.range(0)));
  AttentionOptions options;
  options.num_threads = 1;
  RunDecode(state, f.view, kQHeads, options);
}
BENCHMARK(BM_DecodePageSize)
    ->ArgNames({"page", "batch"})
    ->ArgsProduct({{16, 32, 64, 128}, {1, 32}})
    ->UseRealTime();

// Fragmentation and page order: bf16 decode, one thread, 16-token pages handed out in shuffled
// runs of 1 to 128 consecutive block ids (1: every page on its own, as BM_DecodePaged; 128: each
// 2,048-token sequence one run), in L3 (batch 1) and from DRAM (batch 32), with the pools laid
// out head-major (layout 1: a run reads as one array) or block-major (2). Each iteration decodes
// the paged cache and one contiguous page per sequence, in alternating order, as
// BM_DecodePagedOverContiguous does; paged_over_contiguous is the ratio of their median times.
void BM_DecodePageRun(benchmark::State& state) {
  const int64_t batch = state.range(1);
  const Fixture paged(batch, 2048, DType::kBF16, true, kKvHeads, 1, 16,
                      static_cast<int32_t>(state.range(0)),
                      static_cast<PageLayout>(state.range(2)));
  const Fixture contiguous(batch, 2048, DType::kBF16, false);
  AttentionOptions options;
  options.num_threads = 1;
  std::vector<float> q(static_cast<size_t>(batch * kQHeads * kHeadDim), 0.01f);
  std::vector<float> out(q.size());
  const std::vector<double> median = MedianSecondsOfAlternatedCalls(
      state,
      {DecodeCall(paged.view, options, q, out), DecodeCall(contiguous.view, options, q, out)});
  state.counters["paged_over_contiguous"] = median[0] / median[1];
  state.counters["pages_per_run"] = PagesPerRun(paged.view);
  state.SetBytesProcessed(state.iterations() * (paged.KvBytes() + contiguous.KvBytes()));
}
BENCHMARK(BM_DecodePageRun)
    ->ArgNames({"run", "batch", "layout"})
    ->ArgsProduct({{1, 8, 32, 128}, {1, 32}, {1, 2}})
    ->UseManualTime();

// Sequences that grew while others came and went, with prefix caching on: the block tables a
// pool's eviction order leaves once its blocks have been reused a few times. Short sequences
// (prompts of 64-1,024 random tokens, a quarter opening with one of four 128-token prefixes, then
// 16-512 decoded) arrive, about one a round while the pool has room, and decode 16 tokens a
// round (a block each) until done. Once three pools' worth of blocks have been evicted, `batch`
// measured sequences arrive with 1,024-token prompts and decode among the others up to 2,048.
// The others are then freed and the measured ones get random K/V. The pool holds three times the
// measured blocks (at least 2,048); layout kAuto.
struct ChurnFixture {
  static constexpr int64_t kContext = 2048;
  std::unique_ptr<PagedKvCache> cache;
  std::mt19937 rng{11};
  std::vector<std::vector<int32_t>> prefixes;
  struct Live {
    SeqId id;
    int64_t length;
    int64_t target;
    bool measured;
  };
  std::vector<Live> live;
  std::vector<SeqId> measured;
  PagedKvViewStorage storage;
  PagedKvView view;

  ChurnFixture(int64_t batch, EvictionOrder order) {
    CacheConfig config;
    config.num_layers = 1;
    config.num_kv_heads = kKvHeads;
    config.head_dim = kHeadDim;
    config.dtype = DType::kBF16;
    config.block_size = 16;
    config.enable_prefix_caching = true;
    config.eviction_order = order;
    const int64_t measured_blocks = batch * kContext / config.block_size;
    config.num_blocks = static_cast<int32_t>(std::max<int64_t>(3 * measured_blocks, 2048));
    config.max_seq_len = kContext;
    cache = OrDie(PagedKvCache::Create(config), "cache");
    for (int i = 0; i < 4; ++i) prefixes.push_back(Tokens(128));
    const int64_t warm_evictions = 3 * int64_t{config.num_blocks};
    while (measured.empty() || live.front().length < kContext) {
      if (measured.empty() && cache->pool().stats().evictions >= warm_evictions) {
        for (int64_t i = 0; i < batch; ++i) Admit(Tokens(1024), kContext, true);
      }
      // A newcomer when the pool has room for it, every sequence's next block and, before the
      // measured ones arrive, theirs.
      std::vector<int32_t> prompt = Tokens(Uniform(64, 1024));
      if (Uniform(0, 3) == 0) {
        const std::vector<int32_t>& prefix = prefixes[static_cast<size_t>(Uniform(0, 3))];
        prompt.insert(prompt.begin(), prefix.begin(), prefix.end());
      }
      const int64_t target = static_cast<int64_t>(prompt.size()) + Uniform(16, 512);
      const int64_t room = target / 16 + 2 * static_cast<int64_t>(live.size()) +
                           (measured.empty() ? measured_blocks : 0);
      if (cache->pool().num_available() > room) Admit(std::move(prompt), target, false);
      for (Live& l : live) {
        const int64_t n = std::min<int64_t>(16, l.target - l.length);
        if (n > 0) OrDie(cache->Reserve(l.id, Tokens(n)), "decode");
        l.length += n;
      }
      for (size_t i = 0; i < live.size();) {
        if (!live[i].measured && live[i].length >= live[i].target) {
          OrDie(cache->Free(live[i].id), "free");
          live.erase(live.begin() + static_cast<std::ptrdiff_t>(i));
        } else {
          ++i;
        }
      }
    }
    for (const Live& l : live) {
      if (!l.measured) OrDie(cache->Free(l.id), "free");
    }
    std::vector<float> kv(static_cast<size_t>(kContext * kKvHeads * kHeadDim));
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    for (float& x : kv) x = u(rng);
    for (SeqId id : measured) OrDie(cache->WriteKv(id, 0, 0, kv, kv), "write");
    view = OrDie(cache->MakeView(measured, &storage), "view");
  }

  int64_t Uniform(int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  }
  std::vector<int32_t> Tokens(int64_t n) {
    std::vector<int32_t> t(static_cast<size_t>(n));
    for (int32_t& x : t) x = static_cast<int32_t>(Uniform(0, 127999));
    return t;
  }
  // Creates a sequence for `prompt`, reserves what the prefix cache did not hold, and lists it
  // (measured ones first).
  void Admit(std::vector<int32_t> prompt, int64_t target, bool is_measured) {
    const NewSequence seq = OrDie(cache->CreateSequence(prompt, 0), "create");
    OrDie(cache->Reserve(seq.id, absl::MakeConstSpan(prompt).subspan(
                                     static_cast<size_t>(seq.cached_tokens))),
          "prefill");
    const Live l{seq.id, static_cast<int64_t>(prompt.size()), target, is_measured};
    if (is_measured) {
      live.insert(live.begin() + static_cast<std::ptrdiff_t>(measured.size()), l);
      measured.push_back(seq.id);
    } else {
      live.push_back(l);
    }
  }
};

// bf16 decode, one thread, over ChurnFixture's tables, in L3 (batch 1) and from DRAM (batch 32),
// with EvictionOrder::kLru (0; block-major pools under kAuto) or kSweep (1; head-major). Compare
// with BM_DecodeContiguous of the same batch.
void BM_DecodeAfterChurn(benchmark::State& state) {
  const ChurnFixture f(state.range(0), static_cast<EvictionOrder>(state.range(1)));
  AttentionOptions options;
  options.num_threads = 1;
  RunDecode(state, f.view, kQHeads, options);
}
BENCHMARK(BM_DecodeAfterChurn)
    ->ArgNames({"batch", "eviction"})
    ->ArgsProduct({{1, 32}, {0, 1}})
    ->UseRealTime();

// One KV head and its four query heads, bf16, one thread: at context 512 (256 KiB) K/V sit in
// L2, so this is the kernel's arithmetic ceiling with the L3 out of the way; at 16,384 (8 MiB)
// the same work streams from L3. Paged (16-token pages, shuffled) against contiguous.
void BM_DecodeOneKvHead(benchmark::State& state) {
  const int64_t context = state.range(0);
  Fixture f(1, context, DType::kBF16, state.range(1) != 0, 1);
  RunDecode(state, f.view, 4, AttentionOptions());
}
BENCHMARK(BM_DecodeOneKvHead)
    ->ArgNames({"context", "paged"})
    ->ArgsProduct({{512, 16384}, {1, 0}})
    ->UseRealTime();

// Prefill of `new` tokens on `cached` ones, one sequence: FLOPs of QK^T and PV, causal. bf16
// at every ThreadCounts() count, f32 and f16 at one.
void BM_ExtendPaged(benchmark::State& state) {
  const int64_t fresh = state.range(0);
  const int64_t cached = state.range(1);
  Fixture f(1, cached + fresh, DTypeArg(state.range(2)), true);
  AttentionOptions options;
  options.num_threads = static_cast<int32_t>(state.range(3));
  RunExtend(state, f, fresh, options);
  double keys = 0;
  for (int64_t i = 0; i < fresh; ++i) keys += static_cast<double>(cached + i + 1);
  const double flops = 4.0 * kQHeads * kHeadDim * keys;  // 2 per multiply-add, QK and PV.
  state.counters["flop_per_second"] =
      benchmark::Counter(flops * static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_ExtendPaged)
    ->ArgNames({"new", "cached", "dtype", "threads"})
    ->ArgsProduct({{512}, {1536}, {1}, ThreadCounts()})
    ->Args({512, 1536, 0, 1})
    ->Args({512, 1536, 2, 1})
    ->UseRealTime();

}  // namespace
}  // namespace pagedkv::bench

// The per-step manager path of continuous batching: reserve one slot for every running sequence.
#include <cstdint>
#include <random>
#include <vector>

#include "benchmark/benchmark.h"
#include "bench_util.h"

namespace pagedkv::bench {
namespace {

constexpr int64_t kStepsPerReset = 512;

// Sequences start at random lengths in [0, 2048) so block boundaries are crossed at the natural
// rate (one sequence in 16 per step). Every 512 steps they are truncated back, untimed.
void DecodeStep(benchmark::State& state, bool with_tokens) {
  const int64_t batch = state.range(0);
  const int32_t blocks = static_cast<int32_t>(batch * (2048 + kStepsPerReset) / 16 + batch);
  CacheConfig config = Llama3_8B(blocks, /*metadata_only=*/true);
  config.enable_prefix_caching = with_tokens;
  auto cache = OrDie(PagedKvCache::Create(config), "cache");
  std::mt19937 rng(1);
  std::vector<SeqId> seqs;
  std::vector<int64_t> start_lengths;
  for (int64_t i = 0; i < batch; ++i) {
    seqs.push_back(OrDie(cache->CreateSequence(), "create").id);
    start_lengths.push_back(std::uniform_int_distribution<int64_t>(0, 2047)(rng));
    std::vector<int32_t> prompt(static_cast<size_t>(start_lengths.back()));
    for (int32_t& t : prompt) t = static_cast<int32_t>(rng() % 32000);
    if (with_tokens) {
      OrDie(cache->Reserve(seqs.back(), prompt), "prefill");
    } else {
      OrDie(cache->Reserve(seqs.back(), start_lengths.back()), "prefill");
    }
  }
  std::vector<int32_t> next_tokens(static_cast<size_t>(batch));
  for (int32_t& t : next_tokens) t = static_cast<int32_t>(rng() % 32000);
  std::vector<ReserveRequest> step(static_cast<size_t>(batch));
  for (size_t i = 0; i < step.size(); ++i) {
    step[i].seq = seqs[i];
    step[i].num_tokens = 1;
    if (with_tokens) step[i].tokens = absl::MakeConstSpan(&next_tokens[i], 1);
  }
  int64_t steps = 0;
  for (auto _ : state) {
    OrDie(cache->ReserveBatch(step), "step");
    if (++steps == kStepsPerReset) {
      state.PauseTiming();
      for (size_t i = 0; i < seqs.size(); ++i) OrDie(cache->Truncate(seqs[i], start_lengths[i]), "reset");
      steps = 0;
      state.ResumeTiming();
    }
  }
  state.SetItemsProcessed(state.iterations() * batch);
  state.counters["ns_per_seq"] = benchmark::Counter(
      static_cast<double>(state.iterations() * batch),
      benchmark::Counter::kIsRate | benchmark::Counter::kInvert, benchmark::Counter::kIs1000);
}

void BM_DecodeStep(benchmark::State& state) { DecodeStep(state, /*with_tokens=*/false); }
BENCHMARK(BM_DecodeStep)->Arg(1024);

// The same step with token ids recorded and prefix caching on: each filled block is hashed and
// registered.
void BM_DecodeStepPrefixCaching(benchmark::State& state) { DecodeStep(state, true); }
BENCHMARK(BM_DecodeStepPrefixCaching)->Arg(1024);

}  // namespace
}  // namespace pagedkv::bench

namespace pagedkv::bench {
namespace {

// The step path from several threads at once: each thread reserves one slot for each of its
// share of 1,024 running sequences per iteration, all on one cache.
struct SharedCache {
  std::unique_ptr<PagedKvCache> cache;
  std::vector<SeqId> seqs;
  std::vector<int64_t> start_lengths;
};
SharedCache* shared_cache = nullptr;

void SharedCacheSetup(const benchmark::State&) {
  constexpr int64_t kSeqs = 1024;
  auto* s = new SharedCache;
  s->cache = OrDie(PagedKvCache::Create(Llama3_8B(
                       static_cast<int32_t>(kSeqs * (2048 + kStepsPerReset) / 16 + kSeqs), true)),
                   "cache");
  std::mt19937 rng(1);
  for (int64_t i = 0; i < kSeqs; ++i) {
    s->seqs.push_back(OrDie(s->cache->CreateSequence(), "create").id);
    s->start_lengths.push_back(std::uniform_int_distribution<int64_t>(0, 2047)(rng));
    OrDie(s->cache->Reserve(s->seqs.back(), s->start_lengths.back()), "prefill");
  }
  shared_cache = s;
}

void SharedCacheTeardown(const benchmark::State&) {
  delete shared_cache;
  shared_cache = nullptr;
}

void BM_ConcurrentDecodeStep(benchmark::State& state) {
  SharedCache& s = *shared_cache;
  const size_t n = s.seqs.size();
  const size_t begin = n * static_cast<size_t>(state.thread_index()) / static_cast<size_t>(state.threads());
  const size_t end = n * static_cast<size_t>(state.thread_index() + 1) / static_cast<size_t>(state.threads());
  std::vector<ReserveRequest> step;
  for (size_t i = begin; i < end; ++i) step.push_back({s.seqs[i], 1, {}});
  int64_t steps = 0;
  for (auto _ : state) {
    OrDie(s.cache->ReserveBatch(step), "step");
    if (++steps == kStepsPerReset) {
      state.PauseTiming();
      for (size_t i = begin; i < end; ++i) {
        OrDie(s.cache->Truncate(s.seqs[i], s.start_lengths[i]), "reset");
      }
      steps = 0;
      state.ResumeTiming();
    }
  }
  state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(end - begin));
}
BENCHMARK(BM_ConcurrentDecodeStep)
    ->Setup(SharedCacheSetup)
    ->Teardown(SharedCacheTeardown)
    ->Threads(1)
    ->Threads(2)
    ->Threads(4)
    ->UseRealTime();

}  // namespace
}  // namespace pagedkv::bench

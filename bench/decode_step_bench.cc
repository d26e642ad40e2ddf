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

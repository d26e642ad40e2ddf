// Forking a sequence for beam search or parallel sampling: sharing pages against the deep copy a
// contiguous cache must make.
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "benchmark/benchmark.h"
#include "bench_util.h"

namespace pagedkv::bench {
namespace {

constexpr int kForksPerBatch = 256;

// Fork alone: children are freed outside the timed region, a batch at a time.
void BM_ForkPaged(benchmark::State& state) {
  const int64_t tokens = state.range(0);
  CacheConfig config = Llama3_8B(static_cast<int32_t>(tokens / 16 + 1), /*metadata_only=*/false);
  auto cache = OrDie(PagedKvCache::Create(config), "cache");
  const SeqId parent = OrDie(cache->CreateSequence(), "create").id;
  OrDie(cache->Reserve(parent, tokens), "reserve");
  std::vector<SeqId> children;
  children.reserve(kForksPerBatch);
  for (auto _ : state) {
    children.push_back(*cache->Fork(parent));
    if (children.size() == kForksPerBatch) {
      state.PauseTiming();
      for (SeqId child : children) OrDie(cache->Free(child), "free");
      children.clear();
      state.ResumeTiming();
    }
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["kv_bytes"] = static_cast<double>(tokens * config.BytesPerToken());
}
BENCHMARK(BM_ForkPaged)->Arg(4096);

// A contiguous cache holds one [tokens][heads][dim] array per layer for K and for V; forking it
// copies them all.
void BM_CloneContiguous(benchmark::State& state) {
  const int64_t tokens = state.range(0);
  const CacheConfig config = Llama3_8B(1, true);
  const size_t per_array = static_cast<size_t>(tokens * config.num_kv_heads * config.head_dim *
                                               DTypeSize(config.dtype));
  const size_t arrays = static_cast<size_t>(2 * config.num_layers);
  std::vector<std::unique_ptr<std::byte[]>> src(arrays), dst(arrays);
  for (size_t i = 0; i < arrays; ++i) {
    src[i] = std::make_unique<std::byte[]>(per_array);
    dst[i] = std::make_unique<std::byte[]>(per_array);
    std::memset(src[i].get(), static_cast<int>(i), per_array);
    std::memset(dst[i].get(), 0, per_array);
  }
  for (auto _ : state) {
    for (size_t i = 0; i < arrays; ++i) std::memcpy(dst[i].get(), src[i].get(), per_array);
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(per_array * arrays));
  state.counters["kv_bytes"] = static_cast<double>(per_array * arrays);
}
BENCHMARK(BM_CloneContiguous)->Arg(4096)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace pagedkv::bench

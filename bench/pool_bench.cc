// Block allocation: the pool's O(1) free list against a general-purpose allocator handing out
// the same bytes.
#include <mimalloc.h>

#include <cstddef>

#include "benchmark/benchmark.h"
#include "bench_util.h"

namespace pagedkv::bench {
namespace {

void BM_PoolAllocFree(benchmark::State& state) {
  auto pool = OrDie(BlockPool::Create(Llama3_8B(4096, /*metadata_only=*/true)), "pool");
  for (auto _ : state) {
    BlockId b = *pool->Allocate();
    benchmark::DoNotOptimize(b);
    pool->Release(b);
  }
  state.SetItemsProcessed(state.iterations());
  state.SetLabel("block of " + std::to_string(pool->config().BlockBytes()) + " bytes");
}
BENCHMARK(BM_PoolAllocFree);

void BM_MimallocAllocFree(benchmark::State& state) {
  const size_t bytes = static_cast<size_t>(Llama3_8B(1, true).BlockBytes());
  for (auto _ : state) {
    void* p = mi_malloc(bytes);
    benchmark::DoNotOptimize(p);
    mi_free(p);
  }
  state.SetItemsProcessed(state.iterations());
  state.SetLabel(std::to_string(bytes) + " bytes");
}
BENCHMARK(BM_MimallocAllocFree);

}  // namespace
}  // namespace pagedkv::bench

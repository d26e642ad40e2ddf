// Shapes and helpers shared by the benchmarks.
#ifndef PAGEDKV_BENCH_BENCH_UTIL_H_
#define PAGEDKV_BENCH_BENCH_UTIL_H_

#include <cstdio>
#include <cstdlib>
#include <memory>

#include "attention/worker_pool.h"
#include "pagedkv/pagedkv.h"

namespace pagedkv::bench {

// Llama-3-8B attention: 32 layers, 8 KV heads, head dim 128, bf16 K/V, 16-token blocks.
inline CacheConfig Llama3_8B(int32_t num_blocks, bool metadata_only) {
  CacheConfig config;
  config.num_layers = 32;
  config.num_kv_heads = 8;
  config.head_dim = 128;
  config.block_size = 16;
  config.dtype = DType::kBF16;
  config.num_blocks = num_blocks;
  config.max_seq_len = 1 << 20;
  config.metadata_only = metadata_only;
  return config;
}

// Benchmarks have no caller to hand an error to: print it and stop.
template <typename T>
T OrDie(absl::StatusOr<T> value, const char* what) {
  if (!value.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, value.status().ToString().c_str());
    std::abort();
  }
  return *std::move(value);
}

inline void OrDie(const absl::Status& status, const char* what) {
  if (!status.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, status.ToString().c_str());
    std::abort();
  }
}

// Runs fn(t) for t in [0, threads) on the threads the attention kernels use: OpenMP's pool, or
// pagedkv's own where the build has no OpenMP. So a machine baseline's thread count means what a
// kernel's does in every build.
template <typename Fn>
void OnThreads(int threads, const Fn& fn) {
#if defined(_OPENMP)
#pragma omp parallel for num_threads(threads) if (threads > 1)
  for (int t = 0; t < threads; ++t) fn(t);
#else
  internal::PoolParallelFor(threads, threads, [&](int64_t t) { fn(static_cast<int>(t)); });
#endif
}

}  // namespace pagedkv::bench

#endif  // PAGEDKV_BENCH_BENCH_UTIL_H_

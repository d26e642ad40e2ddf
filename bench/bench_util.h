// Shapes and helpers shared by the benchmarks.
#ifndef PAGEDKV_BENCH_BENCH_UTIL_H_
#define PAGEDKV_BENCH_BENCH_UTIL_H_

#include <cstdio>
#include <cstdlib>
#include <memory>

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

}  // namespace pagedkv::bench

#endif  // PAGEDKV_BENCH_BENCH_UTIL_H_

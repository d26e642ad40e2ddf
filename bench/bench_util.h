// Shapes and helpers shared by the benchmarks.
#ifndef PAGEDKV_BENCH_BENCH_UTIL_H_
#define PAGEDKV_BENCH_BENCH_UTIL_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <thread>
#include <vector>

#include "absl/types/span.h"
#include "allocator/arena.h"
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

// The thread counts of the rows that scale with threads (decode, stream, FMA peak, extend, the
// model step, the arithmetic and scattered reads): 1 and 2 on every machine, the counts the README
// compares across machines; where the machine has more hardware threads, also 4, 8, ... below that
// number and the number itself, for the scaling shape.
inline std::vector<int64_t> ThreadCounts() {
  const auto hardware = static_cast<int64_t>(std::thread::hardware_concurrency());
  std::vector<int64_t> counts = {1, 2};
  for (int64_t t = 4; t < hardware; t *= 2) counts.push_back(t);
  if (hardware > 2) counts.push_back(hardware);
  return counts;
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

// `n` values of `fill` in memory allocated as the cache allocates its K/V (AllocateArena: 2 MiB
// aligned, huge pages advised before the first write), for the reads the decode rows are compared
// with: a stream or a scattered read of it and a decode of the cache then see the same pages.
// With transparent huge pages in `madvise` mode a std::vector keeps 4 KiB pages: on the Zen 4 VM
// a standalone stream of 256 MiB read 24.6-25.5 GB/s from one and 27.1-28.8 GB/s with huge pages
// advised (8 MiB: 89.5-90.1 and 97.1-98.8).
template <typename T>
class ArenaArray {
 public:
  ArenaArray(size_t n, T fill) : n_(n), bytes_(static_cast<int64_t>(n * sizeof(T))) {
    data_ = reinterpret_cast<T*>(OrDie(internal::AllocateArena(bytes_), "arena"));
    std::fill_n(data_, n, fill);
  }
  ~ArenaArray() { internal::FreeArena(reinterpret_cast<std::byte*>(data_), bytes_); }
  ArenaArray(const ArenaArray&) = delete;
  ArenaArray& operator=(const ArenaArray&) = delete;

  T* data() { return data_; }
  const T* data() const { return data_; }
  size_t size() const { return n_; }
  absl::Span<const T> span() const { return absl::MakeConstSpan(data_, n_); }

 private:
  size_t n_;
  int64_t bytes_;
  T* data_;
};

}  // namespace pagedkv::bench

#endif  // PAGEDKV_BENCH_BENCH_UTIL_H_

// Shared pieces of the libFuzzer targets.
#ifndef PAGEDKV_TESTS_FUZZ_FUZZ_COMMON_H_
#define PAGEDKV_TESTS_FUZZ_FUZZ_COMMON_H_

#include <cstdio>
#include <cstdlib>

#include "absl/status/status.h"
#include "pagedkv/pagedkv.h"

namespace pagedkv::fuzz {

// A finding: print what broke and crash, so libFuzzer saves the input.
[[noreturn]] inline void Die(const char* what, const absl::Status& status = absl::OkStatus()) {
  std::fprintf(stderr, "pagedkv fuzz: %s %s\n", what, status.ToString().c_str());
  std::abort();
}

inline void Check(const PagedKvCache& cache) {
  if (absl::Status s = cache.CheckInvariants(); !s.ok()) Die("invariants broken:", s);
}

// The model every fuzz target's cache uses (and the seed payloads were made for).
inline CacheConfig FuzzConfig(bool prefix_caching, bool sweep = false) {
  CacheConfig config;
  config.num_layers = 2;
  config.num_kv_heads = 2;
  config.head_dim = 8;
  config.block_size = 4;
  config.dtype = DType::kBF16;
  config.num_blocks = 48;
  config.max_seq_len = 120;
  config.enable_prefix_caching = prefix_caching;
  config.eviction_order = sweep ? EvictionOrder::kSweep : EvictionOrder::kLru;
  return config;
}

}  // namespace pagedkv::fuzz

#endif  // PAGEDKV_TESTS_FUZZ_FUZZ_COMMON_H_

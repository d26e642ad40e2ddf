// Test-only access to PagedKvCache internals, instead of widening the public API.
#ifndef PAGEDKV_TESTS_TEST_PEER_H_
#define PAGEDKV_TESTS_TEST_PEER_H_

#include <cstdint>

#include "absl/types/span.h"
#include "pagedkv/paged_kv_cache.h"

namespace pagedkv {

class PagedKvCacheTestPeer {
 public:
  using BlockHashFn = PagedKvCache::BlockHashFn;
  // Replaces the prefix-block hash, e.g. with one that sends every block to the same key.
  static void SetBlockHash(PagedKvCache& cache, BlockHashFn fn) { cache.block_hash_ = fn; }
};

}  // namespace pagedkv

#endif  // PAGEDKV_TESTS_TEST_PEER_H_

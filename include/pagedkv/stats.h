// CacheStats: what a PagedKvCache holds and has done.
#ifndef PAGEDKV_STATS_H_
#define PAGEDKV_STATS_H_

#include <cstdint>

#include "pagedkv/block_pool.h"

namespace pagedkv {

struct CacheStats {
  PoolStats pool;
  int64_t num_sequences = 0;
  // Sum of sequence lengths: a token shared by k sequences counts k times.
  int64_t logical_tokens = 0;
  // Token slots of used blocks that hold a token of at least one sequence: shared ones once.
  int64_t physical_tokens = 0;
  // physical_tokens / (used_blocks * block_size); 0 when no block is used.
  double utilization = 0.0;
  // Slots of used blocks that hold no token: used_blocks * block_size - physical_tokens.
  int64_t tail_waste_tokens = 0;
  // Block-table entries minus used blocks: blocks that unshared copies would need in addition.
  int64_t blocks_saved_by_sharing = 0;
  // Block-table entries of all sequences, and the runs they form: maximal stretches of
  // consecutive block ids. In head-major pools (PageLayout) a KV head's pages of a run are
  // adjacent, so decode reads a run as one array: entries / runs is how many pages it streams
  // between jumps.
  int64_t table_entries = 0;
  int64_t table_runs = 0;
  // Prefix cache, since creation: CreateSequence calls that looked up a prompt, those that hit at
  // least one block, prompt tokens looked up, and prompt tokens served from cache.
  int64_t prefix_queries = 0;
  int64_t prefix_hits = 0;
  int64_t prefix_query_tokens = 0;
  int64_t prefix_hit_tokens = 0;
  // Shared partial tail blocks copied for a writer, since creation.
  int64_t cow_copies = 0;
};

}  // namespace pagedkv

#endif  // PAGEDKV_STATS_H_

// The KV-cache policies pagedkv-sim compares under one budget: the real PagedKvCache, and two
// contiguous caches of the kind pagedkv replaces.
#ifndef PAGEDKV_SIM_BACKENDS_H_
#define PAGEDKV_SIM_BACKENDS_H_

#include <cstdint>
#include <memory>
#include <optional>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "pagedkv/paged_kv_cache.h"
#include "src/sim/presets.h"

namespace pagedkv::sim {

// One sequence as the simulator sees it.
struct SimSeq {
  int64_t id = -1;
  int64_t length = 0;
  int64_t capacity = 0;  // Token slots the sequence holds (contiguous policies).
};

// Memory at one moment, in tokens of K/V.
struct Usage {
  int64_t tokens_stored = 0;   // Distinct token positions held (shared ones once).
  int64_t slots_reserved = 0;  // Token slots set aside for sequences.
  int64_t tail_waste = 0;      // Reserved slots at sequence tails holding nothing.
  int64_t shared_saved = 0;    // Paged: blocks sharing saves against private copies.
  int64_t shared_entries = 0;  // Paged: block-table entries (blocks needed without sharing).
  // Stretches of adjacent K/V that decode reads from end to end (paged: runs of consecutive block
  // ids in the tables; contiguous: one per sequence), and the token slots they hold.
  int64_t runs = 0;
  int64_t run_slots = 0;
};

// Every call either succeeds or changes nothing.
class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;
  // Admits a prompt if afterwards at least `watermark_tokens` of the budget stay free. Sets
  // *cached to the prompt tokens served from a prefix cache.
  virtual std::optional<SimSeq> Admit(absl::Span<const int32_t> prompt, int64_t watermark_tokens,
                                      int64_t* cached) = 0;
  virtual bool Append(SimSeq& seq, int32_t token) = 0;
  virtual std::optional<SimSeq> Fork(const SimSeq& seq) = 0;
  virtual void Free(SimSeq& seq) = 0;
  virtual Usage usage() const = 0;
  // Token slots held at this moment (cheap; for the memory-over-time series).
  virtual int64_t slots_in_use() const = 0;
  // Tokens copied to grow or fork sequences.
  virtual int64_t copied_tokens() const { return copied_tokens_; }
  virtual absl::Status CheckInvariants() const = 0;
  // Runs decode attention over `seqs` (every layer) when the backend holds real K/V; returns the
  // nanoseconds it took, 0 otherwise.
  virtual double DecodeAttentionStep(absl::Span<const SimSeq> /*seqs*/) { return 0.0; }

 protected:
  int64_t copied_tokens_ = 0;
};

struct BackendOptions {
  ModelPreset model;
  int64_t budget_tokens = 0;
  int32_t block_size = 16;
  int64_t max_seq_len = 0;
  bool sharing = true;          // Paged: fork shares pages and the prefix cache is on.
  EvictionOrder eviction_order = EvictionOrder::kLru;  // Paged: see CacheConfig.
  bool materialize = false;     // Paged: real K/V storage, written for every token.
};

absl::StatusOr<std::unique_ptr<Backend>> MakePagedBackend(const BackendOptions& options);
// Reserves max_seq_len slots for every sequence up front.
std::unique_ptr<Backend> MakeContiguousMaxBackend(const BackendOptions& options);
// Starts at the prompt rounded up to a power of two and doubles (copying) when full.
std::unique_ptr<Backend> MakeContiguousDoublingBackend(const BackendOptions& options);

}  // namespace pagedkv::sim

#endif  // PAGEDKV_SIM_BACKENDS_H_

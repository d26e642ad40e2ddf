// PagedKvCache: sequences mapped to pages of a BlockPool through block tables, with
// copy-on-write fork, truncate, prefix sharing, K/V read/write and serialization.
#ifndef PAGEDKV_PAGED_KV_CACHE_H_
#define PAGEDKV_PAGED_KV_CACHE_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "pagedkv/block_pool.h"
#include "pagedkv/config.h"
#include "pagedkv/stats.h"
#include "pagedkv/view.h"

namespace pagedkv {

// Names a sequence. Ids are never reused, so a freed id stays unknown (kNotFound) for good.
using SeqId = int64_t;

struct NewSequence {
  SeqId id = -1;
  // Prompt tokens whose K/V the sequence already holds through prefix hits; the caller reserves
  // and computes prompt[cached_tokens:]. Always < prompt length when a prompt was given.
  int64_t cached_tokens = 0;
};

// One sequence's part of a batch reservation. `tokens` is empty (ids unknown) or holds
// `num_tokens` ids.
struct ReserveRequest {
  SeqId seq = -1;
  int64_t num_tokens = 0;
  absl::Span<const int32_t> tokens;
};

// Owns a BlockPool and the block tables of every sequence.
//
// Writing K/V: Reserve() makes slots for new tokens (copying a shared partial tail block for the
// writer only), then the engine writes those slots, layer by layer, before attention reads them.
// A sequence may write positions in [writable_from, length): the slots it reserved itself since
// its last Fork(); positions it got from a fork or a prefix hit are read-only, so a write never
// reaches another sequence's K/V. Full blocks are registered in the prefix index when they fill
// up, before their K/V is written: a sequence created in the same step that hits them reads them
// after the engine's writes of that step, as in a batched forward pass.
//
// Invariants (CheckInvariants() recounts them):
//   1. The pool's invariants, with ref_count[b] == number of block-table entries naming b.
//   2. For each sequence: blocks == ceil(length / block_size) and length <= max_seq_len.
//   3. 0 <= writable_from <= length; the first chain_blocks blocks are registered prefix blocks.
//
// Errors: out of blocks is kResourceExhausted; an unknown or freed sequence kNotFound; a bad
// shape, layer, length or payload kInvalidArgument; K/V access on a metadata-only cache or a write
// to a read-only position kFailedPrecondition. Every message names the values involved, and a
// failed call changes nothing.
//
// Thread safety: every method may be called from many threads at once. An internal
// reader-writer lock serializes the calls that change the sequence table or blocks other
// sequences hold (create, fork, free, restore, clear, and reservations that copy a shared tail
// or register prefix blocks) and those that read every sequence (Stats, CheckInvariants). The
// others run side by side: K/V writes into a sequence's own slots, reads, views, truncation,
// and the common decode-step reservation (private tail, no token ids to register), whose blocks
// come from and go back to the pool under a short pool lock, so ReserveBatch and Truncate calls
// for disjoint sequences from several threads scale. Calls for one sequence must still be ordered by the
// caller (reserve before write, no free while a view of it is in use); calls for different
// sequences need no coordination. Attention kernels read through a PagedKvView without any lock:
// other sequences may be created, appended, forked and freed meanwhile, since a block stays put
// while a viewed sequence holds it. pool() and BlockTable() hand out unsynchronized references:
// use them while no other thread changes the cache.
class PagedKvCache {
 public:
  // kInvalidArgument for a bad config; kResourceExhausted when the arena cannot be allocated.
  static absl::StatusOr<std::unique_ptr<PagedKvCache>> Create(const CacheConfig& config);
  ~PagedKvCache();
  // A cache is never copied; sharing is Fork().
  PagedKvCache(const PagedKvCache&) = delete;
  PagedKvCache& operator=(const PagedKvCache&) = delete;

  const CacheConfig& config() const { return pool_->config(); }
  const BlockPool& pool() const { return *pool_; }

  // --- Sequences -------------------------------------------------------------------------------

  // Creates an empty sequence. With prefix caching on and a prompt given, first shares the longest
  // run of cached full blocks matching prompt and salt (confirmed token by token), leaving at least
  // the prompt's last token to compute. Cost: O(prompt) hashing. kInvalidArgument when the prompt
  // is longer than max_seq_len. Sequences of different salts never share blocks.
  absl::StatusOr<NewSequence> CreateSequence(absl::Span<const int32_t> prompt = {},
                                             uint64_t salt = 0);

  // Reserves slots for `num_tokens` new tokens (ids unknown) and returns the first new position.
  // All-or-nothing. Cost: O(new blocks), plus one partial-block copy when the tail is shared.
  absl::StatusOr<int64_t> Reserve(SeqId seq, int64_t num_tokens);
  // The same, recording the token ids (needed for prefix caching and serialization of tokens).
  absl::StatusOr<int64_t> Reserve(SeqId seq, absl::Span<const int32_t> tokens);
  // Reserves for many sequences at once (a decode step). All-or-nothing for the whole batch: on
  // any error no sequence changes. A sequence may appear once. Cost: O(batch + new blocks).
  absl::Status ReserveBatch(absl::Span<const ReserveRequest> requests);

  // A new sequence sharing every block of `seq`, partial tail included. Both sides lose write
  // access to the shared positions; the first Reserve() of either copies the shared partial tail.
  // Cost: O(blocks), never O(bytes). Never runs out of blocks.
  absl::StatusOr<SeqId> Fork(SeqId seq);

  // Drops positions >= `length` (speculative-decoding rollback) and releases whole blocks past the
  // new end, deepest first. Never writes K/V. kInvalidArgument unless 0 <= length <= Length(seq).
  absl::Status Truncate(SeqId seq, int64_t length);

  // Releases every block of `seq`; cached prefix blocks become evictable, deepest first.
  absl::Status Free(SeqId seq);

  // Frees every sequence and empties the prefix cache. Counters in Stats() keep counting.
  void Clear();

  bool Contains(SeqId seq) const;
  int64_t num_sequences() const;
  // Live sequence ids, oldest slot first.
  std::vector<SeqId> SequenceIds() const;
  absl::StatusOr<int64_t> Length(SeqId seq) const;
  // First position the sequence may write (see the class comment).
  absl::StatusOr<int64_t> WritableFrom(SeqId seq) const;
  // The block table; valid until the sequence next changes.
  absl::StatusOr<absl::Span<const BlockId>> BlockTable(SeqId seq) const;
  // Token ids of every position. kFailedPrecondition when some were reserved without ids.
  absl::StatusOr<std::vector<int32_t>> Tokens(SeqId seq) const;

  // --- K/V -------------------------------------------------------------------------------------

  // Writes K and V of one layer for positions [start, start + n), where n = k.size() / (kv heads *
  // head_dim); k and v are [n][num_kv_heads][head_dim] f32, converted to the storage dtype.
  // REQUIRES: writable_from <= start and start + n <= length.
  absl::Status WriteKv(SeqId seq, int32_t layer, int64_t start, absl::Span<const float> k,
                       absl::Span<const float> v);
  // Simple-cache-style append: reserves n tokens and writes every layer. k and v are
  // [num_layers][n][num_kv_heads][head_dim]; tokens is empty or holds n ids. All-or-nothing.
  absl::Status AppendKv(SeqId seq, absl::Span<const float> k, absl::Span<const float> v,
                        absl::Span<const int32_t> tokens = {});
  // Copies K and V of positions [start, start + n) of one layer out as f32
  // [n][num_kv_heads][head_dim]. For tests and debugging: kernels read pages through a view.
  absl::Status ReadKv(SeqId seq, int32_t layer, int64_t start, int64_t n, absl::Span<float> k,
                      absl::Span<float> v) const;
  // Calls visit(position, kv_head, k_row, v_row) for every position and kv head of one layer, in
  // position order, with pointers to head_dim elements of the storage dtype in place: no copy.
  using KvVisitor =
      absl::FunctionRef<void(int64_t position, int32_t kv_head, const std::byte* k_row,
                             const std::byte* v_row)>;
  absl::Status VisitKv(SeqId seq, int32_t layer, KvVisitor visit) const;

  // A view of `seqs` (in that order) for kernels; tables are written into `storage`.
  absl::StatusOr<PagedKvView> MakeView(absl::Span<const SeqId> seqs,
                                       PagedKvViewStorage* storage) const;

  // --- Serialization (serialization.cc) -------------------------------------------------------

  // A versioned, checksummed payload of one sequence: model shape, block size, dtype, salt,
  // length, token ids when known, and K/V of every layer. Cost: O(length * bytes per token).
  // kFailedPrecondition on a metadata-only cache.
  absl::StatusOr<std::string> Serialize(SeqId seq) const;
  // A new sequence holding the payload's tokens and K/V, in fresh blocks. Every field is checked
  // against this cache (shape, dtype, max_seq_len) and the checksum before anything changes:
  // kInvalidArgument naming the field otherwise; kResourceExhausted when the blocks are not there.
  // The block size may differ from this cache's: positions are re-blocked.
  absl::StatusOr<SeqId> Restore(absl::string_view payload);

  // --- Accounting ------------------------------------------------------------------------------

  // Cost: O(num_blocks + block-table entries).
  CacheStats Stats() const;
  // Recounts every invariant above; kInternal naming the first violation. O(blocks + entries).
  absl::Status CheckInvariants() const;

 private:
  friend class PagedKvCacheTestPeer;

  struct Sequence {
    std::vector<BlockId> blocks;
    int64_t length = 0;
    int64_t writable_from = 0;
    uint64_t salt = 0;
    uint64_t batch_stamp = 0;  // Last ReserveBatch that named it: catches duplicates.
    int64_t planned_blocks = 0;  // Blocks that batch takes for it (PlanReserve's count).
    uint32_t generation = 0;
    // Leading blocks registered in the prefix index, and whether the next one may still be.
    int32_t chain_blocks = 0;
    bool chain_open = true;
    bool tokens_known = true;
    bool live = false;
    // The partial tail block may be shared (after Fork or Truncate) or may hold a prefix key
    // (after Truncate into a cached block). While false, the tail is known to be private and
    // uncached, and a reservation touches nothing but this struct and the pool's free list.
    bool tail_needs_check = false;
  };
  using BlockHashFn = uint64_t (*)(uint64_t parent_key, absl::Span<const int32_t> tokens,
                                   uint64_t salt);

  explicit PagedKvCache(std::unique_ptr<BlockPool> pool);

  // The bodies of the public calls of the same name, for callers that hold mu_.
  absl::Status ReserveBatchLocked(absl::Span<const ReserveRequest> requests);
  absl::Status FreeLocked(SeqId seq);
  absl::StatusOr<std::vector<int32_t>> TokensLocked(SeqId seq) const;
  std::vector<SeqId> SequenceIdsLocked() const;

  // A SeqId holds a slot of slots_ in its low kSlotBits bits and the slot's generation above.
  static constexpr int kSlotBits = 32;
  static SeqId MakeId(uint32_t slot, uint32_t generation) {
    return static_cast<SeqId>((uint64_t{generation} << kSlotBits) | slot);
  }
  static uint32_t SlotOf(SeqId seq) {
    return static_cast<uint32_t>(static_cast<uint64_t>(seq) & ((uint64_t{1} << kSlotBits) - 1));
  }
  // The live sequence `seq` names, or null. Inline: every request of a decode step looks one up.
  Sequence* Find(SeqId seq) { return const_cast<Sequence*>(std::as_const(*this).Find(seq)); }
  const Sequence* Find(SeqId seq) const {
    if (seq < 0) return nullptr;
    const uint32_t slot = SlotOf(seq);
    const uint64_t generation = static_cast<uint64_t>(seq) >> kSlotBits;
    if (slot >= slots_.size()) return nullptr;
    const Sequence& s = slots_[slot];
    return s.live && s.generation == generation ? &s : nullptr;
  }
  absl::StatusOr<Sequence*> Get(SeqId seq);
  absl::StatusOr<const Sequence*> Get(SeqId seq) const;
  SeqId NewSlot();
  absl::Status CheckStorage(absl::string_view op) const;
  absl::Status CheckLayer(int32_t layer) const;

  // The blocks a reservation takes (new ones plus a tail copy), or -1 when it is invalid:
  // ReserveError then says why.
  int64_t PlanReserve(const Sequence& seq, int64_t num_tokens,
                      absl::Span<const int32_t> tokens) const;
  absl::Status ReserveError(SeqId id, const Sequence& seq, int64_t num_tokens,
                            absl::Span<const int32_t> tokens) const;
  // Slots in seq's blocks: blocks * block_size.
  int64_t Capacity(const Sequence& seq) const {
    return static_cast<int64_t>(seq.blocks.size()) * block_size_;
  }
  // Takes each sequence's planned_blocks from the pool (the caller checked num_available()) into
  // *out, in order, in runs that continue the sequence's last block where they can
  // (BlockPool::AllocateRun), so that a growing sequence's pages form runs.
  void AllocateBlocks(absl::Span<Sequence* const> seqs, std::vector<BlockId>* out);
  // Carries out a planned reservation, taking its new blocks (tail copy first) from the front
  // of `fresh`; cannot fail. Most of a decode step's reservations only lengthen the sequence:
  // those are done here, the rest by CommitReserveSlow.
  void CommitReserve(Sequence& seq, int64_t num_tokens, absl::Span<const int32_t> tokens,
                     absl::Span<const BlockId>& fresh) {
    if (tokens.empty() && !seq.tail_needs_check && seq.length + num_tokens <= Capacity(seq)) {
      if (num_tokens > 0) seq.tokens_known = false;
      seq.length += num_tokens;
      return;
    }
    CommitReserveSlow(seq, num_tokens, tokens, fresh);
  }
  void CommitReserveSlow(Sequence& seq, int64_t num_tokens, absl::Span<const int32_t> tokens,
                         absl::Span<const BlockId>& fresh);
  // A ReserveBatch's plan: its sequences in request order, those of them that take blocks (in
  // a decode step, about one in block_size), how many blocks they take in all, and, once
  // AllocateBlocks has taken them from the pool, those blocks.
  struct BatchPlan {
    std::vector<Sequence*> seqs;
    std::vector<Sequence*> growing;
    int64_t needed = 0;
    std::vector<BlockId> fresh;
  };
  // Looks up and validates every request of a batch into *plan, marking each sequence with this
  // batch's stamp. With `shared`, kAborted (nothing changed but stamps) when a request needs the
  // exclusive lock.
  absl::Status PlanBatch(absl::Span<const ReserveRequest> requests, bool shared, BatchPlan* plan);
  absl::Status NotEnoughBlocksForBatch(absl::Span<const ReserveRequest> requests,
                                       int64_t needed) const;
  // The decode-step path under the shared lock: every request touches only its own sequence
  // and new blocks, which are taken all at once under pool_mu_, so the batch stays
  // all-or-nothing. nullopt, with nothing changed, when some request needs the exclusive lock.
  std::optional<absl::Status> ReserveBatchShared(absl::Span<const ReserveRequest> requests);
  absl::Status NotEnoughBlocks(int64_t needed, absl::string_view what) const;
  void RegisterFullBlocks(Sequence& seq);
  // The K (or V) row of (layer, position, kv head): head_dim elements of the storage dtype.
  std::byte* Row(const Sequence& seq, int32_t layer, bool is_value, int64_t pos,
                 int32_t kv_head) const;
  void WriteRows(const Sequence& seq, int32_t layer, int64_t start, int64_t n, const float* k,
                 const float* v);
  void ReleaseBlocks(Sequence& seq, size_t keep);

  // Exclusive for calls that change the sequence table or other sequences' blocks, shared for
  // the rest; a ReserveBatch whose sequences have private, uncached tails, and a Truncate,
  // change only their own sequences and take or give back blocks under pool_mu_.
  mutable std::shared_mutex mu_;
  // Guards the pool while mu_ is held shared (ReserveBatchShared's allocations, Truncate's
  // releases).
  std::mutex pool_mu_;
  std::unique_ptr<BlockPool> pool_;
  const int64_t block_size_;
  const int64_t max_seq_len_;
  const bool prefix_caching_;
  std::vector<Sequence> slots_;
  // Under the exclusive lock: ReserveBatch's plan, reused.
  BatchPlan batch_scratch_;
  std::vector<uint32_t> free_slots_;
  int64_t num_live_ = 0;
  std::atomic<uint64_t> batch_counter_{0};
  BlockHashFn block_hash_;

  int64_t prefix_queries_ = 0;
  int64_t prefix_hits_ = 0;
  int64_t prefix_query_tokens_ = 0;
  int64_t prefix_hit_tokens_ = 0;
  int64_t cow_copies_ = 0;
};

}  // namespace pagedkv

#endif  // PAGEDKV_PAGED_KV_CACHE_H_

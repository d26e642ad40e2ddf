// BlockPool: the arena of K/V pages, their reference counts, the free list and the eviction order
// of cached prefix blocks.
#ifndef PAGEDKV_BLOCK_POOL_H_
#define PAGEDKV_BLOCK_POOL_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "pagedkv/config.h"

namespace pagedkv {

// Counts of the pool at one moment. free + evictable + used == num_blocks.
struct PoolStats {
  int32_t num_blocks = 0;
  int32_t free_blocks = 0;       // Hold nothing; handed out first.
  int32_t evictable_blocks = 0;  // Reference count 0 but hold a cached prefix; LRU-evicted.
  int32_t used_blocks = 0;       // Held by at least one block table.
  int32_t cached_blocks = 0;     // Registered in the prefix index (used or evictable).
  int64_t block_bytes = 0;       // K and V bytes one block id names, all layers.
  int64_t arena_bytes = 0;       // Bytes allocated for K/V; 0 when metadata-only.
  int64_t evictions = 0;         // Cached blocks reused for something else, since creation.
  // Of those, cached blocks dropped because a block before them in their prefix was: no lookup
  // can reach them any more, so they are freed at once.
  int64_t dropped_extensions = 0;
};

// The prefix-index entry of a registered block.
struct CachedBlockInfo {
  uint64_t key = 0;                  // Chained hash of (parent key, token ids, salt).
  uint64_t registration = 0;         // Unique per registration, never reused; > 0.
  uint64_t parent_registration = 0;  // `registration` of the block before it; 0 for a first block.
  uint64_t salt = 0;                 // Tenant salt; blocks of different salts never match.
  BlockId parent = kNoBlock;         // The registered block before it; kNoBlock for a first block.
};

// Owns every K/V page of a cache. Block ids name the same token slots in every layer.
//
// Memory layout: one arena, allocated once and 2 MiB aligned, so addresses are stable for the
// pool's whole life. Per layer a K pool then a V pool, each of the storage dtype and laid out
//   [num_kv_heads][num_blocks][block_size][head_dim]  (PageLayout::kHeadMajor) or
//   [num_blocks][num_kv_heads][block_size][head_dim]  (PageLayout::kBlockMajor),
// so one (layer, block, kv head) page is one contiguous run of block_size * head_dim elements;
// with kHeadMajor a KV head's pages of consecutive block ids are adjacent too, and a sequence
// whose blocks were handed out in order is read, head by head, as one run (see view.h).
// Beside the arena, each block keeps the token id of each of its slots.
//
// Invariants (CheckInvariants() recounts them):
//   1. free + evictable + used == num_blocks; each block is in exactly one of the three states.
//   2. used <=> ref_count > 0; the free stack holds exactly the free blocks (free_pos_ names
//      each one's place), the LRU list exactly the evictable ones.
//   3. ref_count[b] == number of block-table entries naming b (checked against the caller's count).
//   4. evictable => registered; free => not registered; the key index maps each registered key
//      to its block and nothing else.
//   5. a registered block's parent is registered, under the registration it records, and lists
//      it among its children: dropping a block's key drops its extensions' keys too.
//
// Thread safety: none; the owner (PagedKvCache) serializes calls.
class BlockPool {
 public:
  // Allocates the arena (none with config.metadata_only). kInvalidArgument for a bad config,
  // kResourceExhausted when the arena cannot be allocated.
  static absl::StatusOr<std::unique_ptr<BlockPool>> Create(const CacheConfig& config);
  ~BlockPool();
  BlockPool(const BlockPool&) = delete;
  BlockPool& operator=(const BlockPool&) = delete;

  const CacheConfig& config() const { return config_; }
  int32_t num_blocks() const { return num_blocks_; }
  int32_t num_free() const { return static_cast<int32_t>(free_stack_.size()); }
  int32_t num_evictable() const { return num_evictable_; }
  // Blocks an allocation can still get: free plus evictable.
  int32_t num_available() const { return num_free() + num_evictable_; }
  bool has_storage() const { return arena_ != nullptr; }

  // Hands out one block with reference count 1, O(1). Takes the most recently freed free block
  // (warm in cache); only when none is free, evicts the least recently used evictable block and
  // drops its prefix key. With EvictionOrder::kSweep, AllocateRun(kNoBlock, 1) instead.
  // kResourceExhausted when no block is free or evictable; nothing changes then.
  absl::StatusOr<BlockId> Allocate();
  // The same, returning kNoBlock instead of an error: for hot paths that checked
  // num_available() first.
  BlockId TryAllocate();
  // Hands out between 1 and n blocks of consecutive ids, appended to *out, for a sequence whose
  // last block is prev (kNoBlock: none), so that its pages form a run that head-major pools let
  // decode stream as one array (BM_DecodePageRun: 2,048-token sequences from DRAM 1.46-1.66x as
  // fast as one run as in scattered pages). The blocks are, in this order of preference:
  //   - prev + 1 and the free blocks after it;
  //   - the most recently freed block and the free blocks after it;
  //   - when no block is free, the next blocks in LRU order, as many as asked while their ids
  //     run on from the head's, up or down, one by one (a sequence's cached blocks enter that
  //     order deepest first): the very blocks Allocate would evict one by one, so a prefix still
  //     never goes before its extensions.
  // With EvictionOrder::kSweep:
  //   - prev + 1 and the blocks after it, while they are free or evictable with no chance left
  //     (each release of a cached block gives it one, up to 3);
  //   - else the first such block from the cursor on, and the ones after it. The cursor takes a
  //     chance from each evictable block it passes and, after a new sequence's first run (prev
  //     kNoBlock), skips 16 blocks, which that sequence can grow into.
  //   A block evicted out of its prefix's order takes its cached extensions' keys along
  //   (DropKey).
  // Returns how many were appended; 0 when none is free or evictable. O(returned), or with
  // kSweep O(returned + blocks the cursor passes): amortized O(1) a block, at most 4 laps.
  int64_t AllocateRun(BlockId prev, int64_t n, std::vector<BlockId>* out);
  // Adds one reference, O(1). An evictable block (a prefix hit) leaves the LRU order.
  // REQUIRES: b is used or evictable.
  void Acquire(BlockId b);
  // Drops one reference, O(1). At zero the block becomes evictable (at the LRU's most recent end)
  // if it is registered, free otherwise. REQUIRES: ref_count(b) > 0.
  void Release(BlockId b);
  int32_t ref_count(BlockId b) const { return ref_count_[static_cast<size_t>(b)]; }

  // Prefix index. Registers used block b under `key` as the extension of `parent` (kNoBlock for a
  // first block). Returns false, changing nothing, when the key is already taken.
  // REQUIRES: b used and not registered; parent kNoBlock or registered.
  bool Register(BlockId b, uint64_t key, BlockId parent, uint64_t salt);
  // Drops b's key, and those of its extensions (which no lookup could reach any more): evictable
  // ones become free. REQUIRES: b used and registered.
  void Unregister(BlockId b);
  // The block registered under `key`, or kNoBlock.
  BlockId Lookup(uint64_t key) const;
  // b's index entry, or nullptr when b is not registered.
  const CachedBlockInfo* cached(BlockId b) const;

  // Token ids of b's block_size slots (unspecified for slots no sequence filled).
  int32_t* tokens(BlockId b) { return &tokens_[Index(b) * config_.block_size]; }
  const int32_t* tokens(BlockId b) const { return &tokens_[Index(b) * config_.block_size]; }

  // Start of the (layer, K or V, block, kv head) page: [block_size][head_dim].
  // REQUIRES: has_storage().
  std::byte* PageData(int32_t layer, bool is_value, BlockId b, int32_t kv_head) const {
    const int64_t pool = 2 * int64_t{layer} + (is_value ? 1 : 0);
    const int64_t page = head_major_
                             ? (pool * config_.num_kv_heads + kv_head) * num_blocks_ + b
                             : (pool * num_blocks_ + b) * config_.num_kv_heads + kv_head;
    return arena_ + page * page_bytes_;
  }
  std::byte* arena() const { return arena_; }
  // Bytes of one page: one block's slots of one KV head in one pool.
  int64_t page_bytes() const { return page_bytes_; }

  // Copies token ids and, with storage, the K/V of every layer for slots [0, num_slots) of `src`
  // into `dst`. Cost: O(num_slots * layers * heads * head_dim).
  void CopySlots(BlockId src, BlockId dst, int32_t num_slots);

  // Drops every key and returns every block to free. REQUIRES: no block is used.
  void Reset();

  PoolStats stats() const;
  // Recounts invariants 1-4; `expected_ref_counts[b]` is the caller's count of table entries
  // naming b. kInternal naming the first violation.
  absl::Status CheckInvariants(absl::Span<const int32_t> expected_ref_counts) const;

 private:
  enum class State : uint8_t { kFree, kEvictable, kUsed };

  BlockPool(const CacheConfig& config, int32_t num_blocks, std::byte* arena, int64_t arena_bytes);
  static size_t Index(BlockId b) { return static_cast<size_t>(b); }
  void LruPushBack(BlockId b);
  void LruUnlink(BlockId b);
  // Drops b's key and, depth first, those of every registered extension of it; extensions that
  // were evictable become free.
  void DropKey(BlockId b);
  void LinkChild(BlockId parent, BlockId child);
  void UnlinkChild(BlockId child);
  // Under AddressSanitizer, free blocks' K/V pages are poisoned, so a stale view into a freed
  // block is reported at the first access; elsewhere this does nothing.
  void PoisonPages(BlockId b, bool poison) const;
  void Evict(BlockId b);  // Drops an evictable block's LRU place and key, for reuse.
  // Takes a free or evictable block for use.
  void Claim(BlockId b);
  void PushFree(BlockId b);
  // Takes free block b off the free stack, wherever it is, O(1).
  void RemoveFree(BlockId b);
  void MarkUsed(BlockId b);
  // AllocateRun for EvictionOrder::kSweep.
  int64_t SweepRun(BlockId prev, int64_t n, std::vector<BlockId>* out);
  // Free, or evictable with no chance left.
  bool SweepTakes(BlockId b) const {
    return state_[Index(b)] == State::kFree ||
           (state_[Index(b)] == State::kEvictable && chances_[Index(b)] == 0);
  }

  const CacheConfig config_;
  const int32_t num_blocks_;
  const int64_t page_bytes_;
  const bool head_major_;  // config_.ResolvedPageLayout() == kHeadMajor.
  std::byte* const arena_;  // Owned; nullptr when metadata-only.
  const int64_t arena_bytes_;

  std::vector<int32_t> ref_count_;
  std::vector<State> state_;
  std::vector<BlockId> free_stack_;  // Top is the most recently freed.
  std::vector<int32_t> free_pos_;    // Index of each free block in free_stack_.
  // Evictable blocks as a doubly linked list through two arrays: head is least recently used.
  std::vector<BlockId> lru_prev_;
  std::vector<BlockId> lru_next_;
  BlockId lru_head_ = kNoBlock;
  BlockId lru_tail_ = kNoBlock;
  int32_t num_evictable_ = 0;

  std::vector<CachedBlockInfo> cached_;  // registration == 0: not registered.
  // Each registered block's registered extensions, as a doubly linked list through siblings.
  std::vector<BlockId> first_child_;
  std::vector<BlockId> next_sibling_;
  std::vector<BlockId> prev_sibling_;
  std::vector<BlockId> drop_stack_;  // DropKey's scratch.
  std::vector<BlockId> victims_;     // AllocateRun's scratch.
  absl::flat_hash_map<uint64_t, BlockId> key_to_block_;
  uint64_t next_registration_ = 1;
  int64_t evictions_ = 0;
  int64_t dropped_extensions_ = 0;

  std::vector<int32_t> tokens_;  // [num_blocks][block_size]

  // EvictionOrder::kSweep: where the cursor goes on, and each cached block's chances: one more
  // per release, up to kMaxChances; the cursor takes one each time it passes, and the block at
  // zero. Against exact LRU, with at most 1 chance (the classic CLOCK) pagedkv-sim's small
  // workloads lost 5-10% of their prefix hits, with 2 3%; with 3 they lost at most 0.8%, or
  // gained 3% in the tightest pool.
  static constexpr int kMaxChances = 3;
  const bool sweep_;
  BlockId cursor_ = 0;
  std::vector<uint8_t> chances_;
};

}  // namespace pagedkv

#endif  // PAGEDKV_BLOCK_POOL_H_

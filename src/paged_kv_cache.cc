#include "pagedkv/paged_kv_cache.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/hash/hash.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace pagedkv {
namespace {

// Chained block key: the parent's key, the salt and the block's token ids. absl::Hash is seeded
// per process, which is fine for an in-memory index; hits are confirmed token by token anyway.
uint64_t DefaultBlockHash(uint64_t parent_key, absl::Span<const int32_t> tokens, uint64_t salt) {
  return absl::HashOf(parent_key, salt, tokens);
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

absl::StatusOr<std::unique_ptr<PagedKvCache>> PagedKvCache::Create(const CacheConfig& config) {
  absl::StatusOr<std::unique_ptr<BlockPool>> pool = BlockPool::Create(config);
  if (!pool.ok()) return pool.status();
  return std::unique_ptr<PagedKvCache>(new PagedKvCache(*std::move(pool)));
}

PagedKvCache::PagedKvCache(std::unique_ptr<BlockPool> pool)
    : pool_(std::move(pool)),
      block_size_(pool_->config().block_size),
      max_seq_len_(pool_->config().max_seq_len),
      prefix_caching_(pool_->config().enable_prefix_caching),
      block_hash_(&DefaultBlockHash) {}

PagedKvCache::~PagedKvCache() = default;

absl::StatusOr<PagedKvCache::Sequence*> PagedKvCache::Get(SeqId seq) {
  if (Sequence* s = Find(seq)) return s;
  return absl::NotFoundError(absl::StrCat("sequence ", seq, " is unknown or was freed"));
}

absl::StatusOr<const PagedKvCache::Sequence*> PagedKvCache::Get(SeqId seq) const {
  if (const Sequence* s = Find(seq)) return s;
  return absl::NotFoundError(absl::StrCat("sequence ", seq, " is unknown or was freed"));
}

SeqId PagedKvCache::NewSlot() {
  uint32_t slot;
  if (!free_slots_.empty()) {
    slot = free_slots_.back();
    free_slots_.pop_back();
  } else {
    slot = static_cast<uint32_t>(slots_.size());
    slots_.emplace_back();
  }
  Sequence& s = slots_[slot];
  const uint32_t generation = s.generation + 1;  // Ids of earlier occupants stay dead.
  s = Sequence{};
  s.generation = generation;
  s.live = true;
  ++num_live_;
  return MakeId(slot, generation);
}

absl::StatusOr<NewSequence> PagedKvCache::CreateSequence(absl::Span<const int32_t> prompt,
                                                         uint64_t salt) {
  std::unique_lock lock(mu_);
  const CacheConfig& config = pool_->config();
  if (static_cast<int64_t>(prompt.size()) > config.max_seq_len) {
    return absl::InvalidArgumentError(absl::StrCat("prompt of ", prompt.size(),
                                                   " tokens exceeds max_seq_len ",
                                                   config.max_seq_len));
  }
  std::vector<BlockId> hits;
  if (config.enable_prefix_caching && !prompt.empty()) {
    const size_t bs = static_cast<size_t>(config.block_size);
    // Leave the last prompt token to compute: the engine needs its logits.
    const size_t max_blocks = (prompt.size() - 1) / bs;
    uint64_t parent_key = 0;
    uint64_t parent_registration = 0;
    for (size_t i = 0; i < max_blocks; ++i) {
      absl::Span<const int32_t> block_tokens = prompt.subspan(i * bs, bs);
      const uint64_t key = block_hash_(parent_key, block_tokens, salt);
      const BlockId b = pool_->Lookup(key);
      if (b == kNoBlock) break;
      const CachedBlockInfo& info = *pool_->cached(b);
      // Confirm: same salt, same parent chain, same tokens. A hash collision stops here.
      if (info.salt != salt || info.parent_registration != parent_registration ||
          !std::equal(block_tokens.begin(), block_tokens.end(), pool_->tokens(b))) {
        break;
      }
      hits.push_back(b);
      parent_key = key;
      parent_registration = info.registration;
    }
    ++prefix_queries_;
    prefix_query_tokens_ += static_cast<int64_t>(prompt.size());
    if (!hits.empty()) ++prefix_hits_;
    prefix_hit_tokens_ += static_cast<int64_t>(hits.size() * bs);
  }
  const SeqId id = NewSlot();
  Sequence& s = *Find(id);
  for (BlockId b : hits) pool_->Acquire(b);
  s.length = static_cast<int64_t>(hits.size()) * config.block_size;
  s.writable_from = s.length;
  s.salt = salt;
  s.chain_blocks = static_cast<int32_t>(hits.size());
  s.blocks = std::move(hits);
  return NewSequence{id, s.length};
}

absl::Status PagedKvCache::NotEnoughBlocks(int64_t needed, absl::string_view what) const {
  return absl::ResourceExhaustedError(absl::StrCat(
      what, " needs ", needed, " blocks but only ", pool_->num_available(), " of ",
      pool_->num_blocks(), " are free or evictable (", pool_->num_free(), " free, ",
      pool_->num_evictable(), " evictable)"));
}

inline int64_t PagedKvCache::PlanReserve(const Sequence& seq, int64_t num_tokens,
                                         absl::Span<const int32_t> tokens) const {
  if (num_tokens < 0 || (!tokens.empty() && static_cast<int64_t>(tokens.size()) != num_tokens) ||
      num_tokens > max_seq_len_ - seq.length) {
    return -1;
  }
  // Divisions only when the tail block cannot take every new token.
  const int64_t room = Capacity(seq) - seq.length;
  const int64_t new_blocks = num_tokens <= room ? 0 : CeilDiv(num_tokens - room, block_size_);
  const bool copy_tail =
      num_tokens > 0 && seq.tail_needs_check && room > 0 && pool_->ref_count(seq.blocks.back()) > 1;
  return new_blocks + (copy_tail ? 1 : 0);
}

absl::Status PagedKvCache::ReserveError(SeqId id, const Sequence& seq, int64_t num_tokens,
                                        absl::Span<const int32_t> tokens) const {
  if (num_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot reserve ", num_tokens, " tokens for sequence ", id));
  }
  if (!tokens.empty() && static_cast<int64_t>(tokens.size()) != num_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("reserving ", num_tokens,
                                                   " tokens for sequence ", id, " with ",
                                                   tokens.size(), " token ids"));
  }
  return absl::InvalidArgumentError(absl::StrCat("sequence ", id, " of length ", seq.length,
                                                 " cannot grow by ", num_tokens,
                                                 " tokens past max_seq_len ", max_seq_len_));
}

void PagedKvCache::AllocateBlocks(absl::Span<Sequence* const> seqs, std::vector<BlockId>* out) {
  out->clear();
  for (Sequence* s : seqs) {
    // A tail copy, when planned, comes first and lands after the tail instead of in its place:
    // one run broken per copy-on-write.
    BlockId last = s->blocks.empty() ? kNoBlock : s->blocks.back();
    for (int64_t left = s->planned_blocks; left > 0;) {
      const int64_t got = pool_->AllocateRun(last, left, out);
      if (got == 0) return;  // Not reached: the caller checked num_available().
      left -= got;
      last = out->back();
    }
  }
}

void PagedKvCache::CommitReserveSlow(Sequence& seq, int64_t num_tokens,
                                     absl::Span<const int32_t> tokens,
                                     absl::Span<const BlockId>& fresh) {
  const auto take = [&fresh] {
    const BlockId b = fresh.front();
    fresh.remove_prefix(1);
    return b;
  };
  if (num_tokens == 0) return;
  const int64_t bs = block_size_;
  int64_t capacity = Capacity(seq);
  if (seq.tail_needs_check) {
    seq.tail_needs_check = false;
    if (capacity > seq.length) {
      const BlockId tail = seq.blocks.back();
      if (pool_->ref_count(tail) > 1) {
        // Copy-on-write: the writer gets a private copy, the others keep the original.
        const BlockId copy = take();
        pool_->CopySlots(tail, copy, static_cast<int32_t>(bs - (capacity - seq.length)));
        pool_->Release(tail);
        seq.blocks.back() = copy;
        ++cow_copies_;
      } else if (pool_->cached(tail) != nullptr) {
        // A cached block cut short by Truncate and now held by this sequence alone: its slots
        // are about to change, so it stops naming its prefix.
        pool_->Unregister(tail);
      }
    }
  }
  const int64_t new_length = seq.length + num_tokens;
  for (; capacity < new_length; capacity += bs) seq.blocks.push_back(take());
  if (tokens.empty()) {
    seq.tokens_known = false;
  } else if (num_tokens == 1 && seq.tokens_known) {
    // A decode step's one token: a store, not a copy call.
    pool_->tokens(seq.blocks[static_cast<size_t>(seq.length / bs)])[seq.length % bs] = tokens[0];
  } else if (seq.tokens_known) {
    for (int64_t i = 0; i < num_tokens;) {
      const int64_t pos = seq.length + i;
      const int64_t slot = pos % bs;
      const int64_t run = std::min(num_tokens - i, bs - slot);
      std::copy_n(tokens.data() + i, run, pool_->tokens(seq.blocks[static_cast<size_t>(pos / bs)]) + slot);
      i += run;
    }
  }
  seq.length = new_length;
  if (prefix_caching_ && seq.tokens_known) RegisterFullBlocks(seq);
}

void PagedKvCache::RegisterFullBlocks(Sequence& seq) {
  // Blocks [chain_blocks, length / block_size) are full and not yet in the index.
  while (seq.chain_open && (int64_t{seq.chain_blocks} + 1) * block_size_ <= seq.length) {
    const size_t i = static_cast<size_t>(seq.chain_blocks);
    const BlockId b = seq.blocks[i];
    uint64_t parent_key = 0;
    uint64_t parent_registration = 0;
    if (i > 0) {
      const CachedBlockInfo& parent = *pool_->cached(seq.blocks[i - 1]);
      parent_key = parent.key;
      parent_registration = parent.registration;
    }
    if (const CachedBlockInfo* info = pool_->cached(b); info != nullptr) {
      // Already registered (shared with a sequence that registered it): extend the chain only
      // through it when it extends this sequence's parent block.
      if (info->parent_registration != parent_registration || info->salt != seq.salt) {
        seq.chain_open = false;
        return;
      }
    } else {
      const uint64_t key = block_hash_(
          parent_key, absl::MakeConstSpan(pool_->tokens(b), static_cast<size_t>(block_size_)),
          seq.salt);
      if (!pool_->Register(b, key, i > 0 ? seq.blocks[i - 1] : kNoBlock, seq.salt)) {
        // Another block holds the key (the same prefix computed twice, or a collision): this
        // sequence's later blocks stay out of the index.
        seq.chain_open = false;
        return;
      }
    }
    ++seq.chain_blocks;
  }
}

absl::StatusOr<int64_t> PagedKvCache::Reserve(SeqId seq, int64_t num_tokens) {
  const ReserveRequest request{seq, num_tokens, {}};
  if (absl::Status s = ReserveBatch(absl::MakeConstSpan(&request, 1)); !s.ok()) return s;
  std::shared_lock lock(mu_);
  return Find(seq)->length - num_tokens;
}

absl::StatusOr<int64_t> PagedKvCache::Reserve(SeqId seq, absl::Span<const int32_t> tokens) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  const ReserveRequest request{seq, n, tokens};
  if (absl::Status s = ReserveBatch(absl::MakeConstSpan(&request, 1)); !s.ok()) return s;
  std::shared_lock lock(mu_);
  return Find(seq)->length - n;
}

absl::Status PagedKvCache::ReserveBatch(absl::Span<const ReserveRequest> requests) {
  if (std::optional<absl::Status> done = ReserveBatchShared(requests)) return *done;
  std::unique_lock lock(mu_);
  return ReserveBatchLocked(requests);
}

absl::Status PagedKvCache::PlanBatch(absl::Span<const ReserveRequest> requests, bool shared,
                                     BatchPlan* plan) {
  const uint64_t stamp = batch_counter_.fetch_add(1, std::memory_order_relaxed) + 1;
  plan->seqs.clear();
  plan->growing.clear();
  plan->needed = 0;
  for (const ReserveRequest& r : requests) {
    Sequence* s = Find(r.seq);
    if (s == nullptr) {
      return absl::NotFoundError(absl::StrCat("sequence ", r.seq, " is unknown or was freed"));
    }
    // A tail that may be shared or cached, or token ids to register, reach beyond the
    // sequence's own state: the exclusive lock's business.
    if (shared && (s->tail_needs_check || (prefix_caching_ && !r.tokens.empty()))) {
      return absl::AbortedError("needs the exclusive lock");
    }
    if (s->batch_stamp == stamp) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence ", r.seq, " appears more than once in one ReserveBatch"));
    }
    s->batch_stamp = stamp;
    const int64_t blocks = PlanReserve(*s, r.num_tokens, r.tokens);
    if (blocks < 0) return ReserveError(r.seq, *s, r.num_tokens, r.tokens);
    s->planned_blocks = blocks;
    plan->needed += blocks;
    plan->seqs.push_back(s);
    if (blocks > 0) plan->growing.push_back(s);
  }
  return absl::OkStatus();
}

absl::Status PagedKvCache::NotEnoughBlocksForBatch(absl::Span<const ReserveRequest> requests,
                                                   int64_t needed) const {
  return NotEnoughBlocks(
      needed, requests.size() == 1
                  ? absl::StrCat("reserving ", requests[0].num_tokens, " tokens for sequence ",
                                 requests[0].seq)
                  : absl::StrCat("reserving for ", requests.size(), " sequences"));
}

std::optional<absl::Status> PagedKvCache::ReserveBatchShared(
    absl::Span<const ReserveRequest> requests) {
  std::shared_lock lock(mu_);
  thread_local BatchPlan plan;
  if (absl::Status s = PlanBatch(requests, /*shared=*/true, &plan); !s.ok()) {
    if (absl::IsAborted(s)) return std::nullopt;
    return s;
  }
  {
    std::lock_guard pool_lock(pool_mu_);
    if (plan.needed > pool_->num_available()) {
      return NotEnoughBlocksForBatch(requests, plan.needed);
    }
    AllocateBlocks(plan.growing, &plan.fresh);
  }
  absl::Span<const BlockId> blocks(plan.fresh);
  for (size_t i = 0; i < requests.size(); ++i) {
    CommitReserve(*plan.seqs[i], requests[i].num_tokens, requests[i].tokens, blocks);
  }
  return absl::OkStatus();
}

absl::Status PagedKvCache::ReserveBatchLocked(absl::Span<const ReserveRequest> requests) {
  BatchPlan& plan = batch_scratch_;
  if (absl::Status s = PlanBatch(requests, /*shared=*/false, &plan); !s.ok()) return s;
  if (plan.needed > pool_->num_available()) {
    return NotEnoughBlocksForBatch(requests, plan.needed);
  }
  AllocateBlocks(plan.growing, &plan.fresh);
  absl::Span<const BlockId> blocks(plan.fresh);
  for (size_t i = 0; i < requests.size(); ++i) {
    CommitReserve(*plan.seqs[i], requests[i].num_tokens, requests[i].tokens, blocks);
  }
  // Forks in one batch that share a tail each planned a copy, but the last to commit holds
  // the tail alone by then and keeps it: its copy goes back.
  for (BlockId b : blocks) pool_->Release(b);
  return absl::OkStatus();
}

absl::StatusOr<SeqId> PagedKvCache::Fork(SeqId seq) {
  std::unique_lock lock(mu_);
  absl::StatusOr<Sequence*> parent = Get(seq);
  if (!parent.ok()) return parent.status();
  const SeqId id = NewSlot();  // May grow slots_: look the parent up again below.
  Sequence& child = *Find(id);
  Sequence& source = *Find(seq);
  source.writable_from = source.length;
  source.tail_needs_check = true;
  child.tail_needs_check = true;
  child.blocks = source.blocks;
  for (BlockId b : child.blocks) pool_->Acquire(b);
  child.length = source.length;
  child.writable_from = source.length;
  child.salt = source.salt;
  child.chain_blocks = source.chain_blocks;
  child.chain_open = source.chain_open;
  child.tokens_known = source.tokens_known;
  return id;
}

void PagedKvCache::ReleaseBlocks(Sequence& seq, size_t keep) {
  // Deepest first, so the LRU order evicts a prefix's extensions before the prefix itself.
  while (seq.blocks.size() > keep) {
    pool_->Release(seq.blocks.back());
    seq.blocks.pop_back();
  }
}

absl::Status PagedKvCache::Truncate(SeqId seq, int64_t length) {
  // Only this sequence and the pool change (releases under pool_mu_; a fork truncated at the
  // same time releases the blocks they share under it too): the shared lock suffices.
  std::shared_lock lock(mu_);
  absl::StatusOr<Sequence*> found = Get(seq);
  if (!found.ok()) return found.status();
  Sequence& s = **found;
  if (length < 0 || length > s.length) {
    return absl::InvalidArgumentError(absl::StrCat("cannot truncate sequence ", seq, " of length ",
                                                   s.length, " to ", length));
  }
  const int64_t bs = pool_->config().block_size;
  {
    std::lock_guard pool_lock(pool_mu_);
    ReleaseBlocks(s, static_cast<size_t>(CeilDiv(length, bs)));
  }
  s.length = length;
  s.writable_from = std::min(s.writable_from, length);
  s.tail_needs_check = true;
  const int64_t full = length / bs;
  if (full <= s.chain_blocks) {
    s.chain_blocks = static_cast<int32_t>(full);
    s.chain_open = true;
  }
  if (length == 0) s.tokens_known = true;
  return absl::OkStatus();
}

absl::Status PagedKvCache::Free(SeqId seq) {
  std::unique_lock lock(mu_);
  return FreeLocked(seq);
}

absl::Status PagedKvCache::FreeLocked(SeqId seq) {
  absl::StatusOr<Sequence*> found = Get(seq);
  if (!found.ok()) return found.status();
  Sequence& s = **found;
  ReleaseBlocks(s, 0);
  s.live = false;
  free_slots_.push_back(SlotOf(seq));
  --num_live_;
  return absl::OkStatus();
}

void PagedKvCache::Clear() {
  std::unique_lock lock(mu_);
  for (SeqId id : SequenceIdsLocked()) FreeLocked(id).IgnoreError();  // Live ids: cannot fail.
  pool_->Reset();
}

bool PagedKvCache::Contains(SeqId seq) const {
  std::shared_lock lock(mu_);
  return Find(seq) != nullptr;
}

int64_t PagedKvCache::num_sequences() const {
  std::shared_lock lock(mu_);
  return num_live_;
}

std::vector<SeqId> PagedKvCache::SequenceIds() const {
  std::shared_lock lock(mu_);
  return SequenceIdsLocked();
}

std::vector<SeqId> PagedKvCache::SequenceIdsLocked() const {
  std::vector<SeqId> ids;
  ids.reserve(static_cast<size_t>(num_live_));
  for (size_t slot = 0; slot < slots_.size(); ++slot) {
    if (slots_[slot].live) ids.push_back(MakeId(static_cast<uint32_t>(slot), slots_[slot].generation));
  }
  return ids;
}

absl::StatusOr<int64_t> PagedKvCache::Length(SeqId seq) const {
  std::shared_lock lock(mu_);
  absl::StatusOr<const Sequence*> s = Get(seq);
  if (!s.ok()) return s.status();
  return (*s)->length;
}

absl::StatusOr<int64_t> PagedKvCache::WritableFrom(SeqId seq) const {
  std::shared_lock lock(mu_);
  absl::StatusOr<const Sequence*> s = Get(seq);
  if (!s.ok()) return s.status();
  return (*s)->writable_from;
}

absl::StatusOr<absl::Span<const BlockId>> PagedKvCache::BlockTable(SeqId seq) const {
  std::shared_lock lock(mu_);
  absl::StatusOr<const Sequence*> s = Get(seq);
  if (!s.ok()) return s.status();
  return absl::MakeConstSpan((*s)->blocks);
}

absl::StatusOr<std::vector<int32_t>> PagedKvCache::Tokens(SeqId seq) const {
  std::shared_lock lock(mu_);
  return TokensLocked(seq);
}

absl::StatusOr<std::vector<int32_t>> PagedKvCache::TokensLocked(SeqId seq) const {
  absl::StatusOr<const Sequence*> found = Get(seq);
  if (!found.ok()) return found.status();
  const Sequence& s = **found;
  if (!s.tokens_known) {
    return absl::FailedPreconditionError(absl::StrCat(
        "sequence ", seq, " has positions reserved without token ids"));
  }
  const int64_t bs = pool_->config().block_size;
  std::vector<int32_t> tokens(static_cast<size_t>(s.length));
  for (int64_t pos = 0; pos < s.length; pos += bs) {
    std::copy_n(pool_->tokens(s.blocks[static_cast<size_t>(pos / bs)]),
                std::min(bs, s.length - pos), tokens.begin() + pos);
  }
  return tokens;
}

CacheStats PagedKvCache::Stats() const {
  // Every sequence and the pool: no ReserveBatch may run beside it.
  std::unique_lock lock(mu_);
  const CacheConfig& config = pool_->config();
  const int64_t bs = config.block_size;
  CacheStats stats;
  stats.pool = pool_->stats();
  stats.num_sequences = num_live_;
  // A block's filled slots are the most any holder uses; only shared blocks need the max.
  absl::flat_hash_map<BlockId, int32_t> shared_fill;
  int64_t entries = 0;
  for (const Sequence& s : slots_) {
    if (!s.live) continue;
    stats.logical_tokens += s.length;
    entries += static_cast<int64_t>(s.blocks.size());
    for (size_t i = 0; i < s.blocks.size(); ++i) {
      if (i == 0 || s.blocks[i] != s.blocks[i - 1] + 1) ++stats.table_runs;
      const int32_t f = static_cast<int32_t>(std::min<int64_t>(bs, s.length - int64_t(i) * bs));
      if (pool_->ref_count(s.blocks[i]) == 1) {
        stats.physical_tokens += f;
      } else {
        int32_t& most = shared_fill[s.blocks[i]];
        most = std::max(most, f);
      }
    }
  }
  for (const auto& [block, f] : shared_fill) stats.physical_tokens += f;
  const int64_t slots = int64_t{stats.pool.used_blocks} * bs;
  stats.utilization = slots > 0 ? static_cast<double>(stats.physical_tokens) / slots : 0.0;
  stats.tail_waste_tokens = slots - stats.physical_tokens;
  stats.blocks_saved_by_sharing = entries - stats.pool.used_blocks;
  stats.table_entries = entries;
  stats.prefix_queries = prefix_queries_;
  stats.prefix_hits = prefix_hits_;
  stats.prefix_query_tokens = prefix_query_tokens_;
  stats.prefix_hit_tokens = prefix_hit_tokens_;
  stats.cow_copies = cow_copies_;
  return stats;
}

absl::Status PagedKvCache::CheckInvariants() const {
  // Every sequence and the pool: no ReserveBatch may run beside it.
  std::unique_lock lock(mu_);
  const CacheConfig& config = pool_->config();
  std::vector<int32_t> refs(static_cast<size_t>(pool_->num_blocks()), 0);
  int64_t live = 0;
  for (size_t slot = 0; slot < slots_.size(); ++slot) {
    const Sequence& s = slots_[slot];
    if (!s.live) continue;
    ++live;
    const SeqId id = MakeId(static_cast<uint32_t>(slot), s.generation);
    auto fail = [id](auto&&... parts) {
      return absl::InternalError(absl::StrCat("sequence ", id, ": ", parts...));
    };
    if (s.length < 0 || s.length > config.max_seq_len) {
      return fail("length ", s.length, " outside [0, ", config.max_seq_len, "]");
    }
    if (static_cast<int64_t>(s.blocks.size()) != CeilDiv(s.length, config.block_size)) {
      return fail(s.blocks.size(), " blocks for length ", s.length);
    }
    if (s.writable_from < 0 || s.writable_from > s.length) {
      return fail("writable_from ", s.writable_from, " outside [0, ", s.length, "]");
    }
    if (s.chain_blocks < 0 || s.chain_blocks > s.length / config.block_size) {
      return fail("chain of ", s.chain_blocks, " blocks for length ", s.length);
    }
    for (size_t i = 0; i < s.blocks.size(); ++i) {
      const BlockId b = s.blocks[i];
      if (b < 0 || b >= pool_->num_blocks()) return fail("block ", b, " out of range");
      ++refs[static_cast<size_t>(b)];
      if (static_cast<int32_t>(i) < s.chain_blocks) {
        const CachedBlockInfo* info = pool_->cached(b);
        if (info == nullptr) return fail("chain block ", i, " (block ", b, ") is not registered");
        const uint64_t parent = i == 0 ? 0 : pool_->cached(s.blocks[i - 1])->registration;
        if (info->parent_registration != parent || info->salt != s.salt) {
          return fail("chain block ", i, " (block ", b, ") does not extend its parent");
        }
      }
    }
  }
  if (live != num_live_) {
    return absl::InternalError(absl::StrCat(live, " live sequences, counter says ", num_live_));
  }
  return pool_->CheckInvariants(refs);
}

}  // namespace pagedkv

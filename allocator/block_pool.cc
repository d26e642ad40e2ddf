#include "pagedkv/block_pool.h"

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "allocator/arena.h"
#include "pagedkv/dtype.h"

#if defined(__SANITIZE_ADDRESS__)
#define PAGEDKV_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PAGEDKV_ASAN 1
#endif
#endif
#if defined(PAGEDKV_ASAN)
#include <sanitizer/asan_interface.h>
#endif

namespace pagedkv {

absl::StatusOr<std::unique_ptr<BlockPool>> BlockPool::Create(const CacheConfig& config) {
  if (absl::Status s = config.Validate(); !s.ok()) return s;
  const int32_t num_blocks = config.ResolvedNumBlocks();
  std::byte* arena = nullptr;
  int64_t arena_bytes = 0;
  if (!config.metadata_only) {
    arena_bytes = int64_t{num_blocks} * config.BlockBytes();
    absl::StatusOr<std::byte*> allocated = internal::AllocateArena(arena_bytes);
    if (!allocated.ok()) return allocated.status();
    arena = *allocated;
  }
  return std::unique_ptr<BlockPool>(new BlockPool(config, num_blocks, arena, arena_bytes));
}

BlockPool::BlockPool(const CacheConfig& config, int32_t num_blocks, std::byte* arena,
                     int64_t arena_bytes)
    : config_(config),
      num_blocks_(num_blocks),
      page_bytes_(int64_t{config.block_size} * config.head_dim * DTypeSize(config.dtype)),
      head_major_(config.ResolvedPageLayout() == PageLayout::kHeadMajor),
      arena_(arena),
      arena_bytes_(arena_bytes),
      ref_count_(static_cast<size_t>(num_blocks), 0),
      state_(static_cast<size_t>(num_blocks), State::kFree),
      free_pos_(static_cast<size_t>(num_blocks), -1),
      lru_prev_(static_cast<size_t>(num_blocks), kNoBlock),
      lru_next_(static_cast<size_t>(num_blocks), kNoBlock),
      cached_(static_cast<size_t>(num_blocks)),
      first_child_(static_cast<size_t>(num_blocks), kNoBlock),
      next_sibling_(static_cast<size_t>(num_blocks), kNoBlock),
      prev_sibling_(static_cast<size_t>(num_blocks), kNoBlock),
      tokens_(static_cast<size_t>(num_blocks) * static_cast<size_t>(config.block_size), 0),
      sweep_(config.eviction_order == EvictionOrder::kSweep),
      chances_(sweep_ ? static_cast<size_t>(num_blocks) : 0, 0) {
  free_stack_.reserve(static_cast<size_t>(num_blocks));
  // Block 0 on top: a fresh pool hands out ids in increasing order.
  for (BlockId b = num_blocks - 1; b >= 0; --b) {
    PushFree(b);
    PoisonPages(b, true);
  }
}

void BlockPool::PushFree(BlockId b) {
  free_pos_[Index(b)] = static_cast<int32_t>(free_stack_.size());
  free_stack_.push_back(b);
}

void BlockPool::RemoveFree(BlockId b) {
  const size_t at = static_cast<size_t>(free_pos_[Index(b)]);
  const BlockId top = free_stack_.back();
  free_stack_[at] = top;
  free_pos_[Index(top)] = static_cast<int32_t>(at);
  free_stack_.pop_back();
  free_pos_[Index(b)] = -1;
  PoisonPages(b, false);
}

void BlockPool::Claim(BlockId b) {
  if (state_[Index(b)] == State::kFree) {
    RemoveFree(b);
  } else {
    Evict(b);
  }
  MarkUsed(b);
}

void BlockPool::MarkUsed(BlockId b) {
  if (sweep_) chances_[Index(b)] = 0;
  state_[Index(b)] = State::kUsed;
  ref_count_[Index(b)] = 1;
}

void BlockPool::PoisonPages([[maybe_unused]] BlockId b, [[maybe_unused]] bool poison) const {
#if defined(PAGEDKV_ASAN)
  if (arena_ == nullptr) return;
  for (int32_t layer = 0; layer < config_.num_layers; ++layer) {
    for (bool is_value : {false, true}) {
      for (int32_t h = 0; h < config_.num_kv_heads; ++h) {
        if (poison) {
          ASAN_POISON_MEMORY_REGION(PageData(layer, is_value, b, h), page_bytes_);
        } else {
          ASAN_UNPOISON_MEMORY_REGION(PageData(layer, is_value, b, h), page_bytes_);
        }
      }
    }
  }
#endif
}

BlockPool::~BlockPool() {
  if (arena_ == nullptr) return;
#if defined(PAGEDKV_ASAN)
  ASAN_UNPOISON_MEMORY_REGION(arena_, arena_bytes_);
#endif
  internal::FreeArena(arena_, arena_bytes_);
}

absl::StatusOr<BlockId> BlockPool::Allocate() {
  const BlockId b = TryAllocate();
  if (b == kNoBlock) {
    return absl::ResourceExhaustedError(
        absl::StrCat("all ", num_blocks_, " blocks are in use (none free, none evictable)"));
  }
  return b;
}

BlockId BlockPool::TryAllocate() {
  if (sweep_) {
    victims_.clear();
    return SweepRun(kNoBlock, 1, &victims_) == 1 ? victims_.front() : kNoBlock;
  }
  BlockId b;
  if (!free_stack_.empty()) {
    b = free_stack_.back();
  } else if (lru_head_ != kNoBlock) {
    b = lru_head_;
  } else {
    return kNoBlock;
  }
  Claim(b);
  return b;
}

void BlockPool::Evict(BlockId b) {
  LruUnlink(b);
  DropKey(b);
  ++evictions_;
}

int64_t BlockPool::SweepRun(BlockId prev, int64_t n, std::vector<BlockId>* out) {
  if (num_available() == 0) return 0;
  BlockId start = prev != kNoBlock && prev + 1 < num_blocks_ && SweepTakes(prev + 1) ? prev + 1
                                                                                   : kNoBlock;
  // Each lap takes a chance from every evictable block it passes, so lap kMaxChances + 1 finds
  // one. Amortized O(1): each chance the cursor takes was given by a Release.
  const int64_t max_scan = (kMaxChances + 1) * int64_t{num_blocks_};
  for (int64_t scanned = 0; start == kNoBlock && scanned < max_scan; ++scanned) {
    const BlockId b = cursor_;
    cursor_ = cursor_ + 1 < num_blocks_ ? cursor_ + 1 : 0;
    if (SweepTakes(b)) {
      start = b;
    } else if (state_[Index(b)] == State::kEvictable) {
      --chances_[Index(b)];
    }
  }
  // Claimed from the lowest id up: a claimed prefix frees its cached extensions (DropKey), which
  // Claim then takes as free.
  const size_t before = out->size();
  BlockId b = start;
  for (; b < num_blocks_ && static_cast<int64_t>(out->size() - before) < n && SweepTakes(b); ++b) {
    Claim(b);
    out->push_back(b);
  }
  if (prev == kNoBlock) {
    // Blocks left after a new sequence's first run for it to grow into. Left after every run
    // that does not continue the last block, pagedkv-sim's runs were longer (101-274 tokens
    // instead of 84-199), but the cursor lapped faster and lost up to 8% of the prefix hits.
    constexpr int64_t kGrowthGap = 16;
    cursor_ = static_cast<BlockId>((int64_t{b} + kGrowthGap) % num_blocks_);
  }
  return static_cast<int64_t>(out->size() - before);
}

int64_t BlockPool::AllocateRun(BlockId prev, int64_t n, std::vector<BlockId>* out) {
  if (n <= 0) return 0;
  if (sweep_) return SweepRun(prev, n, out);
  const size_t before = out->size();
  const auto take_free_from = [&](BlockId b) {
    for (; b < num_blocks_ && static_cast<int64_t>(out->size() - before) < n &&
           state_[Index(b)] == State::kFree;
         ++b) {
      RemoveFree(b);
      MarkUsed(b);
      out->push_back(b);
    }
  };
  if (prev != kNoBlock && prev + 1 < num_blocks_ && state_[Index(prev + 1)] == State::kFree) {
    take_free_from(prev + 1);
  } else if (!free_stack_.empty()) {
    take_free_from(free_stack_.back());
  } else if (lru_head_ != kNoBlock) {
    // The next victims in LRU order, as many as asked while their ids run on from the head's,
    // up or down, one by one: a sequence's cached blocks enter that order deepest first, so a
    // sequence whose pages formed a run (in either direction) gives them back as one. They are
    // the very blocks Allocate would evict one by one, so a prefix never goes before its
    // extensions; they are handed out from the lowest id up.
    BlockId lo = lru_head_;
    BlockId hi = lru_head_;
    for (BlockId at = lru_head_; hi - lo + 1 < n;) {
      const BlockId next = lru_next_[Index(at)];
      if (next != kNoBlock && next == hi + 1 && at == hi) {
        hi = next;
      } else if (next != kNoBlock && next == lo - 1 && at == lo) {
        lo = next;
      } else {
        break;
      }
      at = next;
    }
    // Claimed in LRU order, so that extensions go before their prefix (a block freed with its
    // prefix's key is claimed as free).
    const BlockId count = hi - lo + 1;
    victims_.clear();
    for (BlockId at = lru_head_; static_cast<BlockId>(victims_.size()) < count;
         at = lru_next_[Index(at)]) {
      victims_.push_back(at);
    }
    for (BlockId b : victims_) Claim(b);
    for (BlockId b = lo; b <= hi; ++b) out->push_back(b);
  }
  return static_cast<int64_t>(out->size() - before);
}

void BlockPool::Acquire(BlockId b) {
  if (state_[Index(b)] == State::kEvictable) {
    LruUnlink(b);
    state_[Index(b)] = State::kUsed;
  }
  ++ref_count_[Index(b)];
}

void BlockPool::Release(BlockId b) {
  if (--ref_count_[Index(b)] > 0) return;
  if (cached_[Index(b)].registration != 0) {
    if (sweep_ && chances_[Index(b)] < kMaxChances) ++chances_[Index(b)];
    state_[Index(b)] = State::kEvictable;
    LruPushBack(b);
  } else {
    state_[Index(b)] = State::kFree;
    PushFree(b);
    PoisonPages(b, true);
  }
}

bool BlockPool::Register(BlockId b, uint64_t key, BlockId parent, uint64_t salt) {
  auto [it, inserted] = key_to_block_.try_emplace(key, b);
  if (!inserted) return false;
  const uint64_t parent_registration =
      parent == kNoBlock ? 0 : cached_[Index(parent)].registration;
  cached_[Index(b)] =
      CachedBlockInfo{key, next_registration_++, parent_registration, salt, parent};
  if (parent != kNoBlock) LinkChild(parent, b);
  return true;
}

void BlockPool::Unregister(BlockId b) { DropKey(b); }

void BlockPool::LinkChild(BlockId parent, BlockId child) {
  const BlockId first = first_child_[Index(parent)];
  next_sibling_[Index(child)] = first;
  prev_sibling_[Index(child)] = kNoBlock;
  if (first != kNoBlock) prev_sibling_[Index(first)] = child;
  first_child_[Index(parent)] = child;
}

void BlockPool::UnlinkChild(BlockId child) {
  const BlockId parent = cached_[Index(child)].parent;
  if (parent == kNoBlock) return;
  const BlockId prev = prev_sibling_[Index(child)];
  const BlockId next = next_sibling_[Index(child)];
  if (prev != kNoBlock) {
    next_sibling_[Index(prev)] = next;
  } else {
    first_child_[Index(parent)] = next;
  }
  if (next != kNoBlock) prev_sibling_[Index(next)] = prev;
  next_sibling_[Index(child)] = prev_sibling_[Index(child)] = kNoBlock;
}

void BlockPool::DropKey(BlockId b) {
  UnlinkChild(b);
  drop_stack_.clear();
  drop_stack_.push_back(b);
  while (!drop_stack_.empty()) {
    const BlockId d = drop_stack_.back();
    drop_stack_.pop_back();
    for (BlockId c = first_child_[Index(d)]; c != kNoBlock; c = next_sibling_[Index(c)]) {
      drop_stack_.push_back(c);
    }
    first_child_[Index(d)] = kNoBlock;
    next_sibling_[Index(d)] = prev_sibling_[Index(d)] = kNoBlock;
    key_to_block_.erase(cached_[Index(d)].key);
    cached_[Index(d)] = CachedBlockInfo{};
    if (d == b) continue;
    // An extension: a table that held it would hold its prefix b too, so it is evictable (or,
    // were that ever not so, stays with its holders, uncached).
    ++dropped_extensions_;
    ++evictions_;
    if (state_[Index(d)] == State::kEvictable) {
      LruUnlink(d);
      state_[Index(d)] = State::kFree;
      PushFree(d);
      PoisonPages(d, true);
    }
  }
}

BlockId BlockPool::Lookup(uint64_t key) const {
  auto it = key_to_block_.find(key);
  return it == key_to_block_.end() ? kNoBlock : it->second;
}

const CachedBlockInfo* BlockPool::cached(BlockId b) const {
  const CachedBlockInfo& info = cached_[Index(b)];
  return info.registration != 0 ? &info : nullptr;
}

void BlockPool::LruPushBack(BlockId b) {
  lru_prev_[Index(b)] = lru_tail_;
  lru_next_[Index(b)] = kNoBlock;
  if (lru_tail_ != kNoBlock) {
    lru_next_[Index(lru_tail_)] = b;
  } else {
    lru_head_ = b;
  }
  lru_tail_ = b;
  ++num_evictable_;
}

void BlockPool::LruUnlink(BlockId b) {
  const BlockId prev = lru_prev_[Index(b)];
  const BlockId next = lru_next_[Index(b)];
  if (prev != kNoBlock) {
    lru_next_[Index(prev)] = next;
  } else {
    lru_head_ = next;
  }
  if (next != kNoBlock) {
    lru_prev_[Index(next)] = prev;
  } else {
    lru_tail_ = prev;
  }
  lru_prev_[Index(b)] = lru_next_[Index(b)] = kNoBlock;
  --num_evictable_;
}

void BlockPool::CopySlots(BlockId src, BlockId dst, int32_t num_slots) {
  std::memcpy(tokens(dst), tokens(src), static_cast<size_t>(num_slots) * sizeof(int32_t));
  if (arena_ == nullptr) return;
  const size_t copy_bytes =
      static_cast<size_t>(num_slots) * static_cast<size_t>(config_.head_dim) *
      DTypeSize(config_.dtype);
  for (int32_t layer = 0; layer < config_.num_layers; ++layer) {
    for (bool is_value : {false, true}) {
      for (int32_t h = 0; h < config_.num_kv_heads; ++h) {
        std::memcpy(PageData(layer, is_value, dst, h), PageData(layer, is_value, src, h),
                    copy_bytes);
      }
    }
  }
}

void BlockPool::Reset() {
  key_to_block_.clear();
  free_stack_.clear();
  for (BlockId b = num_blocks_ - 1; b >= 0; --b) {
    cached_[Index(b)] = CachedBlockInfo{};
    first_child_[Index(b)] = next_sibling_[Index(b)] = prev_sibling_[Index(b)] = kNoBlock;
    state_[Index(b)] = State::kFree;
    ref_count_[Index(b)] = 0;
    lru_prev_[Index(b)] = lru_next_[Index(b)] = kNoBlock;
    PushFree(b);
    PoisonPages(b, true);
  }
  lru_head_ = lru_tail_ = kNoBlock;
  num_evictable_ = 0;
}

PoolStats BlockPool::stats() const {
  PoolStats s;
  s.num_blocks = num_blocks_;
  s.free_blocks = num_free();
  s.evictable_blocks = num_evictable_;
  s.used_blocks = num_blocks_ - s.free_blocks - s.evictable_blocks;
  s.cached_blocks = static_cast<int32_t>(key_to_block_.size());
  s.block_bytes = config_.BlockBytes();
  s.arena_bytes = arena_bytes_;
  s.evictions = evictions_;
  s.dropped_extensions = dropped_extensions_;
  return s;
}

absl::Status BlockPool::CheckInvariants(absl::Span<const int32_t> expected_ref_counts) const {
  auto fail = [](auto&&... parts) { return absl::InternalError(absl::StrCat(parts...)); };
  if (expected_ref_counts.size() != Index(num_blocks_)) {
    return fail("expected_ref_counts has ", expected_ref_counts.size(), " entries, pool has ",
                num_blocks_, " blocks");
  }
  std::vector<uint8_t> seen(Index(num_blocks_), 0);
  for (size_t at = 0; at < free_stack_.size(); ++at) {
    const BlockId b = free_stack_[at];
    if (b < 0 || b >= num_blocks_) return fail("free stack holds out-of-range block ", b);
    if (seen[Index(b)]++ != 0) return fail("block ", b, " is on the free stack twice");
    if (state_[Index(b)] != State::kFree) return fail("block ", b, " on the free stack is not free");
    if (free_pos_[Index(b)] != static_cast<int32_t>(at)) {
      return fail("free block ", b, " is at ", at, " on the free stack but its index says ",
                  free_pos_[Index(b)]);
    }
  }
  int32_t lru_count = 0;
  BlockId prev = kNoBlock;
  for (BlockId b = lru_head_; b != kNoBlock; b = lru_next_[Index(b)]) {
    if (b < 0 || b >= num_blocks_) return fail("LRU list holds out-of-range block ", b);
    if (seen[Index(b)]++ != 0) return fail("block ", b, " is listed twice (free stack or LRU)");
    if (state_[Index(b)] != State::kEvictable) return fail("block ", b, " in LRU is not evictable");
    if (lru_prev_[Index(b)] != prev) return fail("LRU back link of block ", b, " is broken");
    prev = b;
    ++lru_count;
  }
  if (prev != lru_tail_) return fail("LRU tail is ", lru_tail_, " but the list ends at ", prev);
  if (lru_count != num_evictable_) {
    return fail("LRU list has ", lru_count, " blocks, counter says ", num_evictable_);
  }
  int32_t used = 0;
  int32_t registered = 0;
  std::vector<int32_t> child_count(Index(num_blocks_), 0);
  for (BlockId b = 0; b < num_blocks_; ++b) {
    const size_t i = Index(b);
    const bool is_registered = cached_[i].registration != 0;
    registered += is_registered ? 1 : 0;
    if (ref_count_[i] != expected_ref_counts[i]) {
      return fail("block ", b, " has ref_count ", ref_count_[i], " but ", expected_ref_counts[i],
                  " block-table entries name it");
    }
    switch (state_[i]) {
      case State::kUsed:
        ++used;
        if (ref_count_[i] <= 0) return fail("used block ", b, " has ref_count ", ref_count_[i]);
        break;
      case State::kEvictable:
        if (!is_registered) return fail("evictable block ", b, " holds no prefix key");
        [[fallthrough]];
      case State::kFree:
        if (ref_count_[i] != 0) return fail("unused block ", b, " has ref_count ", ref_count_[i]);
        if (seen[i] == 0) return fail("unused block ", b, " is on neither free stack nor LRU");
        break;
    }
    if (state_[i] == State::kFree && is_registered) return fail("free block ", b, " holds a key");
    if (is_registered) {
      const BlockId mapped = Lookup(cached_[i].key);
      if (mapped != b) return fail("block ", b, "'s key maps to block ", mapped);
      if (cached_[i].registration >= next_registration_) {
        return fail("block ", b, " has a registration id not yet handed out");
      }
      const BlockId parent = cached_[i].parent;
      if (parent == kNoBlock) {
        if (cached_[i].parent_registration != 0) {
          return fail("first block ", b, " names parent registration ",
                      cached_[i].parent_registration);
        }
      } else {
        if (parent < 0 || parent >= num_blocks_ ||
            cached_[Index(parent)].registration != cached_[i].parent_registration) {
          return fail("block ", b, " extends block ", parent, " under registration ",
                      cached_[i].parent_registration, ", which that block does not hold");
        }
        ++child_count[Index(parent)];
      }
    } else if (first_child_[i] != kNoBlock || next_sibling_[i] != kNoBlock ||
               prev_sibling_[i] != kNoBlock) {
      return fail("unregistered block ", b, " is linked into the prefix tree");
    }
  }
  for (BlockId b = 0; b < num_blocks_; ++b) {
    int32_t listed = 0;
    BlockId prev_child = kNoBlock;
    for (BlockId c = first_child_[Index(b)]; c != kNoBlock && listed <= num_blocks_;
         c = next_sibling_[Index(c)]) {
      if (c < 0 || c >= num_blocks_ || cached_[Index(c)].parent != b ||
          prev_sibling_[Index(c)] != prev_child) {
        return fail("block ", b, "'s list of extensions is broken at block ", c);
      }
      prev_child = c;
      ++listed;
    }
    if (listed != child_count[Index(b)]) {
      return fail("block ", b, " lists ", listed, " extensions but ", child_count[Index(b)],
                  " registered blocks name it");
    }
  }
  if (static_cast<size_t>(registered) != key_to_block_.size()) {
    return fail("key index has ", key_to_block_.size(), " keys but ", registered,
                " blocks are registered");
  }
  if (cursor_ < 0 || cursor_ >= num_blocks_) {
    return fail("the sweep's cursor is at ", cursor_, ", outside the ", num_blocks_, " blocks");
  }
  if (num_free() + num_evictable_ + used != num_blocks_) {
    return fail("free ", num_free(), " + evictable ", num_evictable_, " + used ", used,
                " != num_blocks ", num_blocks_);
  }
  return absl::OkStatus();
}

}  // namespace pagedkv

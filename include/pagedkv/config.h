// CacheConfig: the one options struct of a paged KV cache, and the storage dtypes.
#ifndef PAGEDKV_CONFIG_H_
#define PAGEDKV_CONFIG_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace pagedkv {

// Element type of the K/V pools. Kernels and writers convert from/to f32 in registers.
enum class DType : uint8_t {
  kF32 = 0,
  kBF16 = 1,
  kF16 = 2,
};

// Whether `dtype` is one of the enumerators (a value cast from an integer may not be).
constexpr bool IsKnownDType(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kBF16 || dtype == DType::kF16;
}
// Bytes per element of `dtype`.
constexpr int DTypeSize(DType dtype) { return dtype == DType::kF32 ? 4 : 2; }
absl::string_view DTypeName(DType dtype);

// How each layer's K and V pools order their pages (see view.h); one page is always one
// (block, KV head)'s block_size rows, contiguous.
enum class PageLayout : uint8_t {
  // kBlockMajor with prefix caching and EvictionOrder::kLru, which scatter pages; kHeadMajor
  // otherwise, where pages form runs.
  kAuto = 0,
  // [kv_head][block]: a head's pages of consecutive block ids are adjacent, so a run of them in a
  // block table is read as one array. Pools hand out runs where blocks are free or evicted by
  // EvictionOrder::kSweep (on the Azure trace pagedkv-sim's sequences average 432 tokens of
  // adjacent pages without prefix caching, 84 with it and sweep eviction, 16 with LRU).
  // bf16 decode, one thread, calls alternated with a contiguous cache (BM_DecodePageRun), on a
  // Zen 4 VM: runs of 32 and 128 pages 0.98-0.99x and 0.96x the contiguous time from DRAM,
  // scattered pages 1.40-1.42x; in L3 0.98-1.00x and 1.10-1.11x (on a Zen 5, before runs
  // fetched ahead like pages: 1.09-1.16x, 1.01-1.06x and 1.68-1.75x from DRAM).
  kHeadMajor = 1,
  // [block][kv_head]: a block's heads are adjacent. Scattered pages decode faster than with
  // kHeadMajor from DRAM (the next head's page, which the hardware prefetcher runs on into, is
  // read next), but runs gain little: on the Zen 4 VM 1.02-1.05x the contiguous time scattered
  // and 1.00-1.03x in runs from DRAM, 1.04-1.07x in L3 (on the Zen 5, 1.16-1.25x as fast as
  // kHeadMajor scattered, runs 1.33-1.39x the contiguous time). With prefix caching and
  // EvictionOrder::kLru pages stay scattered (16-21 tokens per run in pagedkv-sim), so kAuto
  // picks this layout there.
  kBlockMajor = 2,
};

// Which evictable block (a freed block that still holds a cached prefix) the pool reuses when
// no block is free. Matters only with prefix caching.
enum class EvictionOrder : uint8_t {
  // The least recently used one, exactly. A sequence's released blocks go deepest first, so a
  // prefix never goes before its extensions. Pages end up scattered: pagedkv-sim's sequences
  // average 16-21 tokens per run of adjacent pages.
  kLru = 0,
  // A cursor sweeps the pool by block id and takes the free and evictable blocks it finds. Each
  // release of a cached block gives it a chance, up to 3, and the cursor passes a block that has
  // one, taking it (a CLOCK with counts, so often-used prefixes stay). A growing sequence takes
  // the block after its last one when that is free or evictable with no chance left, and the
  // cursor leaves 16 blocks after a new sequence's first run for it to grow into. Pages stay in
  // runs: pagedkv-sim's sequences average 84-199 tokens per run on its workloads instead of
  // 16-21 with kLru, at 0-0.8% fewer prefix hits, and kAuto lays the pools out head-major,
  // where decode reads a run as one array (BM_DecodeAfterChurn compares the two orders).
  kSweep = 1,
};

// A token-slot page holds `block_size` positions of one sequence for every layer.
using BlockId = int32_t;
inline constexpr BlockId kNoBlock = -1;

// Shape and policy of a cache. Every field has a default; `Validate()` names the first field that
// is out of range. Sizing: give `num_blocks`, or leave it 0 and give `memory_budget_bytes`, from
// which the largest whole number of blocks is taken.
struct CacheConfig {
  // Model shape. Defaults are a small model; presets belong to the caller.
  int32_t num_layers = 2;
  int32_t num_kv_heads = 2;
  int32_t head_dim = 64;

  // Token positions per block. Small blocks waste less at each sequence's tail and share
  // prefixes at a finer grain; large ones make block tables shorter and let decode attention read
  // K/V in longer runs. On a Zen 5 core (bf16, head dim 128), 128-token pages decoded 1.2x as
  // fast as 16-token ones with K/V coming from DRAM and 1.1x in L3; 32 and 64 were no faster from
  // DRAM and 1.05x in L3 (bench: BM_DecodePageSize). 16 is the usual trade-off.
  int32_t block_size = 16;

  // Storage dtype of K and V. bf16 halves memory against f32 at about 3 significant digits.
  DType dtype = DType::kBF16;

  // Number of blocks in the pool. 0: derive from `memory_budget_bytes`.
  int32_t num_blocks = 0;

  // Bytes for all K and V pools together, used only when `num_blocks` is 0. Blocks are sized as if
  // storage existed even with `metadata_only`, so a simulation sees the capacity a real cache
  // would have.
  int64_t memory_budget_bytes = 0;

  // The longest a sequence may grow; reserving past it is kInvalidArgument, never a silent drop.
  int64_t max_seq_len = 8192;

  // Share full blocks of identical prompt prefixes (same tokens, same salt) across sequences.
  // Costs a hash per filled block and keeps freed prefix blocks around until evicted (LRU).
  bool enable_prefix_caching = false;

  // How evictable blocks are chosen for reuse; see EvictionOrder.
  EvictionOrder eviction_order = EvictionOrder::kLru;

  // Page order in the pools; see PageLayout.
  PageLayout page_layout = PageLayout::kAuto;

  // Keep only the block accounting, no K/V bytes: for planning and simulation of large models.
  // K/V reads and writes then return kFailedPrecondition.
  bool metadata_only = false;

  // Bytes of one block in one layer's K pool (or V pool): num_kv_heads * block_size * head_dim
  // elements.
  int64_t BlockBytesPerLayer() const;
  // Bytes one block id names across every layer, K and V together.
  int64_t BlockBytes() const;
  // Bytes of K and V for one token across every layer.
  int64_t BytesPerToken() const;

  // OK when every field is in range and the pool size can be derived; kInvalidArgument naming the
  // field and its value otherwise.
  absl::Status Validate() const;
  // page_layout with kAuto resolved.
  PageLayout ResolvedPageLayout() const;
  // Number of blocks the pool will hold: `num_blocks`, or derived from the budget.
  // REQUIRES: Validate().ok().
  int32_t ResolvedNumBlocks() const;
};

}  // namespace pagedkv

#endif  // PAGEDKV_CONFIG_H_

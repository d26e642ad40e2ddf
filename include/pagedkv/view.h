// PagedKvView: the flat, trivially copyable description of K/V pages that attention kernels read.
#ifndef PAGEDKV_VIEW_H_
#define PAGEDKV_VIEW_H_

#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "absl/status/status.h"
#include "pagedkv/config.h"

namespace pagedkv {

// Page layout, one arena for all pools (P = 2 * num_layers pools, pool p = 2 * layer + is_value),
// here PageLayout::kHeadMajor (kBlockMajor swaps the first two dimensions of each pool; the
// strides below say which):
//
//   arena ─┬─ pool 0 (layer 0, K) ── [num_kv_heads][num_blocks][block_size][head_dim]
//          ├─ pool 1 (layer 0, V) ── [num_kv_heads][num_blocks][block_size][head_dim]
//          ├─ pool 2 (layer 1, K) ── ...
//          └─ pool P-1
//
// Token position `pos` of sequence s lives in block block_ids[block_offsets[s] + pos / block_size]
// at slot pos % block_size. One (layer, block, kv head) page is a contiguous run of
// block_size * head_dim elements, so a kernel streams a page with no gathers; with kHeadMajor one
// KV head's pages of consecutive block ids are adjacent, so where a block table names consecutive
// ids (the pool hands out runs where it can) the kernel streams the whole run.
//
// A view borrows: the arena from the cache, the tables from a PagedKvViewStorage. It stays valid
// until the cache changes any of the viewed sequences or the storage is reused.
struct PagedKvView {
  const std::byte* arena = nullptr;
  int64_t arena_bytes = 0;         // Every page lies in [arena, arena + arena_bytes).
  int64_t pool_stride_bytes = 0;   // Between consecutive pools.
  int64_t head_stride_bytes = 0;   // Between kv heads of one block (kHeadMajor: num_blocks pages).
  int64_t block_stride_bytes = 0;  // Between blocks of one head (kHeadMajor: one page).
  int64_t row_stride_bytes = 0;    // Between slots of one head: head_dim elems.
  int32_t num_layers = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  int32_t block_size = 0;
  int32_t num_blocks = 0;  // Blocks per pool: block ids are in [0, num_blocks).
  DType dtype = DType::kF32;

  int32_t num_seqs = 0;
  const int32_t* block_offsets = nullptr;  // [num_seqs + 1]: CSR offsets into block_ids.
  const BlockId* block_ids = nullptr;      // Block tables of all viewed sequences, concatenated.
  const int64_t* seq_lens = nullptr;       // [num_seqs]: tokens of each sequence.

  // First element of (layer, K or V, block, kv head): block_size rows of head_dim elements.
  const std::byte* Page(int32_t layer, bool is_value, BlockId block, int32_t kv_head) const {
    return arena + (2 * int64_t{layer} + (is_value ? 1 : 0)) * pool_stride_bytes +
           int64_t{block} * block_stride_bytes + int64_t{kv_head} * head_stride_bytes;
  }
  // Block table of viewed sequence s.
  const BlockId* BlockTable(int32_t s) const { return block_ids + block_offsets[s]; }
};

static_assert(std::is_trivially_copyable_v<PagedKvView>);

// OK when every page and row the view names can be read: positive dimensions, a known dtype,
// rows of head_dim elements packed at row_stride_bytes, every page of every pool within
// arena_bytes, and for each viewed sequence a length >= 0 and a block table that covers it with
// ids in [0, num_blocks). Otherwise kInvalidArgument naming the first field (and sequence) that
// is wrong, with its value. The attention kernels check every view with it, so a view built by
// hand is refused instead of read out of bounds; PagedKvCache::MakeView's always pass.
// O(num_seqs + the table entries that cover the lengths).
absl::Status CheckView(const PagedKvView& view);

// Owns the table arrays a PagedKvView points into; reuse it across steps to avoid allocation.
struct PagedKvViewStorage {
  std::vector<int32_t> block_offsets;
  std::vector<BlockId> block_ids;
  std::vector<int64_t> seq_lens;
};

}  // namespace pagedkv

#endif  // PAGEDKV_VIEW_H_

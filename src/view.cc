#include "pagedkv/view.h"

#include <cstdint>
#include <limits>
#include <string>

#include "absl/numeric/int128.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "pagedkv/config.h"

namespace pagedkv {
namespace {

absl::Status Bad(auto&&... parts) {
  return absl::InvalidArgumentError(absl::StrCat("view: ", parts...));
}

}  // namespace

absl::Status CheckView(const PagedKvView& view) {
  if (view.arena == nullptr) return Bad("it has no K/V storage (arena is null)");
  if (view.num_layers < 1 || view.num_kv_heads < 1 || view.head_dim < 1 || view.block_size < 1 ||
      view.num_blocks < 0 || view.num_seqs < 0) {
    return Bad("num_layers ", view.num_layers, ", num_kv_heads ", view.num_kv_heads,
               ", head_dim ", view.head_dim, ", block_size ", view.block_size, ", num_blocks ",
               view.num_blocks, ", num_seqs ", view.num_seqs,
               "; want >= 1 each (num_blocks, num_seqs >= 0)");
  }
  if (!IsKnownDType(view.dtype)) return Bad("unknown dtype ", static_cast<int>(view.dtype));
  const int64_t elem = DTypeSize(view.dtype);
  // The kernels read a page's rows as one run of block_size * head_dim elements.
  if (view.row_stride_bytes != view.head_dim * elem) {
    return Bad("row_stride_bytes ", view.row_stride_bytes, " is not head_dim ", view.head_dim,
               " * ", elem, " bytes: rows must be packed");
  }
  if (view.pool_stride_bytes < 0 || view.head_stride_bytes < 0 || view.block_stride_bytes < 0 ||
      view.pool_stride_bytes % elem != 0 || view.head_stride_bytes % elem != 0 ||
      view.block_stride_bytes % elem != 0 || reinterpret_cast<uintptr_t>(view.arena) % elem != 0) {
    return Bad("strides (pool ", view.pool_stride_bytes, ", head ", view.head_stride_bytes,
               ", block ", view.block_stride_bytes, ") and the arena's address must be "
               "non-negative multiples of the ", elem, "-byte element");
  }
  if (view.num_blocks > 0) {
    // The last byte of the furthest page: every index at its largest, as the strides are >= 0.
    const absl::int128 end =
        absl::int128(2 * int64_t{view.num_layers} - 1) * view.pool_stride_bytes +
        absl::int128(view.num_blocks - 1) * view.block_stride_bytes +
        absl::int128(view.num_kv_heads - 1) * view.head_stride_bytes +
        absl::int128(view.block_size) * view.row_stride_bytes;
    if (end > view.arena_bytes) {
      const std::string reach = end <= std::numeric_limits<int64_t>::max()
                                    ? absl::StrCat(static_cast<int64_t>(end))
                                    : std::string("more than 2^63");
      return Bad("its pages reach ", reach, " bytes into an arena of arena_bytes ",
                 view.arena_bytes, " (", view.num_layers, " layers, ", view.num_blocks,
                 " blocks, ", view.num_kv_heads, " kv heads)");
    }
  }
  if (view.num_seqs == 0) return absl::OkStatus();
  if (view.block_offsets == nullptr || view.seq_lens == nullptr) {
    return Bad("block_offsets or seq_lens is null for ", view.num_seqs, " sequences");
  }
  for (int32_t s = 0; s < view.num_seqs; ++s) {
    const int64_t len = view.seq_lens[s];
    const int32_t first = view.block_offsets[s];
    const int64_t entries = int64_t{view.block_offsets[s + 1]} - first;
    const int64_t needed = len / view.block_size + (len % view.block_size != 0 ? 1 : 0);
    if (len < 0 || first < 0 || entries < needed) {
      return Bad("sequence ", s, " has length ", len, " and block table entries [", first, ", ",
                 first + entries, "); want a length >= 0 and at least ", needed, " entries from "
                 "offset >= 0");
    }
    if (needed > 0 && view.block_ids == nullptr) return Bad("block_ids is null");
    const BlockId* table = view.BlockTable(s);
    for (int64_t i = 0; i < needed; ++i) {
      if (table[i] < 0 || table[i] >= view.num_blocks) {
        return Bad("sequence ", s, " names block ", table[i], " at table entry ", i,
                   "; want [0, ", view.num_blocks, ")");
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace pagedkv

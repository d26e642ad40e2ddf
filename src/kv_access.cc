// K/V reads, writes and views of PagedKvCache: everything that touches the arena's bytes.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <shared_mutex>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "pagedkv/dtype.h"
#include "pagedkv/paged_kv_cache.h"

namespace pagedkv {

absl::Status PagedKvCache::CheckStorage(absl::string_view op) const {
  if (pool_->has_storage()) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat(op, " needs K/V storage, but the cache was created metadata_only"));
}

absl::Status PagedKvCache::CheckLayer(int32_t layer) const {
  if (layer >= 0 && layer < pool_->config().num_layers) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " out of range [0, ",
                                                 pool_->config().num_layers, ")"));
}

std::byte* PagedKvCache::Row(const Sequence& seq, int32_t layer, bool is_value, int64_t pos,
                             int32_t kv_head) const {
  const CacheConfig& config = pool_->config();
  const BlockId b = seq.blocks[static_cast<size_t>(pos / block_size_)];
  return pool_->PageData(layer, is_value, b, kv_head) +
         pos % block_size_ * config.head_dim * DTypeSize(config.dtype);
}

void PagedKvCache::WriteRows(const Sequence& seq, int32_t layer, int64_t start, int64_t n,
                             const float* k, const float* v) {
  const CacheConfig& config = pool_->config();
  const int64_t dim = config.head_dim;
  for (int64_t i = 0; i < n; ++i) {
    for (int32_t h = 0; h < config.num_kv_heads; ++h) {
      const int64_t in = (i * config.num_kv_heads + h) * dim;
      ConvertFromF32(config.dtype, k + in, dim, Row(seq, layer, false, start + i, h));
      ConvertFromF32(config.dtype, v + in, dim, Row(seq, layer, true, start + i, h));
    }
  }
}

absl::Status PagedKvCache::WriteKv(SeqId seq, int32_t layer, int64_t start,
                                   absl::Span<const float> k, absl::Span<const float> v) {
  // Shared: the slots written belong to this sequence alone (see the class comment).
  std::shared_lock lock(mu_);
  if (absl::Status s = CheckStorage("WriteKv"); !s.ok()) return s;
  if (absl::Status s = CheckLayer(layer); !s.ok()) return s;
  absl::StatusOr<Sequence*> found = Get(seq);
  if (!found.ok()) return found.status();
  const Sequence& s = **found;
  const int64_t row = int64_t{config().num_kv_heads} * config().head_dim;
  if (k.size() != v.size() || static_cast<int64_t>(k.size()) % row != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "WriteKv: k has ", k.size(), " and v ", v.size(), " floats; each must be n * ", row,
        " (n tokens * ", config().num_kv_heads, " kv heads * ", config().head_dim, " head_dim)"));
  }
  const int64_t n = static_cast<int64_t>(k.size()) / row;
  if (start < s.writable_from || start + n > s.length) {
    return absl::FailedPreconditionError(absl::StrCat(
        "WriteKv: positions [", start, ", ", start + n, ") of sequence ", seq,
        " are outside its writable range [", s.writable_from, ", ", s.length,
        "): reserve slots first; positions shared by fork or prefix hit are read-only"));
  }
  WriteRows(s, layer, start, n, k.data(), v.data());
  return absl::OkStatus();
}

absl::Status PagedKvCache::AppendKv(SeqId seq, absl::Span<const float> k,
                                    absl::Span<const float> v, absl::Span<const int32_t> tokens) {
  if (absl::Status s = CheckStorage("AppendKv"); !s.ok()) return s;
  const CacheConfig& config = pool_->config();
  const int64_t layer_row = int64_t{config.num_layers} * config.num_kv_heads * config.head_dim;
  if (k.size() != v.size() || static_cast<int64_t>(k.size()) % layer_row != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "AppendKv: k has ", k.size(), " and v ", v.size(), " floats; each must be n * ",
        layer_row, " (", config.num_layers, " layers * n tokens * ", config.num_kv_heads,
        " kv heads * ", config.head_dim, " head_dim)"));
  }
  const int64_t n = static_cast<int64_t>(k.size()) / layer_row;
  std::unique_lock lock(mu_);
  const ReserveRequest request{seq, n, tokens};
  if (absl::Status s = ReserveBatchLocked(absl::MakeConstSpan(&request, 1)); !s.ok()) return s;
  const Sequence& s = *Find(seq);
  const int64_t start = s.length - n;
  const int64_t per_layer = n * config.num_kv_heads * config.head_dim;
  for (int32_t layer = 0; layer < config.num_layers; ++layer) {
    WriteRows(s, layer, start, n, k.data() + layer * per_layer, v.data() + layer * per_layer);
  }
  return absl::OkStatus();
}

absl::Status PagedKvCache::ReadKv(SeqId seq, int32_t layer, int64_t start, int64_t n,
                                  absl::Span<float> k, absl::Span<float> v) const {
  std::shared_lock lock(mu_);
  if (absl::Status s = CheckStorage("ReadKv"); !s.ok()) return s;
  if (absl::Status s = CheckLayer(layer); !s.ok()) return s;
  absl::StatusOr<const Sequence*> found = Get(seq);
  if (!found.ok()) return found.status();
  const Sequence& s = **found;
  if (start < 0 || n < 0 || start + n > s.length) {
    return absl::InvalidArgumentError(absl::StrCat("ReadKv: positions [", start, ", ", start + n,
                                                   ") outside sequence ", seq, " of length ",
                                                   s.length));
  }
  const CacheConfig& config = pool_->config();
  const int64_t dim = config.head_dim;
  const int64_t need = n * config.num_kv_heads * dim;
  if (static_cast<int64_t>(k.size()) < need || static_cast<int64_t>(v.size()) < need) {
    return absl::InvalidArgumentError(absl::StrCat("ReadKv: outputs hold ", k.size(), " and ",
                                                   v.size(), " floats, need ", need));
  }
  for (int64_t i = 0; i < n; ++i) {
    for (int32_t h = 0; h < config.num_kv_heads; ++h) {
      const int64_t out = (i * config.num_kv_heads + h) * dim;
      ConvertToF32(config.dtype, Row(s, layer, false, start + i, h), dim, k.data() + out);
      ConvertToF32(config.dtype, Row(s, layer, true, start + i, h), dim, v.data() + out);
    }
  }
  return absl::OkStatus();
}

absl::Status PagedKvCache::VisitKv(SeqId seq, int32_t layer, KvVisitor visit) const {
  std::shared_lock lock(mu_);
  if (absl::Status s = CheckStorage("VisitKv"); !s.ok()) return s;
  if (absl::Status s = CheckLayer(layer); !s.ok()) return s;
  absl::StatusOr<const Sequence*> found = Get(seq);
  if (!found.ok()) return found.status();
  const Sequence& s = **found;
  for (int64_t pos = 0; pos < s.length; ++pos) {
    for (int32_t h = 0; h < config().num_kv_heads; ++h) {
      visit(pos, h, Row(s, layer, false, pos, h), Row(s, layer, true, pos, h));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<PagedKvView> PagedKvCache::MakeView(absl::Span<const SeqId> seqs,
                                                   PagedKvViewStorage* storage) const {
  std::shared_lock lock(mu_);
  if (absl::Status s = CheckStorage("MakeView"); !s.ok()) return s;
  for (SeqId id : seqs) {
    if (Find(id) == nullptr) {
      return absl::NotFoundError(absl::StrCat("MakeView: sequence ", id, " is unknown or was freed"));
    }
  }
  storage->block_offsets.assign(1, 0);
  storage->block_ids.clear();
  storage->seq_lens.clear();
  for (SeqId id : seqs) {
    const Sequence& s = *Find(id);
    storage->block_ids.insert(storage->block_ids.end(), s.blocks.begin(), s.blocks.end());
    storage->block_offsets.push_back(static_cast<int32_t>(storage->block_ids.size()));
    storage->seq_lens.push_back(s.length);
  }
  const CacheConfig& config = pool_->config();
  PagedKvView view;
  view.arena = pool_->arena();
  view.num_blocks = pool_->num_blocks();
  view.row_stride_bytes = int64_t{config.head_dim} * DTypeSize(config.dtype);
  const int64_t page = pool_->page_bytes();
  if (config.ResolvedPageLayout() == PageLayout::kHeadMajor) {
    view.block_stride_bytes = page;
    view.head_stride_bytes = page * pool_->num_blocks();
  } else {
    view.head_stride_bytes = page;
    view.block_stride_bytes = page * config.num_kv_heads;
  }
  view.pool_stride_bytes = page * config.num_kv_heads * pool_->num_blocks();
  view.arena_bytes = 2 * int64_t{config.num_layers} * view.pool_stride_bytes;
  view.num_layers = config.num_layers;
  view.num_kv_heads = config.num_kv_heads;
  view.head_dim = config.head_dim;
  view.block_size = config.block_size;
  view.dtype = config.dtype;
  view.num_seqs = static_cast<int32_t>(seqs.size());
  view.block_offsets = storage->block_offsets.data();
  view.block_ids = storage->block_ids.data();
  view.seq_lens = storage->seq_lens.data();
  return view;
}

}  // namespace pagedkv

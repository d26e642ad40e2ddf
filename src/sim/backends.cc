#include "src/sim/backends.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "pagedkv/attention.h"

namespace pagedkv::sim {
namespace {

class PagedBackend : public Backend {
 public:
  PagedBackend(std::unique_ptr<PagedKvCache> cache, const BackendOptions& options)
      : cache_(std::move(cache)), options_(options), bs_(options.block_size) {}

  const char* name() const override { return "paged"; }

  std::optional<SimSeq> Admit(absl::Span<const int32_t> prompt, int64_t watermark_tokens,
                              int64_t* cached) override {
    absl::StatusOr<NewSequence> created =
        cache_->CreateSequence(options_.sharing ? prompt : absl::Span<const int32_t>(), 0);
    if (!created.ok()) return std::nullopt;
    const int64_t prompt_len = static_cast<int64_t>(prompt.size());
    const int64_t needed = (prompt_len + bs_ - 1) / bs_ - created->cached_tokens / bs_;
    const int64_t watermark_blocks = (watermark_tokens + bs_ - 1) / bs_;
    if (cache_->pool().num_available() - needed < watermark_blocks) {
      cache_->Free(created->id).IgnoreError();
      return std::nullopt;
    }
    SimSeq seq{created->id, created->cached_tokens, 0};
    if (!Reserve(seq, prompt.subspan(static_cast<size_t>(created->cached_tokens)))) {
      cache_->Free(created->id).IgnoreError();
      return std::nullopt;
    }
    *cached = created->cached_tokens;
    return seq;
  }

  bool Append(SimSeq& seq, int32_t token) override {
    return Reserve(seq, absl::MakeConstSpan(&token, 1));
  }

  std::optional<SimSeq> Fork(const SimSeq& seq) override {
    if (options_.sharing) {
      absl::StatusOr<SeqId> child = cache_->Fork(seq.id);
      if (!child.ok()) return std::nullopt;
      return SimSeq{*child, seq.length, 0};
    }
    // Without sharing a fork is a private copy, as a contiguous cache makes.
    absl::StatusOr<NewSequence> child = cache_->CreateSequence();
    absl::StatusOr<std::vector<int32_t>> tokens = cache_->Tokens(seq.id);
    if (!child.ok() || !tokens.ok()) return std::nullopt;
    SimSeq copy{child->id, 0, 0};
    if (!Reserve(copy, *tokens, seq.id)) {
      cache_->Free(child->id).IgnoreError();
      return std::nullopt;
    }
    copied_tokens_ += seq.length;
    return copy;
  }

  void Free(SimSeq& seq) override { cache_->Free(seq.id).IgnoreError(); }

  Usage usage() const override {
    const CacheStats stats = cache_->Stats();
    Usage u;
    u.tokens_stored = stats.physical_tokens;
    u.slots_reserved = int64_t{stats.pool.used_blocks} * bs_;
    u.tail_waste = stats.tail_waste_tokens;
    u.shared_saved = stats.blocks_saved_by_sharing;
    u.shared_entries = stats.blocks_saved_by_sharing + stats.pool.used_blocks;
    u.runs = stats.table_runs;
    u.run_slots = stats.table_entries * bs_;
    return u;
  }
  int64_t slots_in_use() const override {
    const BlockPool& pool = cache_->pool();
    return int64_t{pool.num_blocks() - pool.num_available()} * bs_;
  }
  absl::Status CheckInvariants() const override { return cache_->CheckInvariants(); }

  double DecodeAttentionStep(absl::Span<const SimSeq> seqs) override {
    if (!options_.materialize || seqs.empty()) return 0.0;
    const auto start = std::chrono::steady_clock::now();
    ids_.clear();
    for (const SimSeq& s : seqs) ids_.push_back(s.id);
    const CacheConfig& c = cache_->config();
    const int32_t q_heads = c.num_kv_heads * 4;  // GQA 4, as in Llama 3.
    absl::StatusOr<PagedKvView> view = cache_->MakeView(ids_, &view_storage_);
    if (!view.ok()) return 0.0;
    q_.assign(ids_.size() * static_cast<size_t>(q_heads * c.head_dim), 0.02f);
    out_.resize(q_.size());
    for (int32_t layer = 0; layer < c.num_layers; ++layer) {
      DecodeAttention(*view, layer, q_heads, q_, absl::MakeSpan(out_)).IgnoreError();
    }
    return std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - start)
        .count();
  }

 private:
  // Reserves `tokens` for seq and, with storage, writes K/V for them (copied from `source` when
  // it is a live sequence, a fixed pattern otherwise).
  bool Reserve(SimSeq& seq, absl::Span<const int32_t> tokens, SeqId source = -1) {
    absl::StatusOr<int64_t> start = cache_->Reserve(seq.id, tokens);
    if (!start.ok()) return false;
    const int64_t n = static_cast<int64_t>(tokens.size());
    if (options_.materialize && n > 0) {
      const CacheConfig& c = cache_->config();
      const size_t floats = static_cast<size_t>(n * c.num_kv_heads * c.head_dim);
      scratch_k_.resize(floats);
      scratch_v_.resize(floats);
      for (int32_t layer = 0; layer < c.num_layers; ++layer) {
        if (source >= 0) {
          cache_->ReadKv(source, layer, *start, n, absl::MakeSpan(scratch_k_),
                         absl::MakeSpan(scratch_v_)).IgnoreError();
        } else {
          for (size_t i = 0; i < floats; ++i) {
            scratch_k_[i] = static_cast<float>((*start + static_cast<int64_t>(i)) % 97) * 0.01f;
            scratch_v_[i] = -scratch_k_[i];
          }
        }
        cache_->WriteKv(seq.id, layer, *start, scratch_k_, scratch_v_).IgnoreError();
      }
    }
    seq.length += n;
    return true;
  }

  std::unique_ptr<PagedKvCache> cache_;
  BackendOptions options_;
  int64_t bs_;
  std::vector<float> scratch_k_, scratch_v_;
  std::vector<SeqId> ids_;
  PagedKvViewStorage view_storage_;
  std::vector<float> q_, out_;
};

// Capacity accounting of contiguous caches in one budget. Optimistic for them: it ignores the
// external fragmentation a real arena of variable-size buffers would also suffer.
class ContiguousBackend : public Backend {
 public:
  ContiguousBackend(const BackendOptions& options, bool doubling)
      : options_(options), doubling_(doubling) {}

  const char* name() const override {
    return doubling_ ? "contiguous_doubling" : "contiguous_max";
  }

  std::optional<SimSeq> Admit(absl::Span<const int32_t> prompt, int64_t watermark_tokens,
                              int64_t* cached) override {
    const int64_t len = static_cast<int64_t>(prompt.size());
    const int64_t capacity = InitialCapacity(len);
    if (reserved_ + capacity + watermark_tokens > options_.budget_tokens) return std::nullopt;
    *cached = 0;
    return Take(len, capacity);
  }

  bool Append(SimSeq& seq, int32_t) override {
    if (seq.length == seq.capacity) {
      if (!doubling_ || seq.capacity >= options_.max_seq_len) return false;
      // Grow by doubling: the old and the new buffer coexist while the tokens are copied.
      const int64_t grown = std::min(2 * seq.capacity, options_.max_seq_len);
      if (reserved_ + grown > options_.budget_tokens) return false;
      reserved_ += grown - seq.capacity;
      seq.capacity = grown;
      copied_tokens_ += seq.length;
    }
    ++seq.length;
    ++stored_;
    return true;
  }

  std::optional<SimSeq> Fork(const SimSeq& seq) override {
    if (reserved_ + seq.capacity > options_.budget_tokens) return std::nullopt;
    copied_tokens_ += seq.length;
    return Take(seq.length, seq.capacity);
  }

  void Free(SimSeq& seq) override {
    reserved_ -= seq.capacity;
    stored_ -= seq.length;
    --live_;
    seq = SimSeq{};
  }

  Usage usage() const override {
    Usage u;
    u.tokens_stored = stored_;
    u.slots_reserved = reserved_;
    u.tail_waste = reserved_ - stored_;
    u.runs = live_;
    u.run_slots = reserved_;
    return u;
  }
  int64_t slots_in_use() const override { return reserved_; }

  absl::Status CheckInvariants() const override {
    if (reserved_ > options_.budget_tokens || stored_ > reserved_ || live_ < 0 ||
        (live_ == 0 && (reserved_ != 0 || stored_ != 0))) {
      return absl::InternalError(absl::StrCat(name(), ": reserved ", reserved_, ", stored ",
                                              stored_, ", live ", live_, ", budget ",
                                              options_.budget_tokens));
    }
    return absl::OkStatus();
  }

 private:
  int64_t InitialCapacity(int64_t prompt_len) const {
    if (!doubling_) return options_.max_seq_len;
    int64_t capacity = 16;
    while (capacity < prompt_len + 1) capacity *= 2;
    return std::min(capacity, options_.max_seq_len);
  }
  SimSeq Take(int64_t length, int64_t capacity) {
    reserved_ += capacity;
    stored_ += length;
    ++live_;
    return SimSeq{next_id_++, length, capacity};
  }

  BackendOptions options_;
  bool doubling_;
  int64_t reserved_ = 0;
  int64_t stored_ = 0;
  int64_t live_ = 0;
  int64_t next_id_ = 0;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> MakePagedBackend(const BackendOptions& options) {
  CacheConfig config;
  config.num_layers = options.model.num_layers;
  config.num_kv_heads = options.model.num_kv_heads;
  config.head_dim = options.model.head_dim;
  config.dtype = options.model.dtype;
  config.block_size = options.block_size;
  config.max_seq_len = options.max_seq_len;
  config.enable_prefix_caching = options.sharing;
  config.eviction_order = options.eviction_order;
  config.metadata_only = !options.materialize;
  const int64_t blocks = options.budget_tokens / std::max(1, options.block_size);
  if (blocks < 1) {
    return absl::InvalidArgumentError(absl::StrCat("the KV budget of ", options.budget_tokens,
                                                   " tokens is smaller than one block of ",
                                                   options.block_size, " tokens"));
  }
  if (blocks > (int64_t{1} << 31) - 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("the KV budget makes ", blocks, " blocks; at most 2^31 - 2 are supported"));
  }
  config.num_blocks = static_cast<int32_t>(blocks);
  absl::StatusOr<std::unique_ptr<PagedKvCache>> cache = PagedKvCache::Create(config);
  if (!cache.ok()) return cache.status();
  return std::unique_ptr<Backend>(new PagedBackend(*std::move(cache), options));
}

std::unique_ptr<Backend> MakeContiguousMaxBackend(const BackendOptions& options) {
  return std::make_unique<ContiguousBackend>(options, /*doubling=*/false);
}

std::unique_ptr<Backend> MakeContiguousDoublingBackend(const BackendOptions& options) {
  return std::make_unique<ContiguousBackend>(options, /*doubling=*/true);
}

}  // namespace pagedkv::sim

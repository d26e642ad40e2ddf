// An interpreter of operation sequences over the public API: every byte picks an operation and
// its arguments. After each one the cache's invariants must hold and every sequence must read
// back exactly as the contiguous reference says.
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "../reference_cache.h"
#include "fuzz_common.h"

namespace pagedkv::fuzz {
namespace {

class Interpreter {
 public:
  Interpreter(const uint8_t* data, size_t size)
      : data_(data), size_(size), config_(ConfigOf(Next())), ref_(config_),
        cache_(*PagedKvCache::Create(config_)) {}

  void Run() {
    while (pos_ < size_) {
      Step();
      Check(*cache_);
    }
    for (auto& [id, s] : ref_.seqs()) Compare(id);
  }

 private:
  // The first byte: bit 0 turns prefix caching on, bit 1 sweep eviction.
  static CacheConfig ConfigOf(uint8_t first) { return FuzzConfig(first & 1, first & 2); }

  uint8_t Next() { return pos_ < size_ ? data_[pos_++] : 0; }

  SeqId Pick() {
    if (ref_.seqs().empty()) return -1;
    auto it = ref_.seqs().begin();
    std::advance(it, Next() % ref_.seqs().size());
    return it->first;
  }

  // K/V a model would compute for the known prefix (so prefix sharing must reproduce it), a
  // byte-derived value otherwise.
  std::vector<float> Values(test::ReferenceSequence& s, int32_t layer, bool is_value,
                            int64_t start, int64_t n) {
    std::vector<float> out(static_cast<size_t>(n * ref_.row()));
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t e = 0; e < ref_.row(); ++e) {
        const int64_t pos = start + i;
        out[static_cast<size_t>(i * ref_.row() + e)] =
            pos < s.known_prefix ? ref_.ModelValue(s, pos, layer, is_value, e)
                                 : ref_.RoundTo(static_cast<float>(Next()) / 64.0f - 2.0f);
      }
    }
    auto& dst = (is_value ? s.v : s.k)[static_cast<size_t>(layer)];
    std::copy(out.begin(), out.end(), dst.begin() + start * ref_.row());
    return out;
  }

  void Write(SeqId id, int64_t start, int64_t n) {
    test::ReferenceSequence& s = ref_.at(id);
    for (int32_t layer = 0; layer < config_.num_layers; ++layer) {
      std::vector<float> k = Values(s, layer, false, start, n);
      std::vector<float> v = Values(s, layer, true, start, n);
      if (absl::Status st = cache_->WriteKv(id, layer, start, k, v); !st.ok()) Die("write:", st);
    }
  }

  void Step() {
    const uint8_t op = Next() % 8;
    if (op == 0 || ref_.seqs().empty()) {
      std::vector<int32_t> prompt(Next() % 20);
      for (int32_t& t : prompt) t = Next() % 4;
      const uint64_t salt = Next() & 1;
      absl::StatusOr<NewSequence> seq = cache_->CreateSequence(prompt, salt);
      if (!seq.ok()) Die("create:", seq.status());
      ref_.Create(seq->id, salt);
      return Created(seq->id, prompt, seq->cached_tokens);
    }
    const SeqId id = Pick();
    test::ReferenceSequence& s = ref_.at(id);
    switch (op) {
      case 1:
      case 2: {  // Reserve with or without ids, then write every layer.
        const int64_t n = Next() % 9;
        std::vector<int32_t> ids(static_cast<size_t>(n));
        for (int32_t& t : ids) t = Next() % 4;
        const bool known = op == 1;
        absl::StatusOr<int64_t> start = known ? cache_->Reserve(id, ids) : cache_->Reserve(id, n);
        if (!start.ok()) {
          if (start.status().code() == absl::StatusCode::kResourceExhausted ||
              (start.status().code() == absl::StatusCode::kInvalidArgument &&
               s.length() + n > config_.max_seq_len)) {
            return Compare(id);
          }
          Die("reserve:", start.status());
        }
        ref_.Append(s, n, known ? ids.data() : nullptr);
        return Write(id, *start, n);
      }
      case 3: {
        absl::StatusOr<SeqId> child = cache_->Fork(id);
        if (!child.ok()) Die("fork:", child.status());
        s.writable_from = s.length();
        ref_.seqs()[*child] = s;
        return;
      }
      case 4: {
        const int64_t length = s.length() == 0 ? 0 : Next() % (s.length() + 1);
        if (absl::Status st = cache_->Truncate(id, length); !st.ok()) Die("truncate:", st);
        return ref_.Truncate(s, length);
      }
      case 5:
        if (absl::Status st = cache_->Free(id); !st.ok()) Die("free:", st);
        ref_.seqs().erase(id);
        if (cache_->Free(id).code() != absl::StatusCode::kNotFound) Die("double free accepted");
        return;
      case 6: {
        absl::StatusOr<std::string> payload = cache_->Serialize(id);
        if (!payload.ok()) Die("serialize:", payload.status());
        absl::StatusOr<SeqId> restored = cache_->Restore(*payload);
        if (!restored.ok()) {
          if (restored.status().code() == absl::StatusCode::kResourceExhausted) return;
          Die("restore:", restored.status());
        }
        test::ReferenceSequence copy = s;
        copy.writable_from = 0;
        ref_.seqs()[*restored] = copy;
        return Compare(*restored);
      }
      default:
        return Compare(id);
    }
  }

  void Created(SeqId id, const std::vector<int32_t>& prompt, int64_t cached) {
    test::ReferenceSequence& s = ref_.at(id);
    if (cached % config_.block_size != 0 || (cached > 0 && cached >= int64_t(prompt.size()))) {
      Die("bad cached_tokens");
    }
    ref_.Append(s, cached, prompt.data());
    for (int32_t layer = 0; layer < config_.num_layers; ++layer) {
      for (int64_t p = 0; p < cached; ++p) {
        for (int64_t e = 0; e < ref_.row(); ++e) {
          s.k[static_cast<size_t>(layer)][static_cast<size_t>(p * ref_.row() + e)] =
              ref_.ModelValue(s, p, layer, false, e);
          s.v[static_cast<size_t>(layer)][static_cast<size_t>(p * ref_.row() + e)] =
              ref_.ModelValue(s, p, layer, true, e);
        }
      }
    }
    s.writable_from = cached;
    Compare(id);
  }

  void Compare(SeqId id) {
    const test::ReferenceSequence& s = ref_.at(id);
    if (*cache_->Length(id) != s.length()) Die("length differs");
    if (*cache_->WritableFrom(id) != s.writable_from) Die("writable_from differs");
    absl::StatusOr<std::vector<int32_t>> tokens = cache_->Tokens(id);
    if (tokens.ok() != s.tokens_known || (tokens.ok() && *tokens != s.tokens)) Die("tokens differ");
    std::vector<float> k(static_cast<size_t>(s.length() * ref_.row())), v(k.size());
    for (int32_t layer = 0; layer < config_.num_layers; ++layer) {
      if (!cache_->ReadKv(id, layer, 0, s.length(), absl::MakeSpan(k), absl::MakeSpan(v)).ok()) {
        Die("read failed");
      }
      if (k != s.k[static_cast<size_t>(layer)] || v != s.v[static_cast<size_t>(layer)]) {
        Die("K/V differs from the reference");
      }
    }
  }

  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  CacheConfig config_;
  test::ReferenceCache ref_;
  std::unique_ptr<PagedKvCache> cache_;
};

}  // namespace
}  // namespace pagedkv::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  pagedkv::fuzz::Interpreter(data, size).Run();
  return 0;
}

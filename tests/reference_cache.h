// The oracle for the differential test: a simple contiguous KV cache, one growable K and V array
// per sequence and layer, the way the seed caches pagedkv replaces store it.
#ifndef PAGEDKV_TESTS_REFERENCE_CACHE_H_
#define PAGEDKV_TESTS_REFERENCE_CACHE_H_

#include <algorithm>
#include <cstdint>
#include <map>
#include <vector>

#include "pagedkv/config.h"
#include "pagedkv/dtype.h"

namespace pagedkv::test {

struct ReferenceSequence {
  std::vector<int32_t> tokens;  // Meaningful where ids were given; 0 elsewhere.
  bool tokens_known = true;     // As the cache reports it: false after a reserve without ids.
  // Leading positions whose ids (and so whose prefix) are known: their K/V is a function of
  // (salt, tokens[0..pos]), as a model's would be, so prefix sharing must reproduce it exactly.
  int64_t known_prefix = 0;
  std::vector<uint64_t> prefix_hash;  // Per position, valid below known_prefix.
  uint64_t salt = 0;
  int64_t writable_from = 0;
  std::vector<std::vector<float>> k, v;  // Per layer: [length][num_kv_heads][head_dim].

  int64_t length() const { return static_cast<int64_t>(tokens.size()); }
};

class ReferenceCache {
 public:
  explicit ReferenceCache(const CacheConfig& config) : config_(config) {}

  int64_t row() const { return int64_t{config_.num_kv_heads} * config_.head_dim; }
  std::map<int64_t, ReferenceSequence>& seqs() { return seqs_; }
  ReferenceSequence& at(int64_t id) { return seqs_.at(id); }

  ReferenceSequence& Create(int64_t id, uint64_t salt) {
    ReferenceSequence& s = seqs_[id];
    s.salt = salt;
    s.k.assign(static_cast<size_t>(config_.num_layers), {});
    s.v.assign(static_cast<size_t>(config_.num_layers), {});
    return s;
  }

  // Appends n positions; ids may be null (unknown). K/V of new positions start at 0 until written.
  void Append(ReferenceSequence& s, int64_t n, const int32_t* ids) {
    if (n == 0) return;
    const bool extend_known = ids != nullptr && s.known_prefix == s.length();
    if (ids == nullptr) s.tokens_known = false;
    for (int64_t i = 0; i < n; ++i) {
      const int32_t t = ids ? ids[i] : 0;
      s.tokens.push_back(t);
      const uint64_t parent = s.prefix_hash.empty() ? Mix(s.salt ^ 0x51u) : s.prefix_hash.back();
      s.prefix_hash.push_back(Mix(parent ^ (static_cast<uint64_t>(t) + 0x9e37u)));
    }
    if (extend_known) s.known_prefix += n;
    for (auto* per_layer : {&s.k, &s.v}) {
      for (auto& layer : *per_layer) layer.resize(static_cast<size_t>(s.length() * row()), 0.0f);
    }
  }

  void Truncate(ReferenceSequence& s, int64_t length) {
    s.tokens.resize(static_cast<size_t>(length));
    s.prefix_hash.resize(static_cast<size_t>(length));
    s.known_prefix = std::min(s.known_prefix, length);
    s.writable_from = std::min(s.writable_from, length);
    if (length == 0) s.tokens_known = true;
    for (auto* per_layer : {&s.k, &s.v}) {
      for (auto& layer : *per_layer) layer.resize(static_cast<size_t>(length * row()));
    }
  }

  // The K (or V) element a model would produce at `pos`, rounded to the storage dtype.
  float ModelValue(const ReferenceSequence& s, int64_t pos, int32_t layer, bool is_value,
                   int64_t element) const {
    const uint64_t h = Mix(s.prefix_hash[static_cast<size_t>(pos)] ^
                           (static_cast<uint64_t>(layer) << 40) ^ (is_value ? 1ull << 39 : 0) ^
                           static_cast<uint64_t>(element));
    return RoundTo(static_cast<float>(static_cast<double>(h >> 11) * 0x1.0p-53 * 4.0 - 2.0));
  }

  float RoundTo(float x) const { return RoundTrip(config_.dtype, x); }

  static uint64_t Mix(uint64_t x) {  // splitmix64 finalizer
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
  }

 private:
  CacheConfig config_;
  std::map<int64_t, ReferenceSequence> seqs_;
};

}  // namespace pagedkv::test

#endif  // PAGEDKV_TESTS_REFERENCE_CACHE_H_

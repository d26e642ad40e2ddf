// The randomized differential driver: random operations on a PagedKvCache and on the contiguous
// reference, every value read back compared and CheckInvariants() after every operation. Used by
// differential_test.cc (CI) and by pagedkv-stress (long runs).
#ifndef PAGEDKV_TESTS_DIFFERENTIAL_DRIVER_H_
#define PAGEDKV_TESTS_DIFFERENTIAL_DRIVER_H_

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "reference_cache.h"
#include "test_util.h"

namespace pagedkv::test {

// A small model in a pool of 512 token slots, so that running out of blocks comes often.
inline CacheConfig DifferentialConfig(int32_t block_size, DType dtype, bool prefix_caching,
                                      EvictionOrder eviction_order = EvictionOrder::kLru) {
  CacheConfig config = SmallConfig(block_size, /*num_blocks=*/512 / block_size, dtype);
  config.max_seq_len = 200;
  config.enable_prefix_caching = prefix_caching;
  config.eviction_order = eviction_order;
  return config;
}


class Driver {
 public:
  Driver(const CacheConfig& config, uint64_t seed)
      : config_(config),
        unit_(std::max(config.block_size, 8)),
        ref_(config),
        rng_(seed),
        cache_(test::MakeCache(config)) {
    // A few base prompts so that prefixes repeat, across both salts.
    for (int p = 0; p < 4; ++p) {
      std::vector<int32_t> base(static_cast<size_t>(Uniform(0, 3 * unit_ + 8)));
      for (int32_t& t : base) t = static_cast<int32_t>(Uniform(0, 50));
      bases_.push_back(base);
    }
  }

  // Runs `ops` random operations; stops at the first failure. `progress`, when given, is called
  // with the operations done every 1% of the run.
  void Run(int64_t ops, const std::function<void(int64_t)>& progress = nullptr) {
    ASSERT_NE(cache_, nullptr);
    const int64_t every = std::max<int64_t>(1, ops / 100);
    for (int64_t op = 0; op < ops; ++op) {
      if (progress && op % every == 0) progress(op);
      SCOPED_TRACE(absl::StrCat("op ", op));
      Step();
      if (::testing::Test::HasFatalFailure()) return;
      const absl::Status inv = cache_->CheckInvariants();
      ASSERT_TRUE(inv.ok()) << "after op " << op << " (" << last_op_ << "): " << inv;
      if (op % 256 == 0) {
        CompareAll();
        if (::testing::Test::HasFatalFailure()) return;
      }
    }
    CompareAll();
  }

  int64_t exhausted() const { return exhausted_; }
  int64_t prefix_hit_tokens() const { return cache_->Stats().prefix_hit_tokens; }
  int64_t cow_copies() const { return cache_->Stats().cow_copies; }

 private:
  int64_t Uniform(int64_t lo, int64_t hi) {  // [lo, hi]
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng_);
  }
  bool Chance(double p) { return std::bernoulli_distribution(p)(rng_); }

  SeqId RandomSeq() {
    auto it = ref_.seqs().begin();
    std::advance(it, Uniform(0, static_cast<int64_t>(ref_.seqs().size()) - 1));
    return it->first;
  }

  void Step() {
    const size_t live = ref_.seqs().size();
    const bool crowded = live >= 12 || cache_->pool().num_available() < cache_->pool().num_blocks() / 10;
    const int64_t roll = Uniform(0, 99);
    if (live == 0 || (roll < 10 && !crowded)) return OpCreate();
    if (crowded && roll < 20) return OpFree(RandomSeq());
    if (roll < 35) return OpAppend(RandomSeq());
    if (roll < 50) return OpBatch();
    if (roll < 57 && live < 12) return OpFork(RandomSeq());
    if (roll < 66) return OpTruncate(RandomSeq());
    if (roll < 71) return OpFree(RandomSeq());
    if (roll < 74) return OpSerializeRestore(RandomSeq());
    if (roll < 84) return OpRewrite(RandomSeq());
    if (roll < 90) return OpAppendKv(RandomSeq());
    return OpBad(RandomSeq());
  }

  std::vector<int32_t> RandomIds(int64_t n) {
    std::vector<int32_t> ids(static_cast<size_t>(n));
    for (int32_t& t : ids) t = static_cast<int32_t>(Uniform(0, 50));
    return ids;
  }

  // K/V for positions [start, start + n) of one layer: the model's values where the prefix is
  // known, random otherwise. Stored into the reference as well.
  std::vector<float> MakeKv(ReferenceSequence& s, int32_t layer, bool is_value, int64_t start,
                            int64_t n) {
    const int64_t row = ref_.row();
    std::vector<float> out(static_cast<size_t>(n * row));
    std::uniform_real_distribution<float> value(-2.0f, 2.0f);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t pos = start + i;
      for (int64_t e = 0; e < row; ++e) {
        out[static_cast<size_t>(i * row + e)] = pos < s.known_prefix
                                                    ? ref_.ModelValue(s, pos, layer, is_value, e)
                                                    : ref_.RoundTo(value(rng_));
      }
    }
    auto& dst = (is_value ? s.v : s.k)[static_cast<size_t>(layer)];
    std::copy(out.begin(), out.end(), dst.begin() + start * row);
    return out;
  }

  void WriteAllLayers(SeqId id, int64_t start, int64_t n) {
    ReferenceSequence& s = ref_.at(id);
    for (int32_t layer = 0; layer < config_.num_layers; ++layer) {
      std::vector<float> k = MakeKv(s, layer, false, start, n);
      std::vector<float> v = MakeKv(s, layer, true, start, n);
      PKV_ASSERT_OK(cache_->WriteKv(id, layer, start, k, v));
    }
  }

  void ExpectExhaustedAndUnchanged(const absl::Status& s) {
    ASSERT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << last_op_ << ": " << s;
    ++exhausted_;
    CompareAll();
  }

  // Reserves n tokens for `id` (with ids unless `unknown`) and writes them; mirrors the reference.
  void ReserveAndWrite(SeqId id, int64_t n, bool unknown) {
    ReferenceSequence& s = ref_.at(id);
    if (s.length() + n > config_.max_seq_len) n = config_.max_seq_len - s.length();
    std::vector<int32_t> ids = RandomIds(n);
    absl::StatusOr<int64_t> start =
        unknown ? cache_->Reserve(id, n) : cache_->Reserve(id, absl::MakeConstSpan(ids));
    if (!start.ok()) return ExpectExhaustedAndUnchanged(start.status());
    ASSERT_EQ(*start, s.length());
    ref_.Append(s, n, unknown ? nullptr : ids.data());
    WriteAllLayers(id, *start, n);
    Compare(id);
  }

  void OpCreate() {
    last_op_ = "create";
    std::vector<int32_t> prompt;
    if (Chance(0.8)) {
      prompt = bases_[static_cast<size_t>(Uniform(0, 3))];
      const std::vector<int32_t> suffix = RandomIds(Uniform(0, 2 * unit_));
      prompt.insert(prompt.end(), suffix.begin(), suffix.end());
    }
    const uint64_t salt = static_cast<uint64_t>(Uniform(0, 1));
    PKV_ASSIGN_OR_FAIL(NewSequence seq, cache_->CreateSequence(prompt, salt));
    const int64_t cached = seq.cached_tokens;
    if (!config_.enable_prefix_caching || prompt.empty()) {
      ASSERT_EQ(cached, 0);
    } else {
      ASSERT_EQ(cached % config_.block_size, 0);
      ASSERT_LT(cached, static_cast<int64_t>(prompt.size()));
    }
    ReferenceSequence& s = ref_.Create(seq.id, salt);
    ref_.Append(s, cached, prompt.data());
    for (int32_t layer = 0; layer < config_.num_layers; ++layer) {
      for (int64_t pos = 0; pos < cached; ++pos) {
        for (int64_t e = 0; e < ref_.row(); ++e) {
          s.k[static_cast<size_t>(layer)][static_cast<size_t>(pos * ref_.row() + e)] =
              ref_.ModelValue(s, pos, layer, false, e);
          s.v[static_cast<size_t>(layer)][static_cast<size_t>(pos * ref_.row() + e)] =
              ref_.ModelValue(s, pos, layer, true, e);
        }
      }
    }
    s.writable_from = cached;
    Compare(seq.id);  // The shared K/V must be exactly the model's for this prompt.
    // Prefill the rest of the prompt.
    const int64_t rest = static_cast<int64_t>(prompt.size()) - cached;
    if (rest == 0) return;
    absl::Span<const int32_t> ids = absl::MakeConstSpan(prompt).subspan(static_cast<size_t>(cached));
    absl::StatusOr<int64_t> start = cache_->Reserve(seq.id, ids);
    if (!start.ok()) return ExpectExhaustedAndUnchanged(start.status());
    ref_.Append(s, rest, ids.data());
    WriteAllLayers(seq.id, cached, rest);
    Compare(seq.id);
  }

  void OpAppend(SeqId id) {
    last_op_ = "append";
    ReserveAndWrite(id, Uniform(1, 2 * unit_), Chance(0.15));
  }

  void OpBatch() {
    last_op_ = "batch";
    std::vector<SeqId> ids;
    for (auto& [id, s] : ref_.seqs()) {
      if (s.length() < config_.max_seq_len && Chance(0.5)) ids.push_back(id);
    }
    if (ids.empty()) return;
    std::vector<int32_t> tokens = RandomIds(static_cast<int64_t>(ids.size()));
    std::vector<ReserveRequest> requests;
    for (size_t i = 0; i < ids.size(); ++i) {
      requests.push_back({ids[i], 1, absl::MakeConstSpan(&tokens[i], 1)});
    }
    absl::Status s = cache_->ReserveBatch(requests);
    if (!s.ok()) return ExpectExhaustedAndUnchanged(s);
    for (size_t i = 0; i < ids.size(); ++i) {
      ReferenceSequence& r = ref_.at(ids[i]);
      ref_.Append(r, 1, &tokens[i]);
      WriteAllLayers(ids[i], r.length() - 1, 1);
      Compare(ids[i]);
    }
  }

  void OpFork(SeqId id) {
    last_op_ = "fork";
    PKV_ASSIGN_OR_FAIL(SeqId child, cache_->Fork(id));
    ReferenceSequence& parent = ref_.at(id);
    parent.writable_from = parent.length();
    ref_.seqs()[child] = parent;  // A deep copy, as a contiguous cache would make.
    Compare(id);
    Compare(child);
  }

  void OpTruncate(SeqId id) {
    last_op_ = "truncate";
    ReferenceSequence& s = ref_.at(id);
    const int64_t length = Chance(0.7) ? std::max<int64_t>(0, s.length() - Uniform(0, 5))
                                       : Uniform(0, s.length());
    PKV_ASSERT_OK(cache_->Truncate(id, length));
    ref_.Truncate(s, length);
    Compare(id);
  }

  void OpFree(SeqId id) {
    last_op_ = "free";
    PKV_ASSERT_OK(cache_->Free(id));
    ref_.seqs().erase(id);
    ASSERT_FALSE(cache_->Contains(id));
  }

  void OpSerializeRestore(SeqId id) {
    last_op_ = "serialize";
    PKV_ASSIGN_OR_FAIL(std::string payload, cache_->Serialize(id));
    absl::StatusOr<SeqId> restored = cache_->Restore(payload);
    if (!restored.ok()) return ExpectExhaustedAndUnchanged(restored.status());
    ReferenceSequence copy = ref_.at(id);
    copy.writable_from = 0;
    ref_.seqs()[*restored] = copy;
    Compare(*restored);
  }

  void OpRewrite(SeqId id) {
    last_op_ = "rewrite";
    ReferenceSequence& s = ref_.at(id);
    if (s.writable_from == s.length()) return;
    const int64_t start = Uniform(s.writable_from, s.length() - 1);
    const int64_t n = Uniform(1, s.length() - start);
    const int32_t layer = static_cast<int32_t>(Uniform(0, config_.num_layers - 1));
    std::vector<float> k = MakeKv(s, layer, false, start, n);
    std::vector<float> v = MakeKv(s, layer, true, start, n);
    PKV_ASSERT_OK(cache_->WriteKv(id, layer, start, k, v));
    Compare(id);
  }

  void OpAppendKv(SeqId id) {
    last_op_ = "append_kv";
    ReferenceSequence& s = ref_.at(id);
    const int64_t n = std::min<int64_t>(Uniform(1, unit_ + 2),
                                        config_.max_seq_len - s.length());
    std::vector<int32_t> ids = RandomIds(n);
    // Values are generated against a scratch copy: the reference changes only on success.
    ReferenceSequence next = s;
    ref_.Append(next, n, ids.data());
    std::vector<float> k, v;
    for (int32_t layer = 0; layer < config_.num_layers; ++layer) {
      std::vector<float> kl = MakeKv(next, layer, false, s.length(), n);
      std::vector<float> vl = MakeKv(next, layer, true, s.length(), n);
      k.insert(k.end(), kl.begin(), kl.end());
      v.insert(v.end(), vl.begin(), vl.end());
    }
    absl::Status status = cache_->AppendKv(id, k, v, ids);
    if (!status.ok()) return ExpectExhaustedAndUnchanged(status);
    s = std::move(next);
    Compare(id);
  }

  // Calls that must fail with a specific code and change nothing.
  void OpBad(SeqId id) {
    last_op_ = "bad";
    ReferenceSequence& s = ref_.at(id);
    const std::vector<float> row(static_cast<size_t>(ref_.row()), 1.0f);
    switch (Uniform(0, 4)) {
      case 0:
        if (s.writable_from > 0) {
          PKV_ASSERT_CODE(cache_->WriteKv(id, 0, s.writable_from - 1, row, row),
                          absl::StatusCode::kFailedPrecondition);
        }
        break;
      case 1:
        PKV_ASSERT_CODE(cache_->Truncate(id, s.length() + 1), absl::StatusCode::kInvalidArgument);
        break;
      case 2:
        PKV_ASSERT_CODE(cache_->Reserve(id, config_.max_seq_len - s.length() + 1),
                        absl::StatusCode::kInvalidArgument);
        break;
      case 3:
        PKV_ASSERT_CODE(cache_->ReserveBatch({{id, 1, {}}, {id, 1, {}}}),
                        absl::StatusCode::kInvalidArgument);
        break;
      case 4: {
        PKV_ASSIGN_OR_FAIL(SeqId gone, cache_->Fork(id));
        s.writable_from = s.length();  // Forking makes the shared positions read-only.
        PKV_ASSERT_OK(cache_->Free(gone));
        PKV_ASSERT_CODE(cache_->Reserve(gone, 1), absl::StatusCode::kNotFound);
        PKV_ASSERT_CODE(cache_->Free(gone), absl::StatusCode::kNotFound);
        break;
      }
    }
    Compare(id);
  }

  void Compare(SeqId id) {
    const ReferenceSequence& s = ref_.at(id);
    ASSERT_EQ(*cache_->Length(id), s.length()) << "seq " << id << " after " << last_op_;
    ASSERT_EQ(*cache_->WritableFrom(id), s.writable_from) << "seq " << id << " after " << last_op_;
    absl::StatusOr<std::vector<int32_t>> tokens = cache_->Tokens(id);
    ASSERT_EQ(tokens.ok(), s.tokens_known) << tokens.status();
    if (tokens.ok()) {
      ASSERT_EQ(*tokens, s.tokens) << "seq " << id << " after " << last_op_;
    }
    const size_t n = static_cast<size_t>(s.length() * ref_.row());
    std::vector<float> k(n), v(n);
    for (int32_t layer = 0; layer < config_.num_layers; ++layer) {
      PKV_ASSERT_OK(cache_->ReadKv(id, layer, 0, s.length(), absl::MakeSpan(k), absl::MakeSpan(v)));
      ASSERT_EQ(k, s.k[static_cast<size_t>(layer)]) << "K of seq " << id << " layer " << layer
                                                     << " after " << last_op_;
      ASSERT_EQ(v, s.v[static_cast<size_t>(layer)]) << "V of seq " << id << " layer " << layer
                                                     << " after " << last_op_;
    }
  }

  void CompareAll() {
    ASSERT_EQ(cache_->num_sequences(), static_cast<int64_t>(ref_.seqs().size()));
    for (auto& [id, s] : ref_.seqs()) {
      Compare(id);
      if (::testing::Test::HasFatalFailure()) return;
    }
  }

  CacheConfig config_;
  int64_t unit_;  // Typical operation size in tokens: a block, at least 8 tokens.
  ReferenceCache ref_;
  std::mt19937_64 rng_;
  std::unique_ptr<PagedKvCache> cache_;
  std::vector<std::vector<int32_t>> bases_;
  std::string last_op_;
  int64_t exhausted_ = 0;
};

}  // namespace pagedkv::test

#endif  // PAGEDKV_TESTS_DIFFERENTIAL_DRIVER_H_

// Helpers shared by the tests: status assertions, configs and K/V fill patterns.
#ifndef PAGEDKV_TESTS_TEST_UTIL_H_
#define PAGEDKV_TESTS_TEST_UTIL_H_

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gtest/gtest.h"
#include "pagedkv/pagedkv.h"

#define PKV_ASSERT_OK(expr)                                   \
  do {                                                        \
    const absl::Status pkv_status_ = ::pagedkv::test::ToStatus(expr); \
    ASSERT_TRUE(pkv_status_.ok()) << #expr << ": " << pkv_status_;     \
  } while (0)

#define PKV_EXPECT_OK(expr)                                   \
  do {                                                        \
    const absl::Status pkv_status_ = ::pagedkv::test::ToStatus(expr); \
    EXPECT_TRUE(pkv_status_.ok()) << #expr << ": " << pkv_status_;     \
  } while (0)

// Asserts `expr` fails with `code`.
#define PKV_ASSERT_CODE(expr, want_code)                                              \
  do {                                                                           \
    const absl::Status pkv_status_ = ::pagedkv::test::ToStatus(expr);            \
    ASSERT_EQ(pkv_status_.code(), want_code) << #expr << ": " << pkv_status_;          \
  } while (0)

// Value of a StatusOr, failing the test (and returning) when it is an error.
#define PKV_ASSIGN_OR_FAIL(lhs, expr)                                \
  auto PKV_CONCAT(pkv_or_, __LINE__) = (expr);                       \
  ASSERT_TRUE(PKV_CONCAT(pkv_or_, __LINE__).ok())                    \
      << #expr << ": " << PKV_CONCAT(pkv_or_, __LINE__).status();    \
  lhs = *std::move(PKV_CONCAT(pkv_or_, __LINE__))
#define PKV_CONCAT_INNER(a, b) a##b
#define PKV_CONCAT(a, b) PKV_CONCAT_INNER(a, b)

namespace pagedkv::test {

inline absl::Status ToStatus(const absl::Status& s) { return s; }
template <typename T>
absl::Status ToStatus(const absl::StatusOr<T>& s) {
  return s.status();
}

// The integer in environment variable `name`, or `fallback` when it is not set: how long test
// runs are stretched outside CI.
inline int64_t EnvOr(const char* name, int64_t fallback) {
  const char* value = std::getenv(name);
  return value != nullptr ? std::atoll(value) : fallback;
}

// A small model: fast to check exhaustively.
inline CacheConfig SmallConfig(int32_t block_size = 4, int32_t num_blocks = 16,
                               DType dtype = DType::kF32) {
  CacheConfig config;
  config.num_layers = 2;
  config.num_kv_heads = 2;
  config.head_dim = 8;
  config.block_size = block_size;
  config.num_blocks = num_blocks;
  config.dtype = dtype;
  config.max_seq_len = 256;
  return config;
}

inline std::unique_ptr<PagedKvCache> MakeCache(const CacheConfig& config) {
  absl::StatusOr<std::unique_ptr<PagedKvCache>> cache = PagedKvCache::Create(config);
  EXPECT_TRUE(cache.ok()) << cache.status();
  return cache.ok() ? *std::move(cache) : nullptr;
}

// Deterministic K (or V, with is_value) for n tokens from `first`, one layer:
// [n][num_kv_heads][head_dim], already rounded to the storage dtype.
inline std::vector<float> Pattern(const CacheConfig& config, int64_t first, int64_t n,
                                  int32_t layer, bool is_value, float seed = 0.0f) {
  std::vector<float> out;
  out.reserve(static_cast<size_t>(n * config.num_kv_heads * config.head_dim));
  for (int64_t t = 0; t < n; ++t) {
    for (int32_t h = 0; h < config.num_kv_heads; ++h) {
      for (int32_t d = 0; d < config.head_dim; ++d) {
        const float x = seed + 0.001f * static_cast<float>(first + t) + 0.1f * layer +
                        0.01f * h + 0.0001f * d + (is_value ? 0.5f : 0.0f);
        out.push_back(RoundTrip(config.dtype, x));
      }
    }
  }
  return out;
}

// Reserves n tokens (with ids first_token, first_token + 1, ...) and writes Pattern K/V into
// every layer. Returns the first position.
inline absl::StatusOr<int64_t> ReserveAndWrite(PagedKvCache& cache, SeqId seq, int64_t n,
                                               float seed = 0.0f, int32_t first_token = 0) {
  std::vector<int32_t> tokens(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) tokens[static_cast<size_t>(i)] = first_token + int32_t(i);
  absl::StatusOr<int64_t> start = cache.Reserve(seq, tokens);
  if (!start.ok()) return start;
  for (int32_t layer = 0; layer < cache.config().num_layers; ++layer) {
    absl::Status s = cache.WriteKv(seq, layer, *start,
                                   Pattern(cache.config(), *start, n, layer, false, seed),
                                   Pattern(cache.config(), *start, n, layer, true, seed));
    if (!s.ok()) return s;
  }
  return start;
}

// K (or V) of positions [0, Length(seq)) of one layer, read back as f32.
inline std::vector<float> ReadAll(const PagedKvCache& cache, SeqId seq, int32_t layer,
                                  bool is_value) {
  const int64_t length = *cache.Length(seq);
  const size_t n = static_cast<size_t>(length * cache.config().num_kv_heads *
                                       cache.config().head_dim);
  std::vector<float> k(n), v(n);
  EXPECT_TRUE(cache.ReadKv(seq, layer, 0, length, absl::MakeSpan(k), absl::MakeSpan(v)).ok());
  return is_value ? v : k;
}

// Everything observable about a cache, to show that a failed call changed nothing.
struct Snapshot {
  struct Seq {
    SeqId id;
    int64_t length;
    int64_t writable_from;
    std::vector<BlockId> blocks;
    std::vector<int32_t> tokens;  // Empty when unknown.
    std::vector<std::vector<float>> kv;  // Per layer: K then V.
    bool operator==(const Seq&) const = default;
  };
  std::vector<Seq> seqs;
  int32_t free_blocks, evictable_blocks, used_blocks, cached_blocks;
  bool operator==(const Snapshot&) const = default;
};

inline Snapshot TakeSnapshot(const PagedKvCache& cache) {
  Snapshot snap;
  for (SeqId id : cache.SequenceIds()) {
    Snapshot::Seq s;
    s.id = id;
    s.length = *cache.Length(id);
    s.writable_from = *cache.WritableFrom(id);
    absl::Span<const BlockId> table = *cache.BlockTable(id);
    s.blocks.assign(table.begin(), table.end());
    if (auto tokens = cache.Tokens(id); tokens.ok()) s.tokens = *tokens;
    if (cache.pool().has_storage()) {
      for (int32_t layer = 0; layer < cache.config().num_layers; ++layer) {
        s.kv.push_back(ReadAll(cache, id, layer, false));
        s.kv.push_back(ReadAll(cache, id, layer, true));
      }
    }
    snap.seqs.push_back(std::move(s));
  }
  const PoolStats st = cache.pool().stats();
  snap.free_blocks = st.free_blocks;
  snap.evictable_blocks = st.evictable_blocks;
  snap.used_blocks = st.used_blocks;
  snap.cached_blocks = st.cached_blocks;
  return snap;
}

}  // namespace pagedkv::test

#endif  // PAGEDKV_TESTS_TEST_UTIL_H_

// Many threads on one cache: disjoint sequences, forks handed to other threads (shared blocks),
// reservations on both the shared-lock and the exclusive path, truncation of blocks that other
// threads' forks still hold, attention reading while others change the cache. Then invariants and every byte against the
// contiguous reference. Run under TSan in CI. PAGEDKV_STRESS_OPS sets operations per thread.
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "pagedkv/attention.h"
#include "reference_cache.h"
#include "test_util.h"

namespace pagedkv {
namespace {

using test::ReferenceCache;
using test::ReferenceSequence;

int64_t OpsPerThread() { return test::EnvOr("PAGEDKV_STRESS_OPS", 4000); }

struct Owned {
  SeqId id;
  ReferenceSequence ref;
};

// A sequence handed from one thread to another.
struct Mailbox {
  std::mutex mu;
  std::vector<Owned> items;
};

class Worker {
 public:
  Worker(PagedKvCache& cache, const CacheConfig& config, int index, std::vector<Mailbox>& boxes,
         std::atomic<int64_t>& failures)
      : cache_(cache), config_(config), ref_(config), index_(index), boxes_(boxes),
        failures_(failures), rng_(static_cast<uint32_t>(index) * 7919u + 1) {}

  void Run(int64_t ops) {
    for (int64_t op = 0; op < ops && failures_.load() == 0; ++op) Step();
  }
  std::vector<Owned>& owned() { return owned_; }

 private:
  void Fail(const std::string& what) {
    ++failures_;
    ADD_FAILURE() << "thread " << index_ << ": " << what;
  }
  int64_t Uniform(int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng_);
  }

  void Step() {
    TakeMail();
    const int64_t roll = Uniform(0, 99);
    if (owned_.empty() || (roll < 10 && owned_.size() < 6)) return Create();
    Owned& o = owned_[static_cast<size_t>(Uniform(0, static_cast<int64_t>(owned_.size()) - 1))];
    if (owned_.size() > 8) return Free(o);  // Keeps each thread's population small.
    if (roll < 40) return Append(o);
    if (roll < 50) return StepAll();
    if (roll < 60) return Fork(o);
    if (roll < 70) return Truncate(o);
    if (roll < 78) return Free(o);
    if (roll < 88) return Attend(o);
    return Compare(o);
  }

  void TakeMail() {
    Mailbox& box = boxes_[static_cast<size_t>(index_)];
    std::lock_guard lock(box.mu);
    for (Owned& o : box.items) owned_.push_back(std::move(o));
    box.items.clear();
  }

  void Create() {
    absl::StatusOr<NewSequence> seq = cache_.CreateSequence();
    if (!seq.ok()) return Fail(seq.status().ToString());
    Owned o{seq->id, {}};
    o.ref.k.assign(static_cast<size_t>(config_.num_layers), {});
    o.ref.v.assign(static_cast<size_t>(config_.num_layers), {});
    owned_.push_back(std::move(o));
  }

  // Reserves n tokens, with token ids (prefix caching registers full blocks: the exclusive
  // path) or without (a private tail takes the shared path), and writes their K/V.
  void Append(Owned& o) {
    const int64_t n = std::min<int64_t>(Uniform(1, 12), config_.max_seq_len - o.ref.length());
    if (n == 0) return;
    std::vector<int32_t> ids(static_cast<size_t>(n));
    for (int32_t& t : ids) t = static_cast<int32_t>(Uniform(0, 99));
    const bool with_ids = Uniform(0, 1) == 0;
    absl::StatusOr<int64_t> start =
        with_ids ? cache_.Reserve(o.id, ids) : cache_.Reserve(o.id, n);
    if (!start.ok()) {
      if (start.status().code() != absl::StatusCode::kResourceExhausted) {
        Fail(start.status().ToString());
      }
      return;
    }
    ref_.Append(o.ref, n, with_ids ? ids.data() : nullptr);
    Write(o, *start, n);
  }

  // A decode step over every sequence this thread owns: one ReserveBatch, all or nothing.
  void StepAll() {
    std::vector<ReserveRequest> step;
    for (const Owned& o : owned_) {
      if (o.ref.length() < config_.max_seq_len) step.push_back({o.id, 1, {}});
    }
    if (absl::Status s = cache_.ReserveBatch(step); !s.ok()) {
      if (s.code() != absl::StatusCode::kResourceExhausted) Fail(s.ToString());
      return;
    }
    for (Owned& o : owned_) {
      if (o.ref.length() == config_.max_seq_len) continue;
      const int64_t start = o.ref.length();
      ref_.Append(o.ref, 1, nullptr);
      Write(o, start, 1);
    }
  }

  void Write(Owned& o, int64_t start, int64_t n) {
    const int64_t row = ref_.row();
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    for (int32_t layer = 0; layer < config_.num_layers; ++layer) {
      std::vector<float> k(static_cast<size_t>(n * row)), v(k.size());
      for (size_t i = 0; i < k.size(); ++i) {
        k[i] = ref_.RoundTo(u(rng_));
        v[i] = ref_.RoundTo(u(rng_));
      }
      std::copy(k.begin(), k.end(), o.ref.k[static_cast<size_t>(layer)].begin() + start * row);
      std::copy(v.begin(), v.end(), o.ref.v[static_cast<size_t>(layer)].begin() + start * row);
      if (absl::Status s = cache_.WriteKv(o.id, layer, start, k, v); !s.ok()) {
        return Fail(s.ToString());
      }
    }
  }

  void Fork(Owned& o) {
    absl::StatusOr<SeqId> child = cache_.Fork(o.id);
    if (!child.ok()) return Fail(child.status().ToString());
    o.ref.writable_from = o.ref.length();
    Owned copy{*child, o.ref};
    // Half of the forks go to the next thread: the two threads then share blocks.
    if (Uniform(0, 1) == 0) {
      Mailbox& box = boxes_[static_cast<size_t>((index_ + 1) % boxes_.size())];
      std::lock_guard lock(box.mu);
      box.items.push_back(std::move(copy));
    } else {
      owned_.push_back(std::move(copy));
    }
  }

  void Truncate(Owned& o) {
    const int64_t length = std::max<int64_t>(0, o.ref.length() - Uniform(0, 8));
    if (absl::Status s = cache_.Truncate(o.id, length); !s.ok()) return Fail(s.ToString());
    ref_.Truncate(o.ref, length);
  }

  void Free(Owned& o) {
    if (absl::Status s = cache_.Free(o.id); !s.ok()) return Fail(s.ToString());
    std::swap(o, owned_.back());
    owned_.pop_back();
  }

  // Decode attention over this thread's sequence while the others keep changing the cache.
  void Attend(const Owned& o) {
    if (o.ref.length() == 0) return;
    PagedKvViewStorage storage;
    absl::StatusOr<PagedKvView> view = cache_.MakeView({o.id}, &storage);
    if (!view.ok()) return Fail(view.status().ToString());
    const int32_t q_heads = config_.num_kv_heads * 2;
    std::vector<float> q(static_cast<size_t>(q_heads * config_.head_dim), 0.25f);
    std::vector<float> out(q.size());
    if (absl::Status s = DecodeAttention(*view, 0, q_heads, q, absl::MakeSpan(out)); !s.ok()) {
      Fail(s.ToString());
    }
  }

  void Compare(const Owned& o) {
    const int64_t n = o.ref.length();
    std::vector<float> k(static_cast<size_t>(n * ref_.row())), v(k.size());
    for (int32_t layer = 0; layer < config_.num_layers; ++layer) {
      absl::Status s = cache_.ReadKv(o.id, layer, 0, n, absl::MakeSpan(k), absl::MakeSpan(v));
      if (!s.ok()) return Fail(s.ToString());
      if (k != o.ref.k[static_cast<size_t>(layer)] || v != o.ref.v[static_cast<size_t>(layer)]) {
        return Fail("K/V of a sequence differs from the reference");
      }
    }
  }

  PagedKvCache& cache_;
  const CacheConfig config_;
  ReferenceCache ref_;
  const int index_;
  std::vector<Mailbox>& boxes_;
  std::atomic<int64_t>& failures_;
  std::mt19937 rng_;
  std::vector<Owned> owned_;
};

TEST(ConcurrencyTest, EightThreadsMatchTheReference) {
  CacheConfig config = test::SmallConfig(/*block_size=*/4, /*num_blocks=*/400, DType::kBF16);
  config.max_seq_len = 96;
  config.enable_prefix_caching = true;  // Reservations with token ids take the exclusive path.
  auto cache = test::MakeCache(config);
  constexpr int kThreads = 8;
  std::vector<Mailbox> boxes(kThreads);
  std::atomic<int64_t> failures{0};
  std::vector<std::unique_ptr<Worker>> workers;
  for (int i = 0; i < kThreads; ++i) {
    workers.push_back(std::make_unique<Worker>(*cache, config, i, boxes, failures));
  }
  std::vector<std::thread> threads;
  const int64_t ops = OpsPerThread();
  for (auto& w : workers) threads.emplace_back([&w, ops] { w->Run(ops); });
  for (std::thread& t : threads) t.join();
  ASSERT_EQ(failures.load(), 0);

  PKV_ASSERT_OK(cache->CheckInvariants());
  const CacheStats stats = cache->Stats();
  std::printf("%d threads x %lld ops: %lld sequences left, %lld copy-on-write copies\n", kThreads,
              static_cast<long long>(ops), static_cast<long long>(stats.num_sequences),
              static_cast<long long>(stats.cow_copies));
  EXPECT_GT(stats.cow_copies, 0) << "no shared tail was ever written";
  // Everything still owned, in a thread or a mailbox, must match its reference byte for byte.
  std::vector<Owned> all;
  for (auto& w : workers) {
    for (Owned& o : w->owned()) all.push_back(std::move(o));
  }
  for (Mailbox& box : boxes) {
    for (Owned& o : box.items) all.push_back(std::move(o));
  }
  EXPECT_EQ(cache->num_sequences(), static_cast<int64_t>(all.size()));
  ReferenceCache ref(config);
  for (const Owned& o : all) {
    EXPECT_EQ(*cache->Length(o.id), o.ref.length());
    for (int32_t layer = 0; layer < config.num_layers; ++layer) {
      EXPECT_EQ(test::ReadAll(*cache, o.id, layer, false), o.ref.k[static_cast<size_t>(layer)]);
      EXPECT_EQ(test::ReadAll(*cache, o.id, layer, true), o.ref.v[static_cast<size_t>(layer)]);
    }
    absl::StatusOr<std::vector<int32_t>> tokens = cache->Tokens(o.id);
    ASSERT_EQ(tokens.ok(), o.ref.tokens_known) << tokens.status();
    if (tokens.ok()) {
      EXPECT_EQ(*tokens, o.ref.tokens);
    }
  }
  for (const Owned& o : all) PKV_ASSERT_OK(cache->Free(o.id));
  const PoolStats pool = cache->pool().stats();
  EXPECT_EQ(pool.used_blocks, 0);
  EXPECT_EQ(pool.free_blocks + pool.evictable_blocks, config.num_blocks);
  PKV_ASSERT_OK(cache->CheckInvariants());
}

}  // namespace
}  // namespace pagedkv

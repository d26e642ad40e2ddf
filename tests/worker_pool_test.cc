// The attention kernels' own thread pool (used in builds without OpenMP, the TSan one among
// them): every index exactly once, real parallelism, callers side by side, and no lost wake-up
// over many back-to-back calls (one would hang the test until ctest's timeout).
#include "attention/worker_pool.h"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace pagedkv::internal {
namespace {

TEST(WorkerPoolTest, RunsEveryIndexExactlyOnce) {
  for (int64_t n : {0, 1, 2, 3, 7, 100, 1000}) {
    for (int32_t threads : {1, 2, 3, 8}) {
      std::vector<std::atomic<int>> calls(static_cast<size_t>(n));
      PoolParallelFor(n, threads, [&](int64_t i) { calls[static_cast<size_t>(i)]++; });
      for (int64_t i = 0; i < n; ++i) {
        ASSERT_EQ(calls[static_cast<size_t>(i)].load(), 1) << "n " << n << " threads " << threads;
      }
    }
  }
}

// Two indices that wait for each other (up to 10 s) must run on two different threads.
TEST(WorkerPoolTest, TwoThreadsRunSideBySide) {
  std::atomic<int> arrived{0};
  std::mutex mu;
  std::set<std::thread::id> ids;
  PoolParallelFor(2, 2, [&](int64_t) {
    {
      std::lock_guard<std::mutex> lock(mu);
      ids.insert(std::this_thread::get_id());
    }
    arrived++;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (arrived.load() < 2 && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::yield();
    }
  });
  EXPECT_EQ(arrived.load(), 2);
  EXPECT_EQ(ids.size(), 2u) << "both indices ran on one thread";
}

// Callers on several threads at once: each gets all its indices done (a caller that finds the
// pool busy runs its own inline).
TEST(WorkerPoolTest, ConcurrentCallersEachFinish) {
  constexpr int kCallers = 4, kCalls = 200, kN = 50;
  std::atomic<int64_t> total{0};
  std::vector<std::thread> callers;
  for (int c = 0; c < kCallers; ++c) {
    callers.emplace_back([&] {
      for (int k = 0; k < kCalls; ++k) {
        std::vector<int> seen(kN, 0);
        PoolParallelFor(kN, 3, [&](int64_t i) {
          seen[static_cast<size_t>(i)]++;
          total++;
        });
        for (int v : seen) ASSERT_EQ(v, 1);
      }
    });
  }
  for (std::thread& t : callers) t.join();
  EXPECT_EQ(total.load(), int64_t{kCallers} * kCalls * kN);
}

TEST(WorkerPoolTest, ManyShortCallsInARow) {
  int64_t sum = 0;
  for (int k = 0; k < 20000; ++k) {
    std::atomic<int64_t> part{0};
    PoolParallelFor(3, 3, [&](int64_t i) { part += i + 1; });
    sum += part.load();
  }
  EXPECT_EQ(sum, 20000 * 6);
}

}  // namespace
}  // namespace pagedkv::internal

#include "attention/worker_pool.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace pagedkv::internal {
namespace {

// Workers are started up to the most helpers any call has asked for, at most this many.
constexpr int64_t kMaxWorkers = kMaxThreads - 1;

// Pauses a thread polls for before it blocks (tens of microseconds), so that back-to-back calls
// (a model's layers) wait neither for a worker to wake up nor for the caller to: without them,
// a 78 us decode call at two threads took 1.38x the time it takes with OpenMP; with them, 1.01x.
constexpr int kSpins = 2000;

inline void Pause() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

using Fn = absl::FunctionRef<void(int64_t)>;

// One job at a time: the caller publishes (fn, n) under mu_, wakes the workers, and takes
// indices itself; up to `open_` workers join, take indices until none are left, and report back.
// The caller returns once every worker that joined has finished. std::mutex, not absl::Mutex:
// TSan sees into the standard one (see ../shared/build-notes.md).
class WorkerPool {
 public:
  void Run(int64_t n, int64_t helpers, Fn fn) {
    std::unique_lock<std::mutex> owner(run_mu_, std::try_to_lock);
    if (!owner.owns_lock()) {  // Another caller's job has the workers: run this one inline.
      for (int64_t i = 0; i < n; ++i) fn(i);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      while (static_cast<int64_t>(workers_.size()) < helpers) {
        workers_.emplace_back([this] { Loop(); });
      }
      fn_ = &fn;
      n_ = n;
      next_.store(0, std::memory_order_relaxed);
      open_ = helpers;
      joined_ = 0;
      finished_.store(0, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    Take(fn, n);
    int64_t joined;
    {
      std::lock_guard<std::mutex> lock(mu_);
      open_ = 0;  // A worker that wakes from now on skips this job.
      joined = joined_;
    }
    for (int spin = 0; spin < kSpins && finished_.load(std::memory_order_acquire) != joined;
         ++spin) {
      Pause();
    }
    std::unique_lock<std::mutex> lock(mu_);
    done_.wait(lock, [&] { return finished_.load(std::memory_order_relaxed) == joined; });
    fn_ = nullptr;
  }

 private:
  void Take(Fn fn, int64_t n) {
    for (int64_t i = next_.fetch_add(1, std::memory_order_relaxed); i < n;
         i = next_.fetch_add(1, std::memory_order_relaxed)) {
      fn(i);
    }
  }

  [[noreturn]] void Loop() {
    uint64_t seen = 0;
    for (;;) {
      for (int spin = 0; spin < kSpins && generation_.load(std::memory_order_acquire) == seen;
           ++spin) {
        Pause();
      }
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait(lock, [&] {
        return generation_.load(std::memory_order_relaxed) != seen && open_ > 0;
      });
      seen = generation_.load(std::memory_order_relaxed);
      --open_;
      ++joined_;
      const Fn* fn = fn_;
      const int64_t n = n_;
      lock.unlock();
      Take(*fn, n);
      lock.lock();
      finished_.fetch_add(1, std::memory_order_release);
      done_.notify_one();
    }
  }

  std::mutex run_mu_;  // Held by the caller whose job the workers serve.
  std::mutex mu_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  const Fn* fn_ = nullptr;
  int64_t n_ = 0;
  std::atomic<int64_t> next_{0};
  int64_t open_ = 0, joined_ = 0;
  std::atomic<int64_t> finished_{0};  // Written under mu_; the caller polls it before waiting.
  // Jobs published so far. Written under mu_; workers poll it before they wait.
  std::atomic<uint64_t> generation_{0};
};

}  // namespace

void PoolParallelFor(int64_t n, int32_t threads, Fn fn) {
  const int64_t helpers = std::min({int64_t{threads} - 1, n - 1, kMaxWorkers});
  if (helpers <= 0) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  // Never destroyed: workers stay blocked in their wait until the process exits.
  static WorkerPool* const pool = new WorkerPool;
  pool->Run(n, helpers, fn);
}

}  // namespace pagedkv::internal

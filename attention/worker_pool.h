// The attention kernels' threads. ParallelFor runs work on OpenMP's pool in builds with OpenMP
// (the default with g++), and otherwise on a process-wide pool of workers, started on first use
// and kept, so no thread is created per call. Builds without OpenMP (clang without libomp, and
// the TSan build, whose OpenMP runtime is not instrumented) thus run the kernels' threaded paths
// too, and TSan race-checks them.
#ifndef PAGEDKV_ATTENTION_WORKER_POOL_H_
#define PAGEDKV_ATTENTION_WORKER_POOL_H_

#include <algorithm>
#include <cstdint>

#include "absl/functional/function_ref.h"

namespace pagedkv::internal {

// The most threads one call runs on: the caller and up to 255 workers. Asked for more, libgomp
// starts them all (30 ms a call at 2,000 threads; a crash at 100,000).
constexpr int32_t kMaxThreads = 256;

// Runs fn(i) once for every i in [0, n), on up to `threads` threads: the caller and threads - 1
// workers, which take indices in turn. Returns when every call has returned. One thread (or
// n <= 1) runs inline; while another caller's work holds the pool, this call runs inline too.
void PoolParallelFor(int64_t n, int32_t threads, absl::FunctionRef<void(int64_t)> fn);

// Runs fn(i) for i in [0, n) on `threads` threads, at most kMaxThreads: OpenMP's pool where the
// code including this is built with OpenMP, PoolParallelFor's otherwise (both created once per
// process). One thread, or n <= 1, runs inline. The kernels and the benchmarks' machine baselines
// share it, so a thread count means the same threads for both.
//
// OpenMP's team is `threads` even where n is smaller; the threads left without an index wait at
// the region's end. libgomp keeps one team from region to region and re-forms it when a region
// asks for another size: on a 16-core VM, a decode whose 32 items ran on 16 threads and whose
// partition combine (8 items) then asked for 8 took 5.9x as long (32 layers of 1 x 2,048: 62.1
// against 10.6 ms) as with the combine on the same 16.
template <typename Fn>
void ParallelFor(int64_t n, int32_t threads, const Fn& fn) {
#if defined(_OPENMP)
  const auto team = std::min(threads, kMaxThreads);
  if (team > 1 && n > 1) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(team)
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  for (int64_t i = 0; i < n; ++i) fn(i);
#else
  PoolParallelFor(n, threads, fn);
#endif
}

}  // namespace pagedkv::internal

#endif  // PAGEDKV_ATTENTION_WORKER_POOL_H_

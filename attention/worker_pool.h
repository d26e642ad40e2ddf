// The attention kernels' threads where OpenMP is not there: a process-wide pool of workers,
// started on first use and kept, so no thread is created per call. Builds with OpenMP (the
// default with g++) use its pool instead; builds without it (clang without libomp, and the
// TSan build, whose OpenMP runtime is not instrumented) use this one, so the threaded paths of
// the kernels run, and are race-checked, there too.
#ifndef PAGEDKV_ATTENTION_WORKER_POOL_H_
#define PAGEDKV_ATTENTION_WORKER_POOL_H_

#include <cstdint>

#include "absl/functional/function_ref.h"

namespace pagedkv::internal {

// Runs fn(i) once for every i in [0, n), on up to `threads` threads: the caller and threads - 1
// workers, which take indices in turn. Returns when every call has returned. One thread (or
// n <= 1) runs inline; while another caller's work holds the pool, this call runs inline too.
void PoolParallelFor(int64_t n, int32_t threads, absl::FunctionRef<void(int64_t)> fn);

}  // namespace pagedkv::internal

#endif  // PAGEDKV_ATTENTION_WORKER_POOL_H_

#include "allocator/arena.h"

#include <mimalloc.h>
#include <sys/mman.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace pagedkv::internal {

namespace {
std::atomic<int> failures_for_test{0};
}  // namespace

void FailArenaAllocationsForTest(int count) { failures_for_test.store(count); }

absl::StatusOr<std::byte*> AllocateArena(int64_t bytes) {
  const bool inject = failures_for_test.load() > 0 && failures_for_test.fetch_sub(1) > 0;
  void* p = bytes > 0 && !inject
                ? mi_zalloc_aligned(static_cast<size_t>(bytes), kArenaAlignment)
                : nullptr;
  if (p == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate the K/V arena of ", bytes, " bytes (",
                     bytes / (int64_t{1} << 20), " MiB); lower num_blocks or memory_budget_bytes"));
  }
  // Scattered pages make a TLB miss per page on 4 KiB pages; huge pages keep the whole pool in
  // reach. Only advice: where the kernel declines, nothing changes.
#if defined(MADV_HUGEPAGE)
  madvise(p, static_cast<size_t>(bytes), MADV_HUGEPAGE);
#endif
  return static_cast<std::byte*>(p);
}

void FreeArena(std::byte* arena) { mi_free(arena); }

}  // namespace pagedkv::internal

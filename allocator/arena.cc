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

// Arenas of at least this size are mapped straight from the kernel, aligned and advised to use
// huge pages before their first touch: scattered pages then cost no TLB miss each. Smaller ones
// come from mimalloc.
constexpr size_t kMapThreshold = kArenaAlignment;

size_t Rounded(int64_t bytes) {
  return (static_cast<size_t>(bytes) + kArenaAlignment - 1) / kArenaAlignment * kArenaAlignment;
}

void* Map(int64_t bytes) {
  const size_t size = Rounded(bytes);
  const size_t span = size + kArenaAlignment;
  void* raw = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const uintptr_t start = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (start + kArenaAlignment - 1) / kArenaAlignment * kArenaAlignment;
  // Give back the slack on both sides of the aligned range.
  if (aligned > start) munmap(raw, aligned - start);
  const uintptr_t end = start + span;
  if (end > aligned + size) munmap(reinterpret_cast<void*>(aligned + size), end - aligned - size);
#if defined(MADV_HUGEPAGE)
  madvise(reinterpret_cast<void*>(aligned), size, MADV_HUGEPAGE);  // Advice only.
#endif
  return reinterpret_cast<void*>(aligned);
}

}  // namespace

void FailArenaAllocationsForTest(int count) { failures_for_test.store(count); }

absl::StatusOr<std::byte*> AllocateArena(int64_t bytes) {
  const bool inject = failures_for_test.load() > 0 && failures_for_test.fetch_sub(1) > 0;
  void* p = nullptr;
  if (bytes > 0 && !inject) {
    p = static_cast<size_t>(bytes) >= kMapThreshold
            ? Map(bytes)
            : mi_zalloc_aligned(static_cast<size_t>(bytes), kArenaAlignment);
  }
  if (p == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate the K/V arena of ", bytes, " bytes (",
                     bytes / (int64_t{1} << 20), " MiB); lower num_blocks or memory_budget_bytes"));
  }
  return static_cast<std::byte*>(p);
}

void FreeArena(std::byte* arena, int64_t bytes) {
  if (static_cast<size_t>(bytes) >= kMapThreshold) {
    munmap(arena, Rounded(bytes));
  } else {
    mi_free(arena);
  }
}

}  // namespace pagedkv::internal

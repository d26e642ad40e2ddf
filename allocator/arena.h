// The one allocation behind a BlockPool's K/V pools.
#ifndef PAGEDKV_ALLOCATOR_ARENA_H_
#define PAGEDKV_ALLOCATOR_ARENA_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/statusor.h"

namespace pagedkv::internal {

// Alignment of every arena: a 2 MiB huge page, so the kernel can back it with huge pages.
inline constexpr size_t kArenaAlignment = size_t{2} << 20;

// Zeroed, kArenaAlignment-aligned memory of `bytes`: mapped from the kernel with huge pages
// advised when large, from mimalloc when small. kResourceExhausted, naming the size, when it
// cannot be had.
absl::StatusOr<std::byte*> AllocateArena(int64_t bytes);
// Returns an arena; `bytes` as it was allocated.
void FreeArena(std::byte* arena, int64_t bytes);

// Test hook: the next `count` arena allocations fail as if the memory were not there.
void FailArenaAllocationsForTest(int count);

}  // namespace pagedkv::internal

#endif  // PAGEDKV_ALLOCATOR_ARENA_H_

// The one allocation behind a BlockPool's K/V pools.
#ifndef PAGEDKV_ALLOCATOR_ARENA_H_
#define PAGEDKV_ALLOCATOR_ARENA_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/statusor.h"

namespace pagedkv::internal {

// Alignment of every arena: a 2 MiB huge page, so the kernel can back it with huge pages.
inline constexpr size_t kArenaAlignment = size_t{2} << 20;

// Zeroed, kArenaAlignment-aligned memory of `bytes` from mimalloc. kResourceExhausted, naming the
// size, when it cannot be had.
absl::StatusOr<std::byte*> AllocateArena(int64_t bytes);
void FreeArena(std::byte* arena);

// Test hook: the next `count` arena allocations fail as if the memory were not there.
void FailArenaAllocationsForTest(int count);

}  // namespace pagedkv::internal

#endif  // PAGEDKV_ALLOCATOR_ARENA_H_

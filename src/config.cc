#include "pagedkv/config.h"

#include <cstdint>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace pagedkv {

absl::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "f32";
    case DType::kBF16:
      return "bf16";
    case DType::kF16:
      return "f16";
  }
  return "unknown";
}

int64_t CacheConfig::BlockBytesPerLayer() const {
  return int64_t{num_kv_heads} * block_size * head_dim * DTypeSize(dtype);
}

int64_t CacheConfig::BlockBytes() const { return 2 * int64_t{num_layers} * BlockBytesPerLayer(); }

int64_t CacheConfig::BytesPerToken() const {
  return 2 * int64_t{num_layers} * num_kv_heads * head_dim * DTypeSize(dtype);
}

namespace {

absl::Status OutOfRange(absl::string_view field, int64_t value, absl::string_view want) {
  return absl::InvalidArgumentError(
      absl::StrCat("CacheConfig.", field, " = ", value, " is out of range: ", want));
}

}  // namespace

absl::Status CacheConfig::Validate() const {
  constexpr int32_t kMaxDim = 1 << 16;
  if (num_layers < 1 || num_layers > kMaxDim) return OutOfRange("num_layers", num_layers, "want 1..65536");
  if (num_kv_heads < 1 || num_kv_heads > kMaxDim) {
    return OutOfRange("num_kv_heads", num_kv_heads, "want 1..65536");
  }
  if (head_dim < 1 || head_dim > kMaxDim) return OutOfRange("head_dim", head_dim, "want 1..65536");
  if (block_size < 1 || block_size > kMaxDim) {
    return OutOfRange("block_size", block_size, "want 1..65536");
  }
  if (!IsKnownDType(dtype)) {
    return OutOfRange("dtype", static_cast<int>(dtype), "want kF32, kBF16 or kF16");
  }
  if (page_layout != PageLayout::kAuto && page_layout != PageLayout::kHeadMajor &&
      page_layout != PageLayout::kBlockMajor) {
    return OutOfRange("page_layout", static_cast<int>(page_layout),
                      "want kAuto, kHeadMajor or kBlockMajor");
  }
  if (eviction_order != EvictionOrder::kLru && eviction_order != EvictionOrder::kSweep) {
    return OutOfRange("eviction_order", static_cast<int>(eviction_order), "want kLru or kSweep");
  }
  if (max_seq_len < 1) return OutOfRange("max_seq_len", max_seq_len, "want >= 1");
  if (num_blocks < 0) return OutOfRange("num_blocks", num_blocks, "want >= 0 (0: use the budget)");
  if (num_blocks == 0) {
    if (memory_budget_bytes <= 0) {
      return absl::InvalidArgumentError(
          "CacheConfig: set num_blocks, or leave it 0 and set memory_budget_bytes > 0");
    }
    const int64_t blocks = memory_budget_bytes / BlockBytes();
    if (blocks < 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "CacheConfig.memory_budget_bytes = ", memory_budget_bytes,
          " is smaller than one block (", BlockBytes(), " bytes = 2 * ", num_layers, " layers * ",
          num_kv_heads, " kv heads * ", block_size, " tokens * ", head_dim, " dims * ",
          DTypeSize(dtype), " bytes)"));
    }
    if (blocks > std::numeric_limits<int32_t>::max() - 1) {
      return OutOfRange("memory_budget_bytes", memory_budget_bytes,
                        "gives more than 2^31 - 2 blocks");
    }
  }
  return absl::OkStatus();
}

PageLayout CacheConfig::ResolvedPageLayout() const {
  if (page_layout != PageLayout::kAuto) return page_layout;
  // Pages form runs without prefix caching and with sweep eviction; LRU eviction scatters them.
  return enable_prefix_caching && eviction_order == EvictionOrder::kLru ? PageLayout::kBlockMajor
                                                                         : PageLayout::kHeadMajor;
}

int32_t CacheConfig::ResolvedNumBlocks() const {
  if (num_blocks > 0) return num_blocks;
  return static_cast<int32_t>(memory_budget_bytes / BlockBytes());
}

}  // namespace pagedkv

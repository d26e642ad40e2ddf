// What the per-target attention kernel receives: plain data, no owner types.
#ifndef PAGEDKV_ATTENTION_KERNEL_ARGS_H_
#define PAGEDKV_ATTENTION_KERNEL_ARGS_H_

#include <cstdint>

#include "pagedkv/view.h"

namespace pagedkv::internal {

// One unit of parallel work: query rows [row_begin, row_end) of sequence `seq` (rows counted
// within the sequence's queries), the query heads of the groups of KV heads [kv_head, kv_head +
// kv_heads), keys [kv_begin, kv_end).
struct WorkItem {
  int32_t seq = 0;
  int32_t kv_head = 0;
  int32_t row_begin = 0;
  int32_t row_end = 0;
  int64_t kv_begin = 0;
  int64_t kv_end = 0;
  // -1: normalize and write `out`. Otherwise the index of this item's partial results
  // (rows * group * (head_dim + 2) floats: max, sum, then the unnormalized output).
  int32_t partial = -1;
  // KV heads of the item: the row kernel takes them in turn at each step under PageFetch::kFar,
  // the others one after another. Head h of a partial item writes slot partial + h.
  int32_t kv_heads = 1;
};

// KV head h of an item (h < item.kv_heads) as an item of its own.
inline WorkItem HeadOf(const WorkItem& item, int32_t h) {
  WorkItem head = item;
  head.kv_head = item.kv_head + h;
  head.kv_heads = 1;
  if (item.partial >= 0) head.partial = item.partial + h;
  return head;
}

struct KernelArgs {
  PagedKvView view;
  int32_t layer = 0;
  int32_t num_q_heads = 0;
  int32_t group = 1;  // Query heads per KV head.
  const int32_t* q_offsets = nullptr;
  const float* q = nullptr;
  float* out = nullptr;
  float* partials = nullptr;
  int64_t partial_stride = 0;  // Floats per partial slot.
  float scale = 1.0f;
  float soft_cap = 0.0f;
  int32_t sliding_window = 0;
  bool bf16_products = false;  // Whether bf16 pages take the vdpbf16ps path (Bf16Products).
  bool fetch_far = false;      // Whether the row kernel fetches pages a step ahead (PageFetch).
  // Whether the row kernel scores f16 pages eight queries at a time (Scores8) on AVX-512, where
  // two groups of four would widen each key twice.
  bool scores8 = false;
};

// Whether this CPU has AVX512_BF16 (vdpbf16ps).
bool CpuHasBf16Dot();
// Whether Bf16Products::kAuto takes the vdpbf16ps path here: an AMD CPU that has it.
bool CpuPrefersBf16Dot();
// Whether PageFetch::kAuto fetches pages a step ahead here: an AMD family 19h CPU with AVX-512.
bool CpuPrefersFarFetch();
// Whether f16 pages are scored eight queries at a time (KernelArgs::scores8): not on AMD CPUs,
// unless a test says otherwise (SetScores8ForTest).
bool UseScores8();
// For tests: -1 (the start) follows the CPU, 0 and 1 turn Scores8 off and on.
void SetScores8ForTest(int mode);

}  // namespace pagedkv::internal

#endif  // PAGEDKV_ATTENTION_KERNEL_ARGS_H_

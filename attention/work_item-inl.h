// What the attention kernels (attention_kernel-inl.h, tile_kernel-inl.h) share about a work
// item: its pages, scratch buffers, query rows and the keys they may see, the causal/window mask,
// and the writing of its results. Compiled once per Highway target, as the kernels are.

#if defined(PAGEDKV_WORK_ITEM_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef PAGEDKV_WORK_ITEM_INL_H_
#undef PAGEDKV_WORK_ITEM_INL_H_
#else
#define PAGEDKV_WORK_ITEM_INL_H_
#endif

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "attention/bf16_dot-inl.h"
#include "attention/kernel_args.h"
#include "attention/widen-inl.h"
#include "hwy/highway.h"
#include "pagedkv/view.h"

HWY_BEFORE_NAMESPACE();
namespace pagedkv::internal::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// One (layer, K or V, block, KV head) page in the storage type.
template <typename T>
HWY_INLINE const T* PageOf(const PagedKvView& view, int32_t layer, bool is_value, BlockId block,
                           int32_t kv_head) {
  return reinterpret_cast<const T*>(view.Page(layer, is_value, block, kv_head));
}

struct Scratch {
  std::vector<float> q, acc, m, l, scores;
  std::vector<float> rotated_q;  // RotateQueries' copy of the row kernel's queries (AVX-512).
  std::vector<float> tile;  // K or V rows widened to f32, for the tile kernel.
  std::vector<uint16_t> packed_q, probabilities;  // bf16 bits, for the vdpbf16ps path.
};

// The query rows of a work item and the keys they may see.
struct ItemSpan {
  int64_t rows = 0;        // Query tokens.
  int64_t first_pos = 0;   // Position of the first one in its sequence.
  int64_t lo = 0, hi = 0;  // Keys any of the rows may see: [lo, hi).
};

HWY_INLINE ItemSpan SpanOf(const KernelArgs& a, const WorkItem& it) {
  ItemSpan span;
  const int64_t queries = a.q_offsets[it.seq + 1] - a.q_offsets[it.seq];
  span.rows = it.row_end - it.row_begin;
  span.first_pos = a.view.seq_lens[it.seq] - queries + it.row_begin;
  span.lo = std::max<int64_t>(it.kv_begin, 0);
  if (a.sliding_window > 0) span.lo = std::max(span.lo, span.first_pos - a.sliding_window + 1);
  span.hi = std::min(it.kv_end, span.first_pos + span.rows);
  return span;
}

// Query head g of the group, in row r of the item: head_dim floats.
HWY_INLINE const float* QueryOf(const KernelArgs& a, const WorkItem& it, int64_t r, int64_t g) {
  const int64_t token = a.q_offsets[it.seq] + it.row_begin + r;
  return a.q + (token * a.num_q_heads + it.kv_head * a.group + g) * a.view.head_dim;
}

// Calls mask(r, key) for each key in [t0, t1) that row r may not see (causal, sliding window).
// Rows that see the whole range are skipped at once.
template <class Mask>
HWY_INLINE void ForEachMaskedKey(const KernelArgs& a, const ItemSpan& span, int64_t t0, int64_t t1,
                                 const Mask& mask) {
  for (int64_t r = 0; r < span.rows; ++r) {
    const int64_t pos = span.first_pos + r;
    const int64_t key_lo = a.sliding_window > 0 ? pos - a.sliding_window + 1 : 0;
    if (t0 >= key_lo && t1 - 1 <= pos) continue;
    for (int64_t key = t0; key < t1; ++key) {
      if (key > pos || key < key_lo) mask(r, key);
    }
  }
}

// Writes the item's results from its accumulators (query j = row * group + g at
// acc + j * acc_stride, in the dim order of kDot or kSplit) and softmax state m, l: the
// normalized output, or a partition's partial (m, l, unnormalized sums) for the reduction.
template <bool kDot, bool kSplit>
void WriteRows(const KernelArgs& a, const WorkItem& it, const float* HWY_RESTRICT acc_all,
               size_t acc_stride, const float* HWY_RESTRICT m, const float* HWY_RESTRICT l) {
  const size_t D = static_cast<size_t>(a.view.head_dim);
  const int64_t G = a.group;
  const int64_t q_base = a.q_offsets[it.seq];
  for (int64_t r = 0; r < it.row_end - it.row_begin; ++r) {
    for (int64_t g = 0; g < G; ++g) {
      const size_t j = static_cast<size_t>(r * G + g);
      const float* acc = acc_all + j * acc_stride;
      float* dst;
      float scale = 1.0f;
      if (it.partial < 0) {
        dst = a.out + ((q_base + it.row_begin + r) * a.num_q_heads + it.kv_head * G + g) *
                          static_cast<int64_t>(D);
        scale = l[j] > 0 ? 1.0f / l[j] : 0.0f;
      } else {
        dst = a.partials + it.partial * a.partial_stride + static_cast<int64_t>(j * (D + 2));
        dst[0] = m[j];
        dst[1] = l[j];
        dst += 2;
      }
      if constexpr (kDot) {
        StoreDotValues(acc, D, scale, dst);
      } else {
        ReorderDims<kSplit, false>(acc, D, scale, dst);
      }
    }
  }
}

}  // namespace pagedkv::internal::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // PAGEDKV_WORK_ITEM_INL_H_

// The rows of one page that a step of the row kernel (attention_kernel-inl.h) reads, with the
// rows it fetches ahead while reading them. Plain data, the same for every Highway target.
#ifndef PAGEDKV_ATTENTION_PAGE_SEGMENT_H_
#define PAGEDKV_ATTENTION_PAGE_SEGMENT_H_

#include <cstddef>
#include <cstdint>
#include <vector>

namespace pagedkv::internal {

// T: the storage type, or uint16_t for the bits of bf16 pages (the vdpbf16ps path).
template <typename T>
struct PageSegment {
  const T* keys;    // n rows of head_dim.
  const T* values;  // The same rows of V.
  size_t n;
  size_t col;  // Column of the first row in the step's score rows.
  // K and V rows kLeadRows positions on (in one page; null: none), fetched row for row (into L1,
  // or into L2 where `far` is not 0: PrefetchRows): K while these keys are scored, V while these
  // values are summed.
  const T* lead_k = nullptr;
  const T* lead_v = nullptr;
  // V rows fetched with these keys (null: none): the step's first, which its value pass reads
  // first (see AttendItemT; the vdpbf16ps path only).
  const T* first_v = nullptr;
  // The first line of the K and V pages one step ahead (AttendItemT's build_segments; null: none),
  // touched once per page (TouchAhead).
  const T* far_k = nullptr;
  const T* far_v = nullptr;
  // PageFetch::kFar: bytes from lead_k to these rows of the K page a step ahead (and from lead_v
  // to V's), fetched into L2 with the lead rows; 0: none.
  ptrdiff_t far = 0;
};

// Moves every row pointer of `segments` (not the offsets) `bytes` on, leaving null ones null: the
// segments of the next KV head, whose pages lie a head stride on (PagedKvView::Page).
template <typename T>
void MoveSegments(int64_t bytes, std::vector<PageSegment<T>>& segments) {
  const auto move = [bytes](const T*& p) {
    if (p == nullptr) return;
    p = reinterpret_cast<const T*>(reinterpret_cast<const char*>(p) + bytes);
  };
  for (PageSegment<T>& g : segments) {
    move(g.keys);
    move(g.values);
    move(g.lead_k);
    move(g.lead_v);
    move(g.first_v);
    move(g.far_k);
    move(g.far_v);
  }
}

}  // namespace pagedkv::internal

#endif  // PAGEDKV_ATTENTION_PAGE_SEGMENT_H_

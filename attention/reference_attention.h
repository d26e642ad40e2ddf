// The oracle for the attention kernels: slow, obvious, double precision, over contiguous K/V.
#ifndef PAGEDKV_ATTENTION_REFERENCE_ATTENTION_H_
#define PAGEDKV_ATTENTION_REFERENCE_ATTENTION_H_

#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "pagedkv/attention.h"

namespace pagedkv::internal {

// One sequence's K and V of one layer, contiguous: [length][num_kv_heads][head_dim].
struct ContiguousKv {
  int64_t length = 0;
  std::vector<float> k, v;
};

// The same contract as ExtendAttention (q_offsets, causal, window, soft-cap, scale), computed
// one query head at a time in double precision.
std::vector<float> ReferenceAttention(absl::Span<const ContiguousKv> seqs, int32_t num_kv_heads,
                                      int32_t head_dim, int32_t num_q_heads,
                                      absl::Span<const int32_t> q_offsets,
                                      absl::Span<const float> q, const AttentionOptions& options);

}  // namespace pagedkv::internal

#endif  // PAGEDKV_ATTENTION_REFERENCE_ATTENTION_H_

#include "attention/reference_attention.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace pagedkv::internal {

std::vector<float> ReferenceAttention(absl::Span<const ContiguousKv> seqs, int32_t num_kv_heads,
                                      int32_t head_dim, int32_t num_q_heads,
                                      absl::Span<const int32_t> q_offsets,
                                      absl::Span<const float> q, const AttentionOptions& options) {
  const int64_t D = head_dim;
  const int32_t group = num_q_heads / num_kv_heads;
  const double scale = options.scale > 0 ? options.scale : 1.0 / std::sqrt(double(head_dim));
  std::vector<float> out(q.size(), 0.0f);
  for (size_t s = 0; s < seqs.size(); ++s) {
    const ContiguousKv& kv = seqs[s];
    const int64_t n = q_offsets[s + 1] - q_offsets[s];
    for (int64_t i = 0; i < n; ++i) {
      const int64_t pos = kv.length - n + i;
      const int64_t first = options.sliding_window > 0
                                ? std::max<int64_t>(0, pos - options.sliding_window + 1)
                                : 0;
      for (int32_t h = 0; h < num_q_heads; ++h) {
        const int32_t kv_head = h / group;
        const float* qv = q.data() + ((q_offsets[s] + i) * num_q_heads + h) * D;
        std::vector<double> logits;
        for (int64_t t = first; t <= pos; ++t) {
          const float* kt = kv.k.data() + (t * num_kv_heads + kv_head) * D;
          double dot = 0;
          for (int64_t d = 0; d < D; ++d) dot += double(qv[d]) * double(kt[d]);
          double logit = dot * scale;
          if (options.soft_cap > 0) logit = options.soft_cap * std::tanh(logit / options.soft_cap);
          logits.push_back(logit);
        }
        const double max = *std::max_element(logits.begin(), logits.end());
        double sum = 0;
        for (double& l : logits) sum += (l = std::exp(l - max));
        float* o = out.data() + ((q_offsets[s] + i) * num_q_heads + h) * D;
        for (int64_t d = 0; d < D; ++d) {
          double acc = 0;
          for (int64_t t = first; t <= pos; ++t) {
            acc += logits[static_cast<size_t>(t - first)] *
                   double(kv.v[static_cast<size_t>((t * num_kv_heads + kv_head) * D + d)]);
          }
          o[d] = static_cast<float>(acc / sum);
        }
      }
    }
  }
  return out;
}

}  // namespace pagedkv::internal

// The logits soft-cap, cap * tanh(x / cap) (Gemma 2's attention), for the attention kernels.
// Compiled once per Highway target, as the kernels are.

#if defined(PAGEDKV_SOFT_CAP_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef PAGEDKV_SOFT_CAP_INL_H_
#undef PAGEDKV_SOFT_CAP_INL_H_
#else
#define PAGEDKV_SOFT_CAP_INL_H_
#endif

#include <algorithm>
#include <cstddef>

#include "hwy/contrib/math/math-inl.h"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace pagedkv::internal::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// x[i] = cap * tanh(x[i] / cap) for i < n, a vector at a time through Highway's Tanh (at most 4
// ulp from tanh), the last partial vector too, so every logit is capped by the same code. On
// Emerald Rapids (bf16, 1 x 2,048, one thread, capped and uncapped calls alternated), a cap took
// decode 1.04-1.09x the time without one at Gemma 2's shape (GQA 2, head dim 256), 1.11-1.13x at
// GQA 4 and head dim 128, and extend of 512 tokens 1.01-1.10x; with std::tanh per logit those
// were 1.6-1.9x, 3.5-3.6x and 2.1-2.5x.
HWY_INLINE void SoftCap(float cap, float* HWY_RESTRICT x, size_t n) {
  using DF32 = hn::ScalableTag<float>;
  const DF32 df;
  const size_t N = hn::Lanes(df);
  const auto vcap = hn::Set(df, cap);
  const auto inv = hn::Set(df, 1.0f / cap);
  const auto capped = [&](hn::Vec<DF32> v) {
    return hn::Mul(vcap, hn::Tanh(df, hn::Mul(v, inv)));
  };
  size_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(capped(hn::LoadU(df, x + i)), df, x + i);
  if (i < n) {
    HWY_ALIGN float tail[hn::MaxLanes(DF32())] = {};
    std::copy(x + i, x + n, tail);
    hn::Store(capped(hn::Load(df, tail)), df, tail);
    std::copy(tail, tail + (n - i), x + i);
  }
}

}  // namespace pagedkv::internal::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // PAGEDKV_SOFT_CAP_INL_H_

// The softmax's exponential, exp(x - max), for the attention kernels. Compiled once per Highway
// target, as the kernels are.

#if defined(PAGEDKV_SOFTMAX_EXP_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef PAGEDKV_SOFTMAX_EXP_INL_H_
#undef PAGEDKV_SOFTMAX_EXP_INL_H_
#else
#define PAGEDKV_SOFTMAX_EXP_INL_H_
#endif

#include <limits>

#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace pagedkv::internal::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// exp(x - max) lane by lane, and 0 where x is -inf (a masked key, or a running maximum not yet
// set). For x <= max: 2^y with y = (x - max) log2(e), as 2^floor(y) times a degree-5 polynomial
// for 2^f on [0, 1), fitted to relative error with p(0) = 1: exactly 1 at x = max (a running
// maximum that does not move rescales nothing), 1.4e-7 relative error from the polynomial, and
// the rounding of y adds |y| 2^-24 ln 2 more. For softmax weights, which lie in [0, 1], that is an
// absolute error under 2e-7 wherever x <= max (tests/softmax_exp_test.cc). y is clamped at -126,
// so that no result is subnormal: where the true value lies below 2^-126 the result is 2^-126.
// On AVX-512, VREDUCEPS gives f and VSCALEFPS applies floor(y): 11 vector ops for 16 lanes,
// where hn::Exp, accurate to 1 ulp over its whole range, takes about 24. On Emerald Rapids, calls
// alternated in one process, against hn::Exp: decode 0.94-1.00x the time (f32, bf16, f16; GQA 1,
// 4, 8), extend 0.88-0.96x.
template <class D>
HWY_INLINE hn::Vec<D> ExpBelowMax(D d, hn::Vec<D> x, hn::Vec<D> max) {
  constexpr float kLog2e = 1.44269504088896341f;
  const auto neg_inf = hn::Set(d, -std::numeric_limits<float>::infinity());
  const auto y = hn::Max(hn::Mul(hn::Sub(x, max), hn::Set(d, kLog2e)), hn::Set(d, -126.0f));
  const auto poly = [&](hn::Vec<D> f) {
    auto p = hn::MulAdd(hn::Set(d, 1.867130050e-3f), f, hn::Set(d, 9.017030708e-3f));
    p = hn::MulAdd(p, f, hn::Set(d, 5.579991266e-2f));
    p = hn::MulAdd(p, f, hn::Set(d, 2.401644439e-1f));
    p = hn::MulAdd(p, f, hn::Set(d, 6.931512952e-1f));
    return hn::MulAdd(p, f, hn::Set(d, 1.0f));
  };
#if HWY_TARGET <= HWY_AVX3
  if constexpr (hn::MaxLanes(D()) == 16) {
    // f = y - floor(y) (imm8 1: round down, no fraction bits kept).
    const __m512 f = _mm512_reduce_ps(y.raw, _MM_FROUND_TO_NEG_INF);
    const __mmask16 live = _mm512_cmp_ps_mask(x.raw, neg_inf.raw, _CMP_NEQ_OQ);
    return hn::Vec<D>{_mm512_maskz_scalef_ps(live, poly(hn::Vec<D>{f}).raw, y.raw)};
  }
#endif
  const hn::RebindToSigned<D> di;
  const auto whole = hn::Floor(y);
  const auto scale =
      hn::BitCast(d, hn::ShiftLeft<23>(hn::Add(hn::ConvertTo(di, whole), hn::Set(di, 127))));
  return hn::IfThenElseZero(hn::Lt(neg_inf, x), hn::Mul(poly(hn::Sub(y, whole)), scale));
}

}  // namespace pagedkv::internal::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // PAGEDKV_SOFTMAX_EXP_INL_H_

// Storage dtypes (f32, bf16, f16) widened to f32, in registers and one at a time, for the
// attention kernels. Compiled once per Highway target, as the kernels are.

#if defined(PAGEDKV_WIDEN_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef PAGEDKV_WIDEN_INL_H_
#undef PAGEDKV_WIDEN_INL_H_
#else
#define PAGEDKV_WIDEN_INL_H_
#endif

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "hwy/highway.h"
#include "pagedkv/dtype.h"

HWY_BEFORE_NAMESPACE();
namespace pagedkv::internal::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using DF = hn::ScalableTag<float>;

inline float ScalarToF32(float x) { return x; }
inline float ScalarToF32(hwy::bfloat16_t x) { return F32FromBF16(x.bits); }
inline float ScalarToF32(hwy::float16_t x) {
  uint16_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  return F32FromF16(bits);
}

// N elements of storage type T at p, widened to f32 in a register.
template <typename T>
HWY_INLINE hn::Vec<DF> LoadF32(const T* HWY_RESTRICT p) {
  const DF df;
  if constexpr (std::is_same_v<T, float>) {
    return hn::LoadU(df, p);
  } else {
    return hn::PromoteTo(df, hn::LoadU(hn::Rebind<T, DF>(), p));
  }
}

// v, held in a register where there are 16 (AVX2, SSE4): GCC otherwise folds a vector load that
// feeds several instructions into each of them as a memory operand, loading it once per use. In
// the row kernel's scores of two keys (ScoresOfKeys) that was 20 loads for 16 FMAs, 12 with the
// query chunks and the bf16 pairs held. bf16 and f16 decode, GQA 4, one thread, Zen 3 VM, calls
// alternated in one process (two runs): 0.97-0.99x the time in L3 (f16 paged 0.99-1.01x) and
// 0.96-0.98x from DRAM (bf16). Not measured on AVX-512, which has 32 registers: left as it was.
template <class V>
HWY_INLINE V InRegister(V v) {
#if HWY_ARCH_X86 && HWY_TARGET > HWY_AVX3 && HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128
  asm("" : "+x"(v.raw));
#endif
  return v;
}

// Dims [0, 2N) at p as two f32 vectors. kSplit (bf16 only): lo gets the even dims and hi the odd
// ones, one integer op each and no shuffle (a 32-bit lane holds dim 2i in its low half, which a
// shift moves up, and dim 2i + 1 in its high half, which a mask keeps). PromoteTo widens with a
// shuffle and a shift per N dims; on a core whose 512-bit FMAs share their two ports with both,
// the split leaves more of those ports to the FMAs (Emerald Rapids, bf16 decode in L3 without
// bf16 products: 0.85x the time). Otherwise lo holds dims [0, N) and hi dims [N, 2N).
template <bool kSplit, typename T>
HWY_INLINE void LoadPairF32(const T* HWY_RESTRICT p, hn::Vec<DF>& lo, hn::Vec<DF>& hi) {
  if constexpr (kSplit) {
    static_assert(std::is_same_v<T, hwy::bfloat16_t>);
    const DF df;
    const hn::Repartition<uint32_t, DF> du;
    const auto pairs = InRegister(hn::LoadU(du, reinterpret_cast<const uint32_t*>(p)));
    lo = hn::BitCast(df, hn::ShiftLeft<16>(pairs));
    hi = hn::BitCast(df, hn::And(pairs, hn::Set(du, 0xFFFF0000u)));
  } else {
    lo = LoadF32(p);
    hi = LoadF32(p + hn::Lanes(DF()));
  }
}

// Row dims in LoadPairF32<kSplit>'s order, so that queries and accumulators line up with the
// widened K and V: with kSplit, each whole 2N dims' even dims, then its odd ones; the dims past
// the last whole 2N (head dim 80 on AVX-512: dims 64-79) stay in their order, as the kernels
// widen those a vector or a dim at a time.
template <bool kSplit>
HWY_INLINE size_t SplitDims(size_t D) {
  const size_t pair = 2 * hn::Lanes(DF());
  return kSplit ? D / pair * pair : 0;
}

// out = scale * in, from natural order into SplitDims' (kToPairs) or back.
template <bool kSplit, bool kToPairs>
HWY_INLINE void ReorderDims(const float* HWY_RESTRICT in, size_t D, float scale,
                            float* HWY_RESTRICT out) {
  const size_t N = hn::Lanes(DF());
  const size_t split = SplitDims<kSplit>(D);
  for (size_t c = 0; c < split; c += 2 * N) {
    for (size_t i = 0; i < N; ++i) {
      for (size_t odd = 0; odd < 2; ++odd) {
        const size_t natural = c + 2 * i + odd, paired = c + odd * N + i;
        out[kToPairs ? paired : natural] = in[kToPairs ? natural : paired] * scale;
      }
    }
  }
  for (size_t d = split; d < D; ++d) out[d] = in[d] * scale;
}

}  // namespace pagedkv::internal::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // PAGEDKV_WIDEN_INL_H_

// The attention kernel for one work item, compiled once per Highway target (attention.cc
// includes this file through hwy/foreach_target.h).
//
// Per KV block of the item's range: K rows are converted to f32 once and dotted with every query
// of the group (GQA: a page is read once per KV head, not once per query head), scores get the
// soft-cap and the causal/window mask, an online softmax rescales the running sums, and V rows,
// converted once, are accumulated with the probabilities. The next block named by the block
// table is prefetched while this one is worked on: the hardware prefetcher does not follow a
// jump to a scattered page.

#if defined(PAGEDKV_ATTENTION_KERNEL_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef PAGEDKV_ATTENTION_KERNEL_INL_H_
#undef PAGEDKV_ATTENTION_KERNEL_INL_H_
#else
#define PAGEDKV_ATTENTION_KERNEL_INL_H_
#endif

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "attention/kernel_args.h"
#include "hwy/cache_control.h"
#include "hwy/contrib/math/math-inl.h"
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

// out[0, n) = p[0, n) widened to f32, in registers then stored.
template <typename T>
HWY_INLINE void ToF32(const T* HWY_RESTRICT p, size_t n, float* HWY_RESTRICT out) {
  const DF df;
  const size_t N = hn::Lanes(df);
  size_t i = 0;
  if constexpr (std::is_same_v<T, float>) {
    for (; i + N <= n; i += N) hn::StoreU(hn::LoadU(df, p + i), df, out + i);
  } else {
    const hn::Rebind<T, DF> dh;
    for (; i + N <= n; i += N) hn::StoreU(hn::PromoteTo(df, hn::LoadU(dh, p + i)), df, out + i);
  }
  for (; i < n; ++i) out[i] = ScalarToF32(p[i]);
}

HWY_INLINE float Dot(const float* HWY_RESTRICT a, const float* HWY_RESTRICT b, size_t n) {
  const DF df;
  const size_t N = hn::Lanes(df);
  auto s0 = hn::Zero(df);
  auto s1 = hn::Zero(df);
  size_t i = 0;
  for (; i + 2 * N <= n; i += 2 * N) {
    s0 = hn::MulAdd(hn::LoadU(df, a + i), hn::LoadU(df, b + i), s0);
    s1 = hn::MulAdd(hn::LoadU(df, a + i + N), hn::LoadU(df, b + i + N), s1);
  }
  for (; i + N <= n; i += N) s0 = hn::MulAdd(hn::LoadU(df, a + i), hn::LoadU(df, b + i), s0);
  float sum = hn::GetLane(hn::SumOfLanes(df, hn::Add(s0, s1)));
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

HWY_INLINE void PrefetchPage(const std::byte* page, size_t bytes) {
  for (size_t off = 0; off < bytes; off += 64) hwy::Prefetch(page + off);
}

struct Scratch {
  std::vector<float> q, acc, m, l, scores, keys, values;
};

template <typename T>
void AttendItemT(const KernelArgs& a, const WorkItem& it) {
  const DF df;
  const size_t N = hn::Lanes(df);
  const PagedKvView& view = a.view;
  const size_t D = static_cast<size_t>(view.head_dim);
  const int64_t bs = view.block_size;
  const int64_t G = a.group;
  const int64_t q_base = a.q_offsets[it.seq];
  const int64_t first_pos = view.seq_lens[it.seq] - (a.q_offsets[it.seq + 1] - q_base);
  const int64_t rows = it.row_end - it.row_begin;
  const size_t NQ = static_cast<size_t>(rows * G);
  const size_t t_pad = (static_cast<size_t>(bs) + N - 1) / N * N;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();

  thread_local Scratch s;
  s.q.resize(NQ * D);
  s.acc.assign(NQ * D, 0.0f);
  s.m.assign(NQ, kNegInf);
  s.l.assign(NQ, 0.0f);
  s.scores.resize(NQ * t_pad);
  s.keys.resize(static_cast<size_t>(bs) * D);
  s.values.resize(static_cast<size_t>(bs) * D);

  // Query j = row * G + g, pre-multiplied by the softmax scale.
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < G; ++g) {
      const float* src = a.q + ((q_base + it.row_begin + r) * a.num_q_heads + it.kv_head * G + g) *
                                   static_cast<int64_t>(D);
      float* dst = s.q.data() + static_cast<size_t>(r * G + g) * D;
      for (size_t d = 0; d < D; ++d) dst[d] = src[d] * a.scale;
    }
  }

  // Keys any row of the item may see.
  const int64_t last_pos = first_pos + it.row_end - 1;
  int64_t lo = std::max<int64_t>(it.kv_begin, 0);
  if (a.sliding_window > 0) lo = std::max(lo, first_pos + it.row_begin - a.sliding_window + 1);
  const int64_t hi = std::min(it.kv_end, last_pos + 1);

  const BlockId* table = view.BlockTable(it.seq);
  const size_t page_bytes = static_cast<size_t>(bs) * D * sizeof(T);
  const auto neg_inf = hn::Set(df, kNegInf);
  for (int64_t b = lo / bs; lo < hi && b <= (hi - 1) / bs; ++b) {
    const int64_t t0 = std::max(lo, b * bs);
    const int64_t t1 = std::min(hi, (b + 1) * bs);
    const size_t n_keys = static_cast<size_t>(t1 - t0);
    if (b + 1 <= (hi - 1) / bs) {
      PrefetchPage(view.Page(a.layer, false, table[b + 1], it.kv_head), page_bytes);
      PrefetchPage(view.Page(a.layer, true, table[b + 1], it.kv_head), page_bytes);
    }
    const size_t first_slot = static_cast<size_t>(t0 - b * bs) * D;
    ToF32(reinterpret_cast<const T*>(view.Page(a.layer, false, table[b], it.kv_head)) + first_slot,
          n_keys * D, s.keys.data());

    for (size_t j = 0; j < NQ; ++j) {
      float* row = s.scores.data() + j * t_pad;
      const float* qj = s.q.data() + j * D;
      for (size_t t = 0; t < n_keys; ++t) row[t] = Dot(qj, s.keys.data() + t * D, D);
      if (a.soft_cap > 0) {
        for (size_t t = 0; t < n_keys; ++t) row[t] = a.soft_cap * std::tanh(row[t] / a.soft_cap);
      }
      for (size_t t = n_keys; t < t_pad; ++t) row[t] = kNegInf;
    }
    // Causal and sliding-window mask, only where the block crosses a row's bounds.
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t pos = first_pos + it.row_begin + r;
      const int64_t key_lo = a.sliding_window > 0 ? pos - a.sliding_window + 1 : 0;
      if (t0 >= key_lo && t1 - 1 <= pos) continue;
      for (int64_t g = 0; g < G; ++g) {
        float* row = s.scores.data() + static_cast<size_t>(r * G + g) * t_pad;
        for (size_t t = 0; t < n_keys; ++t) {
          const int64_t key = t0 + static_cast<int64_t>(t);
          if (key > pos || key < key_lo) row[t] = kNegInf;
        }
      }
    }
    // Online softmax: rescale what was summed so far to the new running maximum.
    for (size_t j = 0; j < NQ; ++j) {
      float* row = s.scores.data() + j * t_pad;
      auto vmax = neg_inf;
      for (size_t t = 0; t < t_pad; t += N) vmax = hn::Max(vmax, hn::LoadU(df, row + t));
      const float block_max = hn::GetLane(hn::MaxOfLanes(df, vmax));
      if (block_max == kNegInf) {
        for (size_t t = 0; t < t_pad; ++t) row[t] = 0.0f;
        continue;
      }
      const float new_max = std::max(s.m[j], block_max);
      const float correction = s.m[j] == kNegInf ? 0.0f : std::exp(s.m[j] - new_max);
      const auto vnew = hn::Set(df, new_max);
      auto vsum = hn::Zero(df);
      for (size_t t = 0; t < t_pad; t += N) {
        const auto x = hn::LoadU(df, row + t);
        const auto p = hn::IfThenElseZero(hn::Lt(neg_inf, x), hn::Exp(df, hn::Sub(x, vnew)));
        hn::StoreU(p, df, row + t);
        vsum = hn::Add(vsum, p);
      }
      s.l[j] = s.l[j] * correction + hn::GetLane(hn::SumOfLanes(df, vsum));
      s.m[j] = new_max;
      if (correction != 1.0f) {
        float* acc = s.acc.data() + j * D;
        for (size_t d = 0; d < D; ++d) acc[d] *= correction;
      }
    }
    ToF32(reinterpret_cast<const T*>(view.Page(a.layer, true, table[b], it.kv_head)) + first_slot,
          n_keys * D, s.values.data());
    for (size_t j = 0; j < NQ; ++j) {
      const float* p = s.scores.data() + j * t_pad;
      float* acc = s.acc.data() + j * D;
      size_t c = 0;
      for (; c + N <= D; c += N) {
        auto sum = hn::LoadU(df, acc + c);
        for (size_t t = 0; t < n_keys; ++t) {
          sum = hn::MulAdd(hn::Set(df, p[t]), hn::LoadU(df, s.values.data() + t * D + c), sum);
        }
        hn::StoreU(sum, df, acc + c);
      }
      for (; c < D; ++c) {
        for (size_t t = 0; t < n_keys; ++t) acc[c] += p[t] * s.values[t * D + c];
      }
    }
  }

  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < G; ++g) {
      const size_t j = static_cast<size_t>(r * G + g);
      const float* acc = s.acc.data() + j * D;
      if (it.partial < 0) {
        float* dst = a.out + ((q_base + it.row_begin + r) * a.num_q_heads + it.kv_head * G + g) *
                                 static_cast<int64_t>(D);
        const float inv = s.l[j] > 0 ? 1.0f / s.l[j] : 0.0f;
        for (size_t d = 0; d < D; ++d) dst[d] = acc[d] * inv;
      } else {
        float* dst = a.partials + it.partial * a.partial_stride + static_cast<int64_t>(j * (D + 2));
        dst[0] = s.m[j];
        dst[1] = s.l[j];
        std::copy(acc, acc + D, dst + 2);
      }
    }
  }
}

void AttendItem(const KernelArgs& args, const WorkItem& item) {
  switch (args.view.dtype) {
    case DType::kF32:
      return AttendItemT<float>(args, item);
    case DType::kBF16:
      return AttendItemT<hwy::bfloat16_t>(args, item);
    case DType::kF16:
      return AttendItemT<hwy::float16_t>(args, item);
  }
}

}  // namespace pagedkv::internal::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // PAGEDKV_ATTENTION_KERNEL_INL_H_

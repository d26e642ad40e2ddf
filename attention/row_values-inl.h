// The row kernel's P.V sums (attention_kernel-inl.h), compiled once per Highway target: V rows
// widened to f32 in registers and summed with the probabilities of a group of four queries
// (ValuesOf; on AVX-512 also of five or six), eight (Values8), a pair (Values2) and one query
// (Values1), a step's pages at a time, with the rows ahead prefetched as the kernel asks. The
// Q.K scores are row_scores-inl.h's.

#if defined(PAGEDKV_ROW_VALUES_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef PAGEDKV_ROW_VALUES_INL_H_
#undef PAGEDKV_ROW_VALUES_INL_H_
#else
#define PAGEDKV_ROW_VALUES_INL_H_
#endif

#include <cstddef>

#include "attention/bf16_dot-inl.h"
#include "attention/page_segment.h"
#include "attention/row_scores-inl.h"
#include "attention/widen-inl.h"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace pagedkv::internal::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// V rows a window of the value passes holds: each pass over some of the dims reads a window's
// rows, and the next pass finds them in L1. Before, each page had passes of its own, which
// loaded and stored their accumulators per page (16 rows). Decode of 16-token pages in random
// order, GQA 4, one thread, Zen 4, calls alternated: in L3 (1 x 2,048) f16 0.92-0.96x the time,
// bf16 widened 0.94x, f32 0.97-1.00x; from DRAM (32 x 2,048) f16 0.96-0.97x, f32 0.99-1.01x;
// AVX2 forced, f16 and bf16 0.92-0.96x. Windows of the whole step took f32 1.00-1.02x in L3,
// windows of 8 KiB f16 0.96x.
constexpr size_t kValueWindowBytes = 16384;

// The value passes read a step's pages as its segments (PageSegment: rows of V, their column in
// the step's score rows, and with `fetch` their lead V rows, prefetched as PrefetchRows takes
// `far`), a run of pages read as one being one segment.
//
// Calls pass(first, count) for consecutive windows of the runs, each of up to kValueWindowBytes
// of rows (or one larger run), where a row takes at most two of the caller's passes (`passes`,
// over its dims) or the runs fetch no lead rows; else one run at a time. The lead rows of a
// window's later rows are fetched only a pass ahead of their reads: with eight passes (f32 on
// AVX2), 1.04-1.08x the time from DRAM.
template <typename T, typename Pass>
HWY_INLINE void ForEachValueWindow(const PageSegment<T>* runs, size_t num_runs, size_t D,
                                   size_t passes, bool fetch, const Pass& pass) {
  bool fetching = false;
  for (size_t r = 0; fetch && r < num_runs; ++r) fetching |= runs[r].lead_v != nullptr;
  const size_t window_rows =
      passes <= 2 || !fetching ? kValueWindowBytes / (D * sizeof(T)) : size_t{0};
  for (size_t r0 = 0, r1 = 0; r0 < num_runs; r0 = r1) {
    size_t rows = runs[r0].n;
    for (r1 = r0 + 1; r1 < num_runs && rows + runs[r1].n <= window_rows; ++r1) rows += runs[r1].n;
    pass(runs + r0, r1 - r0);
  }
}

// acc[j] += sum_t p[j][t] * V[t] over dims [c, c + kChunks * N) for kQueries queries (rows of p
// t_pad apart, of acc D apart), over the rows of `num_runs` runs: kChunks V chunks, widened once
// per key (in pairs, as LoadPairF32), feed kQueries * kChunks accumulators, kept in registers
// from run to run. With `fetch`, the same dims of a run's lead row t are prefetched with its row
// t.
template <size_t kQueries, size_t kChunks, bool kSplit, typename T>
HWY_INLINE void ValueChunks(const float* HWY_RESTRICT p, size_t t_pad, const PageSegment<T>* runs,
                            size_t num_runs, size_t D, size_t c, float* HWY_RESTRICT acc,
                            bool fetch) {
  const DF df;
  const size_t N = hn::Lanes(df);
  hn::Vec<DF> a[kQueries][kChunks];
  for (size_t j = 0; j < kQueries; ++j) {
    for (size_t k = 0; k < kChunks; ++k) a[j][k] = hn::LoadU(df, acc + j * D + c + k * N);
  }
  for (size_t r = 0; r < num_runs; ++r) {
    const T* HWY_RESTRICT values = runs[r].values;
    const T* lead = fetch ? runs[r].lead_v : nullptr;
    const float* HWY_RESTRICT pr = p + runs[r].col;
    for (size_t t = 0; t < runs[r].n; ++t) {
      if (lead != nullptr) {
        PrefetchRows(lead + t * D + c, nullptr, kChunks * N * sizeof(T), runs[r].far);
      }
      const T* HWY_RESTRICT v = values + t * D + c;
      hn::Vec<DF> vc[kChunks];
      if constexpr (kChunks == 1) {
        static_assert(!kSplit);  // Split dims come in pairs of chunks.
        vc[0] = LoadF32(v);
      } else {
        for (size_t k = 0; k < kChunks; k += 2) LoadPairF32<kSplit>(v + k * N, vc[k], vc[k + 1]);
      }
      for (size_t j = 0; j < kQueries; ++j) {
        const auto pj = hn::Set(df, pr[j * t_pad + t]);
        for (size_t k = 0; k < kChunks; ++k) a[j][k] = hn::MulAdd(pj, vc[k], a[j][k]);
      }
    }
  }
  for (size_t j = 0; j < kQueries; ++j) {
    for (size_t k = 0; k < kChunks; ++k) hn::StoreU(a[j][k], df, acc + j * D + c + k * N);
  }
}

// Dims [c, D) past the last whole vector, one at a time, for kQueries queries over the runs.
template <size_t kQueries, typename T>
HWY_INLINE void ValueTail(const float* HWY_RESTRICT p, size_t t_pad, const PageSegment<T>* runs,
                          size_t num_runs, size_t D, size_t c, float* HWY_RESTRICT acc) {
  for (; c < D; ++c) {
    for (size_t r = 0; r < num_runs; ++r) {
      const float* HWY_RESTRICT pr = p + runs[r].col;
      for (size_t t = 0; t < runs[r].n; ++t) {
        const float v = ScalarToF32(runs[r].values[t * D + c]);
        for (size_t j = 0; j < kQueries; ++j) acc[j * D + c] += pr[j * t_pad + t] * v;
      }
    }
  }
}

// acc[j] += sum_t p[j][t] * V[t] for kQueries queries over a step's runs: the four of a group,
// or on AVX-512 a group and the one or two queries left over after it (5 or 6: GQA 5 and 6,
// where ValuesOf<4> and then Values1 or Values2 widened each V chunk twice). V chunks are widened
// in registers once and feed kQueries independent accumulators each. With kSplit, acc holds each
// 2N dims' even dims, then its odd ones (LoadPairF32). With `fetch`, lead rows are prefetched with
// the rows, a
// pass's dims at a time.
template <size_t kQueries, bool kSplit, typename T>
HWY_INLINE void ValuesOf(const float* HWY_RESTRICT p, size_t t_pad, const PageSegment<T>* runs,
                         size_t num_runs, size_t D, float* HWY_RESTRICT acc, bool fetch) {
  static_assert(kQueries == kQueryGroup || (HWY_TARGET <= HWY_AVX3 && kQueries <= 6));
  const size_t N = hn::Lanes(DF());
  const size_t pass_dims = (HWY_TARGET <= HWY_AVX3 ? 4 : 2) * N;
  const size_t passes = (D + pass_dims - 1) / pass_dims;
  ForEachValueWindow(runs, num_runs, D, passes, fetch, [&](const PageSegment<T>* w, size_t nw) {
    size_t c = 0;
#if HWY_TARGET <= HWY_AVX3
    // Four chunks at a time where there are 32 registers (AVX-512): up to 24 accumulators + 4
    // values + a probability, so each broadcast probability feeds four FMAs instead of two (f16
    // decode 0.95-0.96x the time; f32 the same).
    for (; c + 4 * N <= D; c += 4 * N) {
      ValueChunks<kQueries, 4, kSplit>(p, t_pad, w, nw, D, c, acc, fetch);
    }
#endif
    // Two chunks at a time: 8 accumulators + 2 values + 4 probabilities fit 16 registers.
    for (; c + 2 * N <= D; c += 2 * N) {
      ValueChunks<kQueries, 2, kSplit>(p, t_pad, w, nw, D, c, acc, fetch);
    }
    // One chunk left (head dim 80 on AVX-512), in natural order also with kSplit (SplitDims),
    // summed as a vector: GQA 4 decode with head dim 80, 1 x 2,048, one thread, took 0.21-0.36x
    // the time of a scalar loop over those 16 dims (which had taken more than the other 64).
    if (c + N <= D) {
      ValueChunks<kQueries, 1, false>(p, t_pad, w, nw, D, c, acc, fetch);
      c += N;
    }
    ValueTail<kQueries>(p, t_pad, w, nw, D, c, acc);
  });
}

#if HWY_TARGET <= HWY_AVX3
// acc[j] += sum_t p[j][t] * V[t] for eight queries (two groups of four; D a multiple of 2N),
// where there are 32 registers: two chunks at a time feed 16 accumulators, so each key's V is
// widened (and read from L1) once for the eight, where two ValuesOf<4> do it once per group.
// Prefetches as ValuesOf. GQA 8 decode on Emerald Rapids, one thread, 1 x 2,048, calls
// alternated in one process, against two ValuesOf<4>: bf16 0.94-0.97x the time, f16 0.94x, f32
// 0.91-0.93x (f32 has nothing to widen: its gain is the second read of V). kQueries = 7: the
// first seven only (GQA 7, whose eighth slot is padding).
template <bool kSplit, size_t kQueries = 2 * kQueryGroup, typename T>
HWY_INLINE void Values8(const float* HWY_RESTRICT p, size_t t_pad, const PageSegment<T>* runs,
                        size_t num_runs, size_t D, float* HWY_RESTRICT acc, bool fetch) {
  const size_t N = hn::Lanes(DF());
  ForEachValueWindow(runs, num_runs, D, D / (2 * N), fetch,
                     [&](const PageSegment<T>* w, size_t nw) {
                       for (size_t c = 0; c < D; c += 2 * N)
                         ValueChunks<kQueries, 2, kSplit>(p, t_pad, w, nw, D, c, acc, fetch);
                     });
}
#endif

// One query: acc += sum_t p[t] * V[t], eight chunks at a time (eight accumulators, whose FMAs
// for a key depend on none of the others: see Scores1), then four, then two; kSplit and lead as
// ValuesOf.
template <bool kSplit, typename T>
HWY_INLINE void Values1(const float* HWY_RESTRICT p, const T* HWY_RESTRICT values, size_t n_keys,
                        size_t D, float* HWY_RESTRICT acc, const T* lead, ptrdiff_t far) {
  const DF df;
  const size_t N = hn::Lanes(df);
  size_t c = 0;
  for (; c + 8 * N <= D; c += 8 * N) {
    hn::Vec<DF> a[8];
    for (size_t i = 0; i < 8; ++i) a[i] = hn::LoadU(df, acc + c + i * N);
    for (size_t t = 0; t < n_keys; ++t) {
      if (lead != nullptr) PrefetchRows(lead + t * D + c, nullptr, 8 * N * sizeof(T), far);
      const T* HWY_RESTRICT v = values + t * D + c;
      const auto pt = hn::Set(df, p[t]);
      for (size_t i = 0; i < 8; i += 2) {
        hn::Vec<DF> v0, v1;
        LoadPairF32<kSplit>(v + i * N, v0, v1);
        a[i] = hn::MulAdd(pt, v0, a[i]);
        a[i + 1] = hn::MulAdd(pt, v1, a[i + 1]);
      }
    }
    for (size_t i = 0; i < 8; ++i) hn::StoreU(a[i], df, acc + c + i * N);
  }
  for (; c + 4 * N <= D; c += 4 * N) {
    auto a0 = hn::LoadU(df, acc + c), a1 = hn::LoadU(df, acc + c + N);
    auto a2 = hn::LoadU(df, acc + c + 2 * N), a3 = hn::LoadU(df, acc + c + 3 * N);
    for (size_t t = 0; t < n_keys; ++t) {
      if (lead != nullptr) PrefetchRows(lead + t * D + c, nullptr, 4 * N * sizeof(T), far);
      const T* HWY_RESTRICT v = values + t * D + c;
      const auto pt = hn::Set(df, p[t]);
      hn::Vec<DF> v0, v1, v2, v3;
      LoadPairF32<kSplit>(v, v0, v1);
      LoadPairF32<kSplit>(v + 2 * N, v2, v3);
      a0 = hn::MulAdd(pt, v0, a0);
      a1 = hn::MulAdd(pt, v1, a1);
      a2 = hn::MulAdd(pt, v2, a2);
      a3 = hn::MulAdd(pt, v3, a3);
    }
    hn::StoreU(a0, df, acc + c);
    hn::StoreU(a1, df, acc + c + N);
    hn::StoreU(a2, df, acc + c + 2 * N);
    hn::StoreU(a3, df, acc + c + 3 * N);
  }
  for (; c + 2 * N <= D; c += 2 * N) {
    auto a0 = hn::LoadU(df, acc + c), a1 = hn::LoadU(df, acc + c + N);
    for (size_t t = 0; t < n_keys; ++t) {
      if (lead != nullptr) PrefetchRows(lead + t * D + c, nullptr, 2 * N * sizeof(T), far);
      const auto pt = hn::Set(df, p[t]);
      hn::Vec<DF> v0, v1;
      LoadPairF32<kSplit>(values + t * D + c, v0, v1);
      a0 = hn::MulAdd(pt, v0, a0);
      a1 = hn::MulAdd(pt, v1, a1);
    }
    hn::StoreU(a0, df, acc + c);
    hn::StoreU(a1, df, acc + c + N);
  }
  for (; c + N <= D; c += N) {  // As ValuesOf.
    auto a0 = hn::LoadU(df, acc + c);
    for (size_t t = 0; t < n_keys; ++t) {
      a0 = hn::MulAdd(hn::Set(df, p[t]), LoadF32(values + t * D + c), a0);
    }
    hn::StoreU(a0, df, acc + c);
  }
  for (; c < D; ++c) {
    for (size_t t = 0; t < n_keys; ++t) acc[c] += p[t] * ScalarToF32(values[t * D + c]);
  }
}

// acc[j] += sum_t p[j][t] * V[t] for two queries: eight chunks at a time on AVX-512 (16
// accumulators), four elsewhere (8 of 16 registers), so each V chunk is widened once for both.
// kSplit and lead as ValuesOf.
template <bool kSplit, typename T>
HWY_INLINE void Values2(const float* HWY_RESTRICT p, size_t t_pad, const PageSegment<T>* runs,
                        size_t num_runs, size_t D, float* HWY_RESTRICT acc, bool fetch) {
  const size_t N = hn::Lanes(DF());
  constexpr size_t kWide = HWY_TARGET <= HWY_AVX3 ? 8 : 4;
  const size_t passes = (D + kWide * N - 1) / (kWide * N);
  ForEachValueWindow(runs, num_runs, D, passes, fetch, [&](const PageSegment<T>* w, size_t nw) {
    size_t c = 0;
    for (; c + kWide * N <= D; c += kWide * N) {
      ValueChunks<2, kWide, kSplit>(p, t_pad, w, nw, D, c, acc, fetch);
    }
    for (; c + 2 * N <= D; c += 2 * N) ValueChunks<2, 2, kSplit>(p, t_pad, w, nw, D, c, acc, fetch);
    if (c + N <= D) {  // As ValuesOf.
      ValueChunks<2, 1, false>(p, t_pad, w, nw, D, c, acc, fetch);
      c += N;
    }
    ValueTail<2>(p, t_pad, w, nw, D, c, acc);
  });
}

}  // namespace pagedkv::internal::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // PAGEDKV_ROW_VALUES_INL_H_

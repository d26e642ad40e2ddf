// The attention kernel for work items with many queries (extend, prefill): K/V widened to f32
// once per step of keys, then products laid out like a matrix multiply, with no horizontal sums.
//
// Per step of 64 keys:
//   - the step's K rows are widened into an f32 tile (row-major), once for all the item's queries;
//   - scores are taken transposed, S^T[t][j] = sum_d K[t][d] * Q^T[d][j], a key element broadcast
//     against whole vectors of queries (Q^T is built once per item): each FMA adds one full
//     product per lane, where the row-dot kernels need a horizontal sum per score;
//   - the online softmax runs down the columns of S^T, a vector of queries at a time;
//   - V rows are widened into the same tile, and acc[j] += P[j][t] * V[t] broadcasts P.
// AttendItemT converts K and V once per group of four queries and sums each score across lanes;
// for a tile of 64 query vectors (extend) that is 16 conversions and 4096 horizontal sums per
// step of 64 keys, which this kernel does not pay. Extend of 512 tokens on 1,536 (Emerald
// Rapids, one thread, alternating runs) took 0.61x the time of AttendItemT with f32 pages,
// 0.65x with bf16 widened and 0.67x with f16; 0.71x with bf16 at two threads.
//
// Decode keeps AttendItemT: with a handful of queries per KV head, most lanes of a vector of
// queries would be empty.

#if defined(PAGEDKV_ATTENTION_TILE_KERNEL_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef PAGEDKV_ATTENTION_TILE_KERNEL_INL_H_
#undef PAGEDKV_ATTENTION_TILE_KERNEL_INL_H_
#else
#define PAGEDKV_ATTENTION_TILE_KERNEL_INL_H_
#endif

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "attention/kernel_args.h"
#include "attention/soft_cap-inl.h"
#include "attention/softmax_exp-inl.h"
#include "attention/widen-inl.h"
#include "attention/work_item-inl.h"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace pagedkv::internal::HWY_NAMESPACE {

// Register blocking: kTileKeys keys x 2 query vectors for scores, kTileQueries queries x
// kTileChunks dim vectors for values.
#if HWY_TARGET <= HWY_AVX3
constexpr size_t kTileKeys = 8;     // 16 accumulators, 2 query vectors, a broadcast: 19 of 32.
constexpr size_t kTileQueries = 4;  // 16 accumulators, 4 value vectors, a broadcast: 21 of 32.
constexpr size_t kTileChunks = 4;
#else
// 12 accumulators + 2 query or value vectors + a broadcast: 15 of 16. With 8 accumulators (four
// keys or queries by two vectors), each took one FMA per pass of its loop, so the loop could not
// go faster than the FMA's latency (4 cycles on Zen 3) allowed, which is just the two FMAs a cycle
// of its throughput: any late operand cost a cycle. Six by two, both compiled into one binary and
// their calls alternated (extend of 512 on 1,536, Zen 3 VM, three runs): f32 0.89-0.94x the
// time, bf16 0.86-0.91x, f16 0.90-0.94x at one thread, bf16 0.85-0.92x at two; in two of them the
// values' blocking alone 0.87-0.97x, the scores' alone 0.94-1.07x. (Before that, two queries by
// four value vectors had GCC fold the value loads into the FMAs, loading each V chunk twice; four
// by two measured f32 0.88-0.96x, bf16 0.80-0.88x the time of that.) Keys and queries left over go
// four at a time.
constexpr size_t kTileKeys = 6;
constexpr size_t kTileQueries = 6;
constexpr size_t kTileChunks = 2;
#endif

// Fewest queries per item for the tile kernel: two vectors' worth, so its vectors of queries
// are mostly full and the per-step widening is shared by many queries.
inline size_t TileMinQueries() { return 2 * hn::Lanes(DF()); }

// st[t * nqp + j] = kf[t] . qt[:, j] for kT keys from t0 and kV query vectors from j0.
template <size_t kT, size_t kV>
HWY_INLINE void TileScores(const float* HWY_RESTRICT kf, size_t D, const float* HWY_RESTRICT qt,
                           size_t nqp, size_t t0, size_t j0, float* HWY_RESTRICT st) {
  const DF df;
  const size_t N = hn::Lanes(df);
  hn::Vec<DF> acc[kT][kV];
  for (size_t i = 0; i < kT; ++i) {
    for (size_t v = 0; v < kV; ++v) acc[i][v] = hn::Zero(df);
  }
  const float* HWY_RESTRICT krow = kf + t0 * D;
  for (size_t d = 0; d < D; ++d) {
    hn::Vec<DF> qv[kV];
    for (size_t v = 0; v < kV; ++v) qv[v] = hn::LoadU(df, qt + d * nqp + j0 + v * N);
    for (size_t i = 0; i < kT; ++i) {
      const auto k = hn::Set(df, krow[i * D + d]);
      for (size_t v = 0; v < kV; ++v) acc[i][v] = hn::MulAdd(k, qv[v], acc[i][v]);
    }
  }
  for (size_t i = 0; i < kT; ++i) {
    for (size_t v = 0; v < kV; ++v) hn::StoreU(acc[i][v], df, st + (t0 + i) * nqp + j0 + v * N);
  }
}

// acc[j] += sum_t p[t][j] * vf[t] for kR queries from j0, dims [c0, c0 + kC * N).
template <size_t kR, size_t kC>
HWY_INLINE void TileValues(const float* HWY_RESTRICT p, size_t nqp, const float* HWY_RESTRICT vf,
                           size_t n, size_t D, size_t j0, size_t c0, float* HWY_RESTRICT acc) {
  const DF df;
  const size_t N = hn::Lanes(df);
  hn::Vec<DF> a[kR][kC];
  for (size_t r = 0; r < kR; ++r) {
    for (size_t c = 0; c < kC; ++c) a[r][c] = hn::LoadU(df, acc + (j0 + r) * D + c0 + c * N);
  }
  for (size_t t = 0; t < n; ++t) {
    hn::Vec<DF> v[kC];
    for (size_t c = 0; c < kC; ++c) v[c] = hn::LoadU(df, vf + t * D + c0 + c * N);
    for (size_t r = 0; r < kR; ++r) {
      const auto pr = hn::Set(df, p[t * nqp + j0 + r]);
      for (size_t c = 0; c < kC; ++c) a[r][c] = hn::MulAdd(pr, v[c], a[r][c]);
    }
  }
  for (size_t r = 0; r < kR; ++r) {
    for (size_t c = 0; c < kC; ++c) hn::StoreU(a[r][c], df, acc + (j0 + r) * D + c0 + c * N);
  }
}

// TileValues over every dim of kR queries from j0: kC vectors at a time, then one, then the
// scalar rest.
template <size_t kR, size_t kC>
HWY_INLINE void TileValuesOfRows(const float* HWY_RESTRICT p, size_t nqp,
                                 const float* HWY_RESTRICT vf, size_t n, size_t D, size_t j0,
                                 float* HWY_RESTRICT acc) {
  const size_t N = hn::Lanes(DF());
  const size_t full = D / N * N;
  size_t c = 0;
  for (; c + kC * N <= full; c += kC * N) TileValues<kR, kC>(p, nqp, vf, n, D, j0, c, acc);
  for (; c < full; c += N) TileValues<kR, 1>(p, nqp, vf, n, D, j0, c, acc);
  for (size_t r = 0; r < kR; ++r) {
    float* HWY_RESTRICT row = acc + (j0 + r) * D;
    for (size_t d = full; d < D; ++d) {
      for (size_t t = 0; t < n; ++t) row[d] += p[t * nqp + j0 + r] * vf[t * D + d];
    }
  }
}

// Widens the item's K or V rows of keys [t0, t1) (pages named by the block table) into
// tile[(key - t0) * D + d], f32.
template <typename T>
HWY_INLINE void WidenRows(const KernelArgs& a, const WorkItem& it, bool is_value, int64_t t0,
                          int64_t t1, float* HWY_RESTRICT tile) {
  const DF df;
  const size_t N = hn::Lanes(df);
  const PagedKvView& view = a.view;
  const size_t D = static_cast<size_t>(view.head_dim);
  const int64_t bs = view.block_size;
  const BlockId* table = view.BlockTable(it.seq);
  for (int64_t b = t0 / bs; b * bs < t1; ++b) {
    const int64_t r0 = std::max(t0, b * bs), r1 = std::min(t1, (b + 1) * bs);
    const T* HWY_RESTRICT src = PageOf<T>(view, a.layer, is_value, table[b], it.kv_head) +
                                static_cast<size_t>(r0 - b * bs) * D;
    float* HWY_RESTRICT dst = tile + static_cast<size_t>(r0 - t0) * D;
    const size_t n = static_cast<size_t>(r1 - r0) * D;  // Rows are adjacent within a page.
    size_t i = 0;
    for (; i + N <= n; i += N) hn::StoreU(LoadF32(src + i), df, dst + i);
    for (; i < n; ++i) dst[i] = ScalarToF32(src[i]);
  }
}

template <typename T>
void AttendTileT(const KernelArgs& a, const WorkItem& it) {
  const DF df;
  const size_t N = hn::Lanes(df);
  const PagedKvView& view = a.view;
  const size_t D = static_cast<size_t>(view.head_dim);
  const int64_t bs = view.block_size;
  const int64_t G = a.group;
  const ItemSpan span = SpanOf(a, it);
  const size_t NQ = static_cast<size_t>(span.rows * G);
  const size_t nqp = (NQ + N - 1) / N * N;  // Query columns, padded with zero queries.
  // Keys per step: 64, whole pages where pages are smaller; larger pages are split. The K or V
  // tile is then 64 rows of head_dim floats (32 KiB at head dim 128).
  const size_t step_keys = static_cast<size_t>(bs) <= 64 ? 64 / bs * bs : 64;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();

  thread_local Scratch scratch;
  Scratch& s = scratch;
  s.q.assign(D * nqp, 0.0f);  // Q^T: s.q[d * nqp + j], scaled.
  s.acc.assign(nqp * D, 0.0f);
  s.m.assign(nqp, kNegInf);
  s.l.assign(nqp, 0.0f);
  s.scores.resize(step_keys * nqp);  // S^T, then P^T.
  s.tile.resize(step_keys * D);
  float* HWY_RESTRICT qt = s.q.data();
  float* HWY_RESTRICT acc = s.acc.data();
  float* HWY_RESTRICT st = s.scores.data();
  float* HWY_RESTRICT tile = s.tile.data();
  for (int64_t r = 0; r < span.rows; ++r) {
    for (int64_t g = 0; g < G; ++g) {
      const float* src = QueryOf(a, it, r, g);
      const size_t j = static_cast<size_t>(r * G + g);
      for (size_t d = 0; d < D; ++d) qt[d * nqp + j] = src[d] * a.scale;
    }
  }

  const int64_t step = static_cast<int64_t>(step_keys);
  const auto neg_inf = hn::Set(df, kNegInf);
  alignas(64) float correction[hn::MaxLanes(DF())];
  for (int64_t t0 = span.lo, t1 = span.lo; t0 < span.hi; t0 = t1) {
    t1 = std::min(span.hi, (t0 / step + 1) * step);
    const size_t n = static_cast<size_t>(t1 - t0);

    WidenRows<T>(a, it, /*is_value=*/false, t0, t1, tile);
    size_t t = 0;
    // kT keys at a time, for as many as there are.
    const auto scores_of_keys = [&](auto keys) {
      constexpr size_t kT = decltype(keys)::value;
      for (; t + kT <= n; t += kT) {
        size_t j = 0;
        for (; j + 2 * N <= nqp; j += 2 * N) TileScores<kT, 2>(tile, D, qt, nqp, t, j, st);
        if (j < nqp) TileScores<kT, 1>(tile, D, qt, nqp, t, j, st);
      }
    };
    scores_of_keys(std::integral_constant<size_t, kTileKeys>());
    if constexpr (kTileKeys > 4) scores_of_keys(std::integral_constant<size_t, 4>());
    for (; t < n; ++t) {
      for (size_t j = 0; j < nqp; j += N) TileScores<1, 1>(tile, D, qt, nqp, t, j, st);
    }
    if (a.soft_cap > 0) SoftCap(a.soft_cap, st, n * nqp);
    // Causal and sliding-window mask, only where the step crosses a row's bounds.
    ForEachMaskedKey(a, span, t0, t1, [&](int64_t r, int64_t key) {
      float* col = st + static_cast<size_t>(key - t0) * nqp + static_cast<size_t>(r * G);
      for (int64_t g = 0; g < G; ++g) col[g] = kNegInf;
    });
    // Online softmax down the columns, a vector of queries at a time. A query that has seen
    // only masked keys keeps max -inf, sum 0 and zero probabilities.
    for (size_t j = 0; j < nqp; j += N) {
      auto vmax = neg_inf;
      for (size_t k = 0; k < n; ++k) vmax = hn::Max(vmax, hn::LoadU(df, st + k * nqp + j));
      const auto old_max = hn::LoadU(df, s.m.data() + j);
      const auto new_max = hn::Max(old_max, vmax);
      const auto seen = hn::Lt(neg_inf, new_max);
      const auto base = hn::IfThenElseZero(seen, new_max);
      auto sum = hn::Zero(df);
      for (size_t k = 0; k < n; ++k) {
        const auto x = hn::LoadU(df, st + k * nqp + j);
        const auto p = ExpBelowMax(df, x, base);
        hn::StoreU(p, df, st + k * nqp + j);
        sum = hn::Add(sum, p);
      }
      const auto corr = ExpBelowMax(df, old_max, base);
      hn::StoreU(hn::MulAdd(hn::LoadU(df, s.l.data() + j), corr, sum), df, s.l.data() + j);
      hn::StoreU(new_max, df, s.m.data() + j);
      hn::Store(corr, df, correction);
      for (size_t i = 0; i < N && j + i < NQ; ++i) {
        if (correction[i] == 1.0f) continue;
        float* HWY_RESTRICT row = acc + (j + i) * D;
        const auto vc = hn::Set(df, correction[i]);
        size_t d = 0;
        for (; d + N <= D; d += N) hn::StoreU(hn::Mul(hn::LoadU(df, row + d), vc), df, row + d);
        for (; d < D; ++d) row[d] *= correction[i];
      }
    }

    WidenRows<T>(a, it, /*is_value=*/true, t0, t1, tile);
    size_t j = 0;
    for (; j + kTileQueries <= NQ; j += kTileQueries) {
      TileValuesOfRows<kTileQueries, kTileChunks>(st, nqp, tile, n, D, j, acc);
    }
    if constexpr (kTileQueries > 4) {
      for (; j + 4 <= NQ; j += 4) TileValuesOfRows<4, kTileChunks>(st, nqp, tile, n, D, j, acc);
    }
    for (; j < NQ; ++j) TileValuesOfRows<1, 4>(st, nqp, tile, n, D, j, acc);
  }

  WriteRows<false, false>(a, it, acc, D, s.m.data(), s.l.data());
}

}  // namespace pagedkv::internal::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // PAGEDKV_ATTENTION_TILE_KERNEL_INL_H_

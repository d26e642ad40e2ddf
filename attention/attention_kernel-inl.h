// The row kernel for one work item (decode, and any item with few queries per KV head; items
// with many take tile_kernel-inl.h), compiled once per Highway target (attention.cc includes
// this file through hwy/foreach_target.h).
//
// Per KV block of the item's range: K rows are dotted with every query of the group (GQA: a
// page is read once per KV head, not once per query head), scores get the soft-cap and the
// causal/window mask, an online softmax rescales the running sums, and V rows are accumulated
// with the probabilities. Two ways to do the products:
//   - bf16 pages on a CPU with AVX512_BF16, two or more queries per item, in groups of four
//     padded with zero queries: vdpbf16ps on bf16 pairs (bf16_dot-inl.h), queries and
//     probabilities rounded to bf16, f32 sums;
//   - otherwise K and V rows are widened to f32 in registers, once per group of four queries
//     (bf16: split into even and odd dims by a shift and a mask, LoadPairF32). On AVX-512, four
//     keys are scored at a time against the group laid out in rotated blocks, so that 16 dot
//     products are summed with one transpose (RotateQueries); three queries left over are
//     padded to a group, and two take a pair path (Scores2, Values2: eight keys against the
//     pair); V rows (and f16 K rows) are widened once per two groups (eight queries: GQA 8, or
//     GQA 4 with two query rows), Values8 and Scores8.
// K rows kLeadRows positions ahead are prefetched, row for row, while keys are scored, and V rows
// while values are summed, across page boundaries: the hardware prefetcher does not follow a jump
// to a scattered page, nor keep far enough ahead inside a large one.

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
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "attention/bf16_dot-inl.h"
#include "attention/kernel_args.h"
#include "attention/softmax_exp-inl.h"
#include "attention/widen-inl.h"
#include "attention/work_item-inl.h"
#include "hwy/cache_control.h"
#include "hwy/highway.h"
#include "pagedkv/dtype.h"

HWY_BEFORE_NAMESPACE();
namespace pagedkv::internal::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

#if HWY_TARGET != HWY_SCALAR
// Adds the lanes of each 128-bit block of v across blocks and stores the 4 sums.
template <class D, class V>
HWY_INLINE void StoreBlockSums(D d, V v, float* HWY_RESTRICT out4) {
  if constexpr (hn::MaxLanes(D()) > 4) {
    const hn::Half<D> dh;
    StoreBlockSums(dh, hn::Add(hn::LowerHalf(dh, v), hn::UpperHalf(dh, v)), out4);
  } else {
    hn::StoreU(v, d, out4);
  }
}
#endif

#if HWY_TARGET != HWY_SCALAR
// Per 128-bit block b: the sums of block b of a0, a1, a2 and a3, in that order.
HWY_INLINE hn::Vec<DF> BlockSumsOfFour(hn::Vec<DF> a0, hn::Vec<DF> a1, hn::Vec<DF> a2,
                                       hn::Vec<DF> a3) {
  const DF df;
  const hn::Repartition<uint64_t, DF> d64;
  // Per block: [a0 02, a1 02, a0 13, a1 13] and the same for a2, a3.
  const auto t01 = hn::Add(hn::InterleaveLower(df, a0, a1), hn::InterleaveUpper(df, a0, a1));
  const auto t23 = hn::Add(hn::InterleaveLower(df, a2, a3), hn::InterleaveUpper(df, a2, a3));
  const auto lo =
      hn::BitCast(df, hn::InterleaveLower(d64, hn::BitCast(d64, t01), hn::BitCast(d64, t23)));
  const auto hi =
      hn::BitCast(df, hn::InterleaveUpper(d64, hn::BitCast(d64, t01), hn::BitCast(d64, t23)));
  return hn::Add(lo, hi);
}
#endif

// out4[i] = sum of the lanes of a_i: one transpose-and-add tree for four dot products instead of
// four horizontal sums.
HWY_INLINE void SumOfFour(hn::Vec<DF> a0, hn::Vec<DF> a1, hn::Vec<DF> a2, hn::Vec<DF> a3,
                          float* HWY_RESTRICT out4) {
#if HWY_TARGET == HWY_SCALAR
  out4[0] = hn::GetLane(a0);
  out4[1] = hn::GetLane(a1);
  out4[2] = hn::GetLane(a2);
  out4[3] = hn::GetLane(a3);
#else
  // Per block [a0, a1, a2, a3], then across blocks.
  StoreBlockSums(DF(), BlockSumsOfFour(a0, a1, a2, a3), out4);
#endif
}

// Queries are processed four at a time: one register-resident K or V chunk feeds four FMAs.
constexpr size_t kQueryGroup = 4;

// How far ahead of the row being read (in positions of the sequence) its K and V are fetched into
// L1, row for row. With 16-token pages that is the same row of the next page named by the block
// table, which the hardware prefetcher does not follow. Larger pages, and a contiguous cache (one
// page per sequence), are fetched as far ahead inside the page and across into the next: before,
// only the next page was fetched, and from DRAM (bf16, one thread) 128-token pages took 1.27x and
// a contiguous cache 2.4x the time. 8, 32 or 64 rows ahead measured 0.99-1.26x, 0.94-1.11x and
// 0.99-1.18x the time of 16 over those rows; earlier, 2-4 16-token pages ahead was 1.05-1.15x
// and with f32 pages pushed the current ones out of L1.
constexpr int64_t kLeadRows = 16;

// Writes the four scores of key row k from its accumulators a[j] (q[j] . k over the first `full`
// dims, lane by lane) plus the scalar tail of dims [full, D): scores[j * t_pad] = q[j] . k.
template <typename T>
HWY_INLINE void FinishScores4(const float* HWY_RESTRICT q, const T* HWY_RESTRICT k, size_t D,
                              size_t full, const hn::Vec<DF> (&a)[kQueryGroup],
                              float* HWY_RESTRICT scores, size_t t_pad) {
  float sums[4];
  SumOfFour(a[0], a[1], a[2], a[3], sums);
  for (size_t c = full; c < D; ++c) {
    const float kc = ScalarToF32(k[c]);
    for (size_t j = 0; j < kQueryGroup; ++j) sums[j] += q[j * D + c] * kc;
  }
  for (size_t j = 0; j < kQueryGroup; ++j) scores[j * t_pad] = sums[j];
}

#if HWY_TARGET <= HWY_AVX3
// The four queries of a group at q laid out for ScoresOfKeys<*, *, kSplit, true>: chunk i (dims
// [16i, 16i + 16)) of rotation r holds, in 128-bit block b, dims 16i + 4b to 16i + 4b + 3 of
// query (b + r) % 4. Dims past the last whole chunk are left out. 4 * D floats at out.
HWY_INLINE void RotateQueries(const float* HWY_RESTRICT q, size_t D, float* HWY_RESTRICT out) {
  constexpr size_t N = 16;
  for (size_t c = 0; c + N <= D; c += N) {
    for (size_t r = 0; r < kQueryGroup; ++r) {
      for (size_t b = 0; b < 4; ++b) {
        std::memcpy(out + 4 * c + r * N + 4 * b, q + (b + r) % 4 * D + c + 4 * b,
                    4 * sizeof(float));
      }
    }
  }
}

// Writes the scores of kKeys keys against kGroups groups of four queries (kKeys * kGroups = 4;
// the groups' queries D floats apart from q) from the accumulators of
// ScoresOfKeys<kKeys, kGroups, kSplit, true>: a[v][r], v = g * kKeys + i, holds in block b the
// products of key i and query (b + r) % 4 of group g. The blocks of the four accumulators v are
// summed together (lane v of block b) and each sum's blocks rotated back by r, which lines query
// j's products up in block j: 42 vector ops for 16 dot products and a 128-bit store per query
// (two 64-bit stores, one per group, with two groups), where four FinishScores4 take 52 and 16
// scalar stores (bf16 decode on Emerald Rapids, calls alternated in one process: 0.88x the time
// in L2, 0.97x in L3). Dims [full, D) are added from q and k.
template <size_t kKeys, size_t kGroups, typename T>
HWY_INLINE void FinishRotatedScores(const float* HWY_RESTRICT q, const T* HWY_RESTRICT k, size_t D,
                                    size_t full, const hn::Vec<DF> (&a)[4][kQueryGroup],
                                    float* HWY_RESTRICT scores, size_t t_pad) {
  static_assert(kKeys * kGroups == 4 && (kGroups == 1 || kGroups == 2));
  const __m512 s0 = BlockSumsOfFour(a[0][0], a[1][0], a[2][0], a[3][0]).raw;
  const __m512 s1 = BlockSumsOfFour(a[0][1], a[1][1], a[2][1], a[3][1]).raw;
  const __m512 s2 = BlockSumsOfFour(a[0][2], a[1][2], a[2][2], a[3][2]).raw;
  const __m512 s3 = BlockSumsOfFour(a[0][3], a[1][3], a[2][3], a[3][3]).raw;
  // _mm512_shuffle_f32x4: output block j takes input block imm[2j + 1 : 2j]; here (j - r) % 4.
  const __m512 v = _mm512_add_ps(
      _mm512_add_ps(s0, _mm512_shuffle_f32x4(s1, s1, 0x93)),
      _mm512_add_ps(_mm512_shuffle_f32x4(s2, s2, 0x4E), _mm512_shuffle_f32x4(s3, s3, 0x39)));
  // Lane 4j + g * kKeys + i: query j of group g . key i.
  if (full == D) {
    const __m128 block[4] = {_mm512_castps512_ps128(v), _mm512_extractf32x4_ps(v, 1),
                             _mm512_extractf32x4_ps(v, 2), _mm512_extractf32x4_ps(v, 3)};
    for (size_t j = 0; j < kQueryGroup; ++j) {
      if constexpr (kGroups == 1) {
        _mm_storeu_ps(scores + j * t_pad, block[j]);
      } else {
        _mm_storel_pi(reinterpret_cast<__m64*>(scores + j * t_pad), block[j]);
        _mm_storeh_pi(reinterpret_cast<__m64*>(scores + (kQueryGroup + j) * t_pad), block[j]);
      }
    }
    return;
  }
  float sums[16];
  _mm512_storeu_ps(sums, v);
  for (size_t g = 0; g < kGroups; ++g) {
    for (size_t j = 0; j < kQueryGroup; ++j) {
      const size_t query = g * kQueryGroup + j;
      for (size_t i = 0; i < kKeys; ++i) {
        float sum = sums[4 * j + g * kKeys + i];
        for (size_t d = full; d < D; ++d) sum += q[query * D + d] * ScalarToF32(k[i * D + d]);
        scores[query * t_pad + i] = sum;
      }
    }
  }
}
#endif

// Scores of kKeys consecutive key rows at k against kGroups groups of four queries (D floats
// apart from q): scores[j * t_pad + i] = q[j] . row i. Each query chunk loaded feeds kKeys FMAs,
// and each key chunk widened 4 * kGroups. kRotated (AVX-512, kKeys * kGroups = 4): the query
// chunks come from rot, RotateQueries' layout of each group (4 * D floats apart), and
// FinishRotatedScores sums them. The rows kLeadRows on (fetch_k, fetch_v; null: none) are
// prefetched a slice per pass of the dims loop, not in one burst: with two keys, perf sampling
// put 17% of bf16 decode's time on the burst's prefetches (waiting for miss buffers), though
// spreading them measured no faster by itself.
template <size_t kKeys, size_t kGroups, bool kSplit, bool kRotated, typename T>
HWY_INLINE void ScoresOfKeys(const float* HWY_RESTRICT q, const float* HWY_RESTRICT rot,
                             const T* HWY_RESTRICT k, size_t D, float* HWY_RESTRICT scores,
                             size_t t_pad, const T* fetch_k, const T* fetch_v) {
  static_assert(kGroups == 1 || kRotated);
  const DF df;
  const size_t N = hn::Lanes(df);
  const size_t full = D / N * N;
  const size_t lead_bytes = kKeys * D * sizeof(T);
  // Chunk c (N dims from dim c) of query slot j of group g.
  const auto query = [&](size_t g, size_t j, size_t c) {
    return kRotated ? hn::LoadU(df, rot + g * kQueryGroup * D + kQueryGroup * c + j * N)
                    : hn::LoadU(df, q + j * D + c);
  };
  // Accumulator v = g * kKeys + i: key i against group g.
  constexpr size_t kAcc = kKeys * kGroups;
  hn::Vec<DF> a[kAcc][kQueryGroup];
  for (size_t v = 0; v < kAcc; ++v) {
    for (size_t j = 0; j < kQueryGroup; ++j) a[v][j] = hn::Zero(df);
  }
  size_t c = 0;
  for (; c + 2 * N <= full; c += 2 * N) {
    if (fetch_k != nullptr) {
      const size_t off = kKeys * c * sizeof(T);
      PrefetchRows(BytesAhead(fetch_k, off), BytesAhead(fetch_v, off), 2 * kKeys * N * sizeof(T));
    }
    hn::Vec<DF> lo[kKeys], hi[kKeys];
    for (size_t i = 0; i < kKeys; ++i) LoadPairF32<kSplit>(k + i * D + c, lo[i], hi[i]);
    for (size_t g = 0; g < kGroups; ++g) {
      for (size_t j = 0; j < kQueryGroup; ++j) {
        const auto qlo = query(g, j, c);
        const auto qhi = query(g, j, c + N);
        auto* ag = a + g * kKeys;
        for (size_t i = 0; i < kKeys; ++i) ag[i][j] = hn::MulAdd(qlo, lo[i], ag[i][j]);
        for (size_t i = 0; i < kKeys; ++i) ag[i][j] = hn::MulAdd(qhi, hi[i], ag[i][j]);
      }
    }
  }
  if (fetch_k != nullptr && kKeys * c * sizeof(T) < lead_bytes) {
    const size_t off = kKeys * c * sizeof(T);
    PrefetchRows(BytesAhead(fetch_k, off), BytesAhead(fetch_v, off), lead_bytes - off);
  }
  for (; c < full; c += N) {  // Not with kSplit, whose D is a multiple of 2N.
    hn::Vec<DF> kc[kKeys];
    for (size_t i = 0; i < kKeys; ++i) kc[i] = LoadF32(k + i * D + c);
    for (size_t g = 0; g < kGroups; ++g) {
      for (size_t j = 0; j < kQueryGroup; ++j) {
        const auto qj = query(g, j, c);
        auto* ag = a + g * kKeys;
        for (size_t i = 0; i < kKeys; ++i) ag[i][j] = hn::MulAdd(qj, kc[i], ag[i][j]);
      }
    }
  }
  if constexpr (kRotated) {
    static_assert(kAcc == 4 && HWY_TARGET <= HWY_AVX3);
#if HWY_TARGET <= HWY_AVX3
    FinishRotatedScores<kKeys, kGroups>(q, k, D, full, a, scores, t_pad);
#endif
  } else {
    for (size_t i = 0; i < kKeys; ++i) {
      FinishScores4(q, k + i * D, D, full, a[i], scores + i, t_pad);
    }
  }
}

// scores[j][t] = q[j] . K[t] for the four queries of group q (rows of `scores` are t_pad long).
// K rows are read from the page in the storage dtype and widened in registers, once per group
// (kSplit: see LoadPairF32; the queries' dims are then split the same way). Row t of lead_k and
// lead_v (the rows kLeadRows positions on; null for none) is prefetched with row t. rot: the
// group as RotateQueries lays it out, for the four-key passes (AVX-512; else unused).
template <bool kSplit, typename T>
HWY_INLINE void Scores4(const float* HWY_RESTRICT q, const float* HWY_RESTRICT rot,
                        const T* HWY_RESTRICT keys, size_t n_keys, size_t D,
                        float* HWY_RESTRICT scores, size_t t_pad, const T* lead_k,
                        const T* lead_v) {
  const auto at = [D](const T* p, size_t t) { return p == nullptr ? p : p + t * D; };
  size_t t = 0;
  if constexpr (!std::is_same_v<T, float>) {
    // 16-bit pages: several keys per pass (f16 decode, two keys: 0.92-0.94x the time of one;
    // f32 pages, whose key loads are twice as wide, measured 1.07x). Four where there are 32
    // registers (16 accumulators, 8 key chunks, 2 query chunks): bf16 decode on Emerald Rapids
    // 0.88x the time of two keys in L2, 0.95x in L3.
#if HWY_TARGET <= HWY_AVX3
    for (; t + 4 <= n_keys; t += 4) {
      ScoresOfKeys<4, 1, kSplit, true>(q, rot, keys + t * D, D, scores + t, t_pad, at(lead_k, t),
                                       at(lead_v, t));
    }
#endif
    for (; t + 2 <= n_keys; t += 2) {
      ScoresOfKeys<2, 1, kSplit, false>(q, rot, keys + t * D, D, scores + t, t_pad, at(lead_k, t),
                                        at(lead_v, t));
    }
  }
  for (; t < n_keys; ++t) {
    ScoresOfKeys<1, 1, kSplit, false>(q, rot, keys + t * D, D, scores + t, t_pad, at(lead_k, t),
                                      at(lead_v, t));
  }
}

#if HWY_TARGET <= HWY_AVX3
// Scores4 for two groups of four queries (q and rot: the first group's; AVX-512): two keys at a
// time against both groups (16 accumulators), so each key row is widened once for the eight
// queries, where two Scores4 widen it once per group. An odd last key is scored against each
// group in turn. Prefetches as Scores4. Used for f16 pages, whose widening takes two uops per
// vector (GQA 8 decode with Values8, Emerald Rapids, one thread, calls alternated in one
// process: 0.88-0.92x the time of Values8 alone); bf16's split widening is one op, and there
// two Scores4 measured faster (this took 1.04x).
template <bool kSplit, typename T>
HWY_INLINE void Scores8(const float* HWY_RESTRICT q, const float* HWY_RESTRICT rot,
                        const T* HWY_RESTRICT keys, size_t n_keys, size_t D,
                        float* HWY_RESTRICT scores, size_t t_pad, const T* lead_k,
                        const T* lead_v) {
  const auto at = [D](const T* p, size_t t) { return p == nullptr ? p : p + t * D; };
  size_t t = 0;
  for (; t + 2 <= n_keys; t += 2) {
    ScoresOfKeys<2, 2, kSplit, true>(q, rot, keys + t * D, D, scores + t, t_pad, at(lead_k, t),
                                     at(lead_v, t));
  }
  if (t < n_keys) {
    for (size_t g = 0; g < 2; ++g) {
      ScoresOfKeys<1, 1, kSplit, false>(
          q + g * kQueryGroup * D, rot, keys + t * D, D, scores + g * kQueryGroup * t_pad + t,
          t_pad, g == 0 ? at(lead_k, t) : nullptr, g == 0 ? at(lead_v, t) : nullptr);
    }
  }
}
#endif

// acc[j] += sum_t p[j][t] * V[t] over dims [c, c + kChunks * N) for kQueries queries (rows of p
// t_pad apart, of acc D apart): kChunks V chunks, widened once per key (in pairs, as
// LoadPairF32), feed kQueries * kChunks accumulators. The same dims of row t of lead (null: none)
// are prefetched with row t.
template <size_t kQueries, size_t kChunks, bool kSplit, typename T>
HWY_INLINE void ValueChunks(const float* HWY_RESTRICT p, size_t t_pad, const T* HWY_RESTRICT values,
                            size_t n_keys, size_t D, size_t c, float* HWY_RESTRICT acc,
                            const T* lead) {
  const DF df;
  const size_t N = hn::Lanes(df);
  hn::Vec<DF> a[kQueries][kChunks];
  for (size_t j = 0; j < kQueries; ++j) {
    for (size_t k = 0; k < kChunks; ++k) a[j][k] = hn::LoadU(df, acc + j * D + c + k * N);
  }
  for (size_t t = 0; t < n_keys; ++t) {
    if (lead != nullptr) PrefetchRows(lead + t * D + c, nullptr, kChunks * N * sizeof(T));
    const T* HWY_RESTRICT v = values + t * D + c;
    hn::Vec<DF> vc[kChunks];
    for (size_t k = 0; k < kChunks; k += 2) LoadPairF32<kSplit>(v + k * N, vc[k], vc[k + 1]);
    for (size_t j = 0; j < kQueries; ++j) {
      const auto pj = hn::Set(df, p[j * t_pad + t]);
      for (size_t k = 0; k < kChunks; ++k) a[j][k] = hn::MulAdd(pj, vc[k], a[j][k]);
    }
  }
  for (size_t j = 0; j < kQueries; ++j) {
    for (size_t k = 0; k < kChunks; ++k) hn::StoreU(a[j][k], df, acc + j * D + c + k * N);
  }
}

// acc[j] += sum_t p[j][t] * V[t] for the four queries of a group. V chunks are widened in
// registers once and feed four independent accumulators each. With kSplit, acc holds each 2N
// dims' even dims, then its odd ones (LoadPairF32). Row t of lead (null: none) is prefetched
// with row t, a pass's dims at a time.
template <bool kSplit, typename T>
HWY_INLINE void Values4(const float* HWY_RESTRICT p, size_t t_pad, const T* HWY_RESTRICT values,
                        size_t n_keys, size_t D, float* HWY_RESTRICT acc, const T* lead) {
  const size_t N = hn::Lanes(DF());
  size_t c = 0;
#if HWY_TARGET <= HWY_AVX3
  // Four chunks at a time where there are 32 registers (AVX-512): 16 accumulators + 4 values + a
  // probability, so each broadcast probability feeds four FMAs instead of two (f16 decode
  // 0.95-0.96x the time; f32 the same).
  for (; c + 4 * N <= D; c += 4 * N) {
    ValueChunks<kQueryGroup, 4, kSplit>(p, t_pad, values, n_keys, D, c, acc, lead);
  }
#endif
  // Two chunks at a time: 8 accumulators + 2 values + 4 probabilities fit 16 registers.
  for (; c + 2 * N <= D; c += 2 * N) {
    ValueChunks<kQueryGroup, 2, kSplit>(p, t_pad, values, n_keys, D, c, acc, lead);
  }
  for (; c < D; ++c) {  // Not with kSplit, whose D is a multiple of 2N.
    for (size_t t = 0; t < n_keys; ++t) {
      const float v = ScalarToF32(values[t * D + c]);
      for (size_t j = 0; j < kQueryGroup; ++j) acc[j * D + c] += p[j * t_pad + t] * v;
    }
  }
}

#if HWY_TARGET <= HWY_AVX3
// acc[j] += sum_t p[j][t] * V[t] for eight queries (two groups of four; D a multiple of 2N),
// where there are 32 registers: two chunks at a time feed 16 accumulators, so each key's V is
// widened (and read from L1) once for the eight, where two Values4 do it once per group.
// Prefetches as Values4. GQA 8 decode on Emerald Rapids, one thread, 1 x 2,048, calls
// alternated in one process, against two Values4: bf16 0.94-0.97x the time, f16 0.94x, f32
// 0.91-0.93x (f32 has nothing to widen: its gain is the second read of V).
template <bool kSplit, typename T>
HWY_INLINE void Values8(const float* HWY_RESTRICT p, size_t t_pad, const T* HWY_RESTRICT values,
                        size_t n_keys, size_t D, float* HWY_RESTRICT acc, const T* lead) {
  const size_t N = hn::Lanes(DF());
  for (size_t c = 0; c < D; c += 2 * N) {
    ValueChunks<2 * kQueryGroup, 2, kSplit>(p, t_pad, values, n_keys, D, c, acc, lead);
  }
}
#endif

// One query: scores[t] = q . K[t], two accumulators so the FMAs overlap. Prefetches as Scores4;
// kSplit as there.
template <bool kSplit, typename T>
HWY_INLINE void Scores1(const float* HWY_RESTRICT q, const T* HWY_RESTRICT keys, size_t n_keys,
                        size_t D, float* HWY_RESTRICT scores, const T* lead_k, const T* lead_v) {
  const DF df;
  const size_t N = hn::Lanes(df);
  for (size_t t = 0; t < n_keys; ++t) {
    if (lead_k != nullptr) {
      PrefetchRows(lead_k + t * D, BytesAhead(lead_v, t * D * sizeof(T)), D * sizeof(T));
    }
    const T* HWY_RESTRICT k = keys + t * D;
    auto a0 = hn::Zero(df), a1 = hn::Zero(df);
    size_t c = 0;
    for (; c + 2 * N <= D; c += 2 * N) {
      hn::Vec<DF> klo, khi;
      LoadPairF32<kSplit>(k + c, klo, khi);
      a0 = hn::MulAdd(hn::LoadU(df, q + c), klo, a0);
      a1 = hn::MulAdd(hn::LoadU(df, q + c + N), khi, a1);
    }
    for (; c + N <= D; c += N) a0 = hn::MulAdd(hn::LoadU(df, q + c), LoadF32(k + c), a0);
    float sum = hn::GetLane(hn::SumOfLanes(df, hn::Add(a0, a1)));
    for (; c < D; ++c) sum += q[c] * ScalarToF32(k[c]);
    scores[t] = sum;
  }
}

// One query: acc += sum_t p[t] * V[t], four chunks at a time; kSplit and lead as Values4.
template <bool kSplit, typename T>
HWY_INLINE void Values1(const float* HWY_RESTRICT p, const T* HWY_RESTRICT values, size_t n_keys,
                        size_t D, float* HWY_RESTRICT acc, const T* lead) {
  const DF df;
  const size_t N = hn::Lanes(df);
  size_t c = 0;
  for (; c + 4 * N <= D; c += 4 * N) {
    auto a0 = hn::LoadU(df, acc + c), a1 = hn::LoadU(df, acc + c + N);
    auto a2 = hn::LoadU(df, acc + c + 2 * N), a3 = hn::LoadU(df, acc + c + 3 * N);
    for (size_t t = 0; t < n_keys; ++t) {
      if (lead != nullptr) PrefetchRows(lead + t * D + c, nullptr, 4 * N * sizeof(T));
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
      if (lead != nullptr) PrefetchRows(lead + t * D + c, nullptr, 2 * N * sizeof(T));
      const auto pt = hn::Set(df, p[t]);
      hn::Vec<DF> v0, v1;
      LoadPairF32<kSplit>(values + t * D + c, v0, v1);
      a0 = hn::MulAdd(pt, v0, a0);
      a1 = hn::MulAdd(pt, v1, a1);
    }
    hn::StoreU(a0, df, acc + c);
    hn::StoreU(a1, df, acc + c + N);
  }
  for (; c + N <= D; c += N) {  // Not with kSplit, whose D is a multiple of 2N.
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

#if HWY_TARGET <= HWY_AVX3
// Scores of eight consecutive key rows at k against two queries (D floats apart from q):
// scores[j * t_pad + i] = q[j] . row i. Each key chunk widened feeds both queries (16
// accumulators), and the 16 dot products are summed by one transpose: per accumulator the lanes
// of each 128-bit block (BlockSumsOfFour), then the blocks, 45 vector ops. The rows kLeadRows on
// (fetch_k, fetch_v; null: none) are prefetched a slice per pass, as ScoresOfKeys.
template <bool kSplit, typename T>
HWY_INLINE void ScoresOfEightKeys2(const float* HWY_RESTRICT q, const T* HWY_RESTRICT k, size_t D,
                                   float* HWY_RESTRICT scores, size_t t_pad, const T* fetch_k,
                                   const T* fetch_v) {
  constexpr size_t kKeys = 8;
  const DF df;
  const size_t N = hn::Lanes(df);
  const size_t full = D / N * N;
  const size_t lead_bytes = kKeys * D * sizeof(T);
  hn::Vec<DF> a[kKeys][2];
  for (size_t i = 0; i < kKeys; ++i) a[i][0] = a[i][1] = hn::Zero(df);
  size_t c = 0;
  for (; c + 2 * N <= full; c += 2 * N) {
    if (fetch_k != nullptr) {
      const size_t off = kKeys * c * sizeof(T);
      PrefetchRows(BytesAhead(fetch_k, off), BytesAhead(fetch_v, off), 2 * kKeys * N * sizeof(T));
    }
    const auto q0lo = hn::LoadU(df, q + c), q0hi = hn::LoadU(df, q + c + N);
    const auto q1lo = hn::LoadU(df, q + D + c), q1hi = hn::LoadU(df, q + D + c + N);
    for (size_t i = 0; i < kKeys; ++i) {
      hn::Vec<DF> lo, hi;
      LoadPairF32<kSplit>(k + i * D + c, lo, hi);
      a[i][0] = hn::MulAdd(q0hi, hi, hn::MulAdd(q0lo, lo, a[i][0]));
      a[i][1] = hn::MulAdd(q1hi, hi, hn::MulAdd(q1lo, lo, a[i][1]));
    }
  }
  if (fetch_k != nullptr && kKeys * c * sizeof(T) < lead_bytes) {
    const size_t off = kKeys * c * sizeof(T);
    PrefetchRows(BytesAhead(fetch_k, off), BytesAhead(fetch_v, off), lead_bytes - off);
  }
  for (; c < full; c += N) {  // Not with kSplit, whose D is a multiple of 2N.
    const auto q0 = hn::LoadU(df, q + c), q1 = hn::LoadU(df, q + D + c);
    for (size_t i = 0; i < kKeys; ++i) {
      const auto kc = LoadF32(k + i * D + c);
      a[i][0] = hn::MulAdd(q0, kc, a[i][0]);
      a[i][1] = hn::MulAdd(q1, kc, a[i][1]);
    }
  }
  // Per 128-bit block b: lane i holds that block's part of (keys 0-3 or 4-7) . query j.
  const __m512 s0 = BlockSumsOfFour(a[0][0], a[1][0], a[2][0], a[3][0]).raw;
  const __m512 s1 = BlockSumsOfFour(a[0][1], a[1][1], a[2][1], a[3][1]).raw;
  const __m512 s2 = BlockSumsOfFour(a[4][0], a[5][0], a[6][0], a[7][0]).raw;
  const __m512 s3 = BlockSumsOfFour(a[4][1], a[5][1], a[6][1], a[7][1]).raw;
  // Blocks summed by a 4 x 4 transpose: _mm512_shuffle_f32x4(x, y, 0x88) takes blocks
  // [x0, x2, y0, y2], 0xDD [x1, x3, y1, y3].
  const __m512 p01 =
      _mm512_add_ps(_mm512_shuffle_f32x4(s0, s1, 0x88), _mm512_shuffle_f32x4(s0, s1, 0xDD));
  const __m512 p23 =
      _mm512_add_ps(_mm512_shuffle_f32x4(s2, s3, 0x88), _mm512_shuffle_f32x4(s2, s3, 0xDD));
  // Blocks: keys 0-3 . q0, keys 0-3 . q1, keys 4-7 . q0, keys 4-7 . q1.
  const __m512 v =
      _mm512_add_ps(_mm512_shuffle_f32x4(p01, p23, 0x88), _mm512_shuffle_f32x4(p01, p23, 0xDD));
  float sums[16];
  _mm512_storeu_ps(sums, v);
  for (size_t j = 0; j < 2; ++j) {
    for (size_t i = 0; i < kKeys; ++i) {
      float sum = sums[(i / 4 * 2 + j) * 4 + i % 4];
      for (size_t d = full; d < D; ++d) sum += q[j * D + d] * ScalarToF32(k[i * D + d]);
      scores[j * t_pad + i] = sum;
    }
  }
}

// scores[j][t] = q[j] . K[t] for two queries (D floats apart; rows of `scores` t_pad long), on
// AVX-512: eight keys at a time (ScoresOfEightKeys2), the rest one query at a time (Scores1).
// Prefetches as Scores4.
template <bool kSplit, typename T>
HWY_INLINE void Scores2(const float* HWY_RESTRICT q, const T* HWY_RESTRICT keys, size_t n_keys,
                        size_t D, float* HWY_RESTRICT scores, size_t t_pad, const T* lead_k,
                        const T* lead_v) {
  const auto at = [D](const T* p, size_t t) { return p == nullptr ? p : p + t * D; };
  size_t t = 0;
  for (; t + 8 <= n_keys; t += 8) {
    ScoresOfEightKeys2<kSplit>(q, keys + t * D, D, scores + t, t_pad, at(lead_k, t), at(lead_v, t));
  }
  if (t < n_keys) {
    for (size_t j = 0; j < 2; ++j) {
      Scores1<kSplit>(q + j * D, keys + t * D, n_keys - t, D, scores + j * t_pad + t,
                      j == 0 ? at(lead_k, t) : nullptr, j == 0 ? at(lead_v, t) : nullptr);
    }
  }
}

// acc[j] += sum_t p[j][t] * V[t] for two queries, on AVX-512: eight chunks at a time feed 16
// accumulators, so each V chunk is widened once for both. kSplit and lead as Values4.
template <bool kSplit, typename T>
HWY_INLINE void Values2(const float* HWY_RESTRICT p, size_t t_pad, const T* HWY_RESTRICT values,
                        size_t n_keys, size_t D, float* HWY_RESTRICT acc, const T* lead) {
  const size_t N = hn::Lanes(DF());
  size_t c = 0;
  for (; c + 8 * N <= D; c += 8 * N) {
    ValueChunks<2, 8, kSplit>(p, t_pad, values, n_keys, D, c, acc, lead);
  }
  for (; c + 2 * N <= D; c += 2 * N) {
    ValueChunks<2, 2, kSplit>(p, t_pad, values, n_keys, D, c, acc, lead);
  }
  for (; c < D; ++c) {  // Not with kSplit, whose D is a multiple of 2N.
    for (size_t t = 0; t < n_keys; ++t) {
      const float v = ScalarToF32(values[t * D + c]);
      for (size_t j = 0; j < 2; ++j) acc[j * D + c] += p[j * t_pad + t] * v;
    }
  }
}
#endif

// kDot: bf16 pages through vdpbf16ps (bf16_dot-inl.h), in groups of four queries (padded);
// otherwise K and V are widened to f32 in registers. kSplit (bf16, head_dim a multiple of 2N):
// widened by LoadPairF32's split, with queries and accumulators in its dim order.
template <typename T, bool kDot, bool kSplit = false>
void AttendItemT(const KernelArgs& a, const WorkItem& it) {
  const DF df;
  const size_t N = hn::Lanes(df);
  const PagedKvView& view = a.view;
  const size_t D = static_cast<size_t>(view.head_dim);
  const int64_t bs = view.block_size;
  const int64_t G = a.group;
  const ItemSpan span = SpanOf(a, it);
  const int64_t rows = span.rows;
  const size_t NQ = static_cast<size_t>(rows * G);
  // Query slots: whole groups of four, padded with zero queries whose scores are computed and
  // ignored (and on the dot path, probabilities left zero), wherever a group of four costs about
  // what the queries left over cost on their own: on the dot path always, and on AVX-512 when
  // three are left over (ScoresOfKeys<4, 1, kSplit, true>). GQA 2 in groups of four, against one
  // query at a time, on Emerald Rapids: 0.75-0.86x the time for bf16 and f16, 0.85-0.98x for f32;
  // on AVX2, without the rotated scores, 1.04-1.10x, so not there. Two left over on AVX-512 take
  // the pair path instead (Scores2, Values2): GQA 2 decode, 1 x 2,048, one thread, calls
  // alternated in one process, against the padded group: bf16 0.96x the time (0.76-0.78x in L2),
  // f16 0.88x, f32 0.96-0.97x.
  constexpr bool kPadRest = HWY_TARGET <= HWY_AVX3;
  [[maybe_unused]] const bool pair_rest = kPadRest && !kDot && NQ % kQueryGroup == 2;
  const bool pad = kDot || (kPadRest && NQ % kQueryGroup == 3);
  const size_t NS = pad ? (NQ + kQueryGroup - 1) / kQueryGroup * kQueryGroup : NQ;
  // Whole groups of four query slots, then a pair (pair_rest), then the rest one at a time.
  const size_t NQ4 = NS / kQueryGroup * kQueryGroup;
  // Keys per step (see below): up to 256, as long as the step's scores stay within 16 KiB
  // (decode's four queries: 256 keys, 9% faster than 64 in L3; extend's 64: 64 keys), then
  // whole pages when pages are smaller. Rows of scores are padded to whole vectors.
  const size_t step_target = std::clamp<size_t>(4096 / NS / 64 * 64, 64, 256);
  const size_t step_keys = static_cast<size_t>(bs) <= step_target
                               ? step_target / static_cast<size_t>(bs) * static_cast<size_t>(bs)
                               : step_target;
  const size_t t_pad = (step_keys + N - 1) / N * N;
  // The dot path keeps its accumulators in whole 32-dim chunks, in StoreDotValues' order.
  const size_t acc_stride = kDot ? (D + 31) / 32 * 32 : D;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();

  thread_local Scratch scratch;
  Scratch& s = scratch;
  s.q.assign(NS * D, 0.0f);
  s.acc.assign(NS * acc_stride, 0.0f);
  s.m.assign(NS, kNegInf);
  s.l.assign(NS, 0.0f);
  s.scores.resize(NS * t_pad);
  float* HWY_RESTRICT acc_all = s.acc.data();
  float* HWY_RESTRICT scores_all = s.scores.data();
  const float* HWY_RESTRICT q_all = s.q.data();

  // Query j = row * G + g, pre-multiplied by the softmax scale.
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < G; ++g) {
      const float* src = QueryOf(a, it, r, g);
      float* dst = s.q.data() + static_cast<size_t>(r * G + g) * D;
      if constexpr (kSplit) {
        for (size_t c = 0; c < D; c += 2 * N) {
          for (size_t i = 0; i < N; ++i) {
            dst[c + i] = src[c + 2 * i] * a.scale;
            dst[c + N + i] = src[c + 2 * i + 1] * a.scale;
          }
        }
      } else {
        for (size_t d = 0; d < D; ++d) dst[d] = src[d] * a.scale;
      }
    }
  }
  // The groups of four queries as RotateQueries lays them out, each in 4 * D floats, for the
  // four-key scores of 16-bit pages on AVX-512 (Scores4); null elsewhere.
  const float* HWY_RESTRICT rot_all = nullptr;
#if HWY_TARGET <= HWY_AVX3
  if constexpr (!kDot && !std::is_same_v<T, float>) {
    s.rotated_q.resize(NQ4 * D);
    for (size_t j = 0; j < NQ4; j += kQueryGroup) {
      RotateQueries(q_all + j * D, D, s.rotated_q.data() + j * D);
    }
    rot_all = s.rotated_q.data();
  }
#endif
  if constexpr (kDot) {
    s.packed_q.resize(PackedQuerySize(NS, D));
    PackQueries(q_all, NS, D, s.packed_q.data());
    // Zeros: the padding slots' rows are never written.
    s.probabilities.assign(NS * t_pad, 0);
  }

  const int64_t lo = span.lo, hi = span.hi;

  const BlockId* table = view.BlockTable(it.seq);
  const auto neg_inf = hn::Set(df, kNegInf);
  // Keys are taken in steps of step_keys, so the softmax update and the rescaling of the
  // accumulators happen once per step, not once per page.
  const int64_t step = static_cast<int64_t>(step_keys);
  const int64_t last_page = hi > lo ? (hi - 1) / bs : -1;
  // Pages per step: TouchAhead's distance.
  const int64_t ahead = std::max<int64_t>(1, step / bs);
  // Positions the row-for-row prefetch runs ahead of the row being read: kLeadRows, or a whole
  // number of pages when pages are smaller.
  const int64_t lead = bs >= kLeadRows ? kLeadRows : kLeadRows / bs * bs;
  // How many pages on the lead rows of a page's last part lie.
  const int64_t lead_pages = (lead + bs - 1) / bs;
  // Where a KV head's pages of consecutive block ids are adjacent (the cache's layout), a run of
  // them in the block table is read as one page: one segment and one jump instead of one per
  // page. Not with pages shorter than the lead, whose last part's lead rows span several pages.
  const bool join_runs = view.block_stride_bytes == bs * view.row_stride_bytes && bs >= lead;
  // V's lead rows are fetched by the value pass, K's by the scores: the fetches then keep pace
  // with the arithmetic through the step, where fetching V with K asked for twice the bytes per
  // key during the scores and none during the values. Decode on Emerald Rapids, one thread,
  // calls of the two alternated in one process, against fetching V with K: in L3 (context
  // 2,048), GQA 4 bf16 0.78-0.89x the time, f32 0.91-0.95x, f16 0.85-0.88x, GQA 1, 2 and 8
  // 0.84-0.97x; for 128 MiB 0.90-0.92x paged, 0.93-0.99x contiguous; in L2 0.87-1.0x. AVX2
  // forced: f32 paged 0.86-0.90x but contiguous 1.02-1.08x; not where a pass of the value loop
  // reads half a line of each row (16-bit pages in groups of four), which took 1.0-1.2x.
  const size_t pass_bytes = (NQ4 > 0 && HWY_TARGET > HWY_AVX3 ? 2 : 4) * N * sizeof(T);
  const bool values_fetch_v = pass_bytes >= 64;
  // Calls part(b, p0, p1, tb) for the rows [t0, t1) of a step in order: rows [p0, p1) of the
  // run of pages from b (consecutive block ids, read as one page where join_runs; else one page),
  // in up to two parts per run, split where their lead rows move on to the next page named by
  // the block table, so that each part's lead rows lie in one page, tb.
  const auto for_each_part = [&](int64_t t0, int64_t t1, const auto& part) {
    for (int64_t b = t0 / bs, e = b, b1 = (t1 - 1) / bs; b <= b1; b = e + 1) {
      e = b;
      if (join_runs) {
        while (e < b1 && table[e + 1] == table[e] + 1) ++e;
      }
      const int64_t k0 = std::max(t0, b * bs);
      const int64_t k1 = std::min(t1, (e + 1) * bs);
      const int64_t split = std::clamp((e + 1) * bs - lead, k0, k1);
      for (int64_t p0 = k0, p1 = k0; p0 < k1; p0 = p1) {
        p1 = p0 < split ? split : k1;
        part(b, p0, p1, p0 < split ? b : e + lead_pages);
      }
    }
  };
  // Rows p0 + lead on of K or V, in page tb (null past the item's last page).
  const auto lead_rows = [&](bool v, int64_t tb, int64_t p0) -> const T* {
    return tb <= last_page ? PageOf<T>(view, a.layer, v, table[tb], it.kv_head) +
                                 static_cast<size_t>(p0 + lead - tb * bs) * D
                           : nullptr;
  };
  for (int64_t t0 = lo, t1 = lo; t0 < hi; t0 = t1) {
    t1 = std::min(hi, (t0 / step + 1) * step);
    const size_t n_keys = static_cast<size_t>(t1 - t0);
    // Scores of every page of the step, side by side: column = key - t0.
    if constexpr (kDot) s.pages.clear();
    for_each_part(t0, t1, [&](int64_t b, int64_t p0, int64_t p1, int64_t tb) {
      const bool first = p0 == std::max(t0, b * bs);  // The run's first part.
      // The same page of the next step, whose first line TouchAhead fetches.
      const bool far = first && b + ahead <= last_page;
      const T* far_k =
          far ? PageOf<T>(view, a.layer, false, table[b + ahead], it.kv_head) : nullptr;
      const T* far_v =
          far ? PageOf<T>(view, a.layer, true, table[b + ahead], it.kv_head) : nullptr;
      if constexpr (!kDot) TouchAhead(far_k, far_v);
      const size_t row0 = static_cast<size_t>(p0 - b * bs) * D;
      const T* keys = PageOf<T>(view, a.layer, false, table[b], it.kv_head) + row0;
      const size_t n_part = static_cast<size_t>(p1 - p0);
      const size_t col = static_cast<size_t>(p0 - t0);
      const T* lead_k = lead_rows(false, tb, p0);
      if constexpr (kDot) {
        const auto bits = [](const T* p) { return reinterpret_cast<const uint16_t*>(p); };
        const T* values = PageOf<T>(view, a.layer, true, table[b], it.kv_head) + row0;
        // The first part touches the pages a step ahead. (Filled in place: a copy of a
        // DotSegment built field by field stalled on store forwarding, 1.04x the time in L3.)
        s.pages.push_back(DotSegment{bits(keys), bits(values), n_part, col, bits(lead_k),
                                     bits(lead_rows(true, tb, p0)), nullptr, bits(far_k),
                                     bits(far_v)});
      } else {
        const T* lead_v = values_fetch_v ? nullptr : lead_rows(true, tb, p0);
        // Only the first query group prefetches: the others read the same rows.
        size_t j = 0;
#if HWY_TARGET <= HWY_AVX3
        if constexpr (std::is_same_v<T, hwy::float16_t>) {
          for (; j + 2 * kQueryGroup <= NQ4; j += 2 * kQueryGroup) {
            Scores8<kSplit>(q_all + j * D, rot_all + j * D, keys, n_part, D,
                            scores_all + j * t_pad + col, t_pad, j == 0 ? lead_k : nullptr, lead_v);
          }
        }
#endif
        for (; j < NQ4; j += kQueryGroup) {
          Scores4<kSplit>(q_all + j * D, rot_all == nullptr ? nullptr : rot_all + j * D, keys,
                          n_part, D, scores_all + j * t_pad + col, t_pad, j == 0 ? lead_k : nullptr,
                          lead_v);
        }
#if HWY_TARGET <= HWY_AVX3
        if (pair_rest) {
          Scores2<kSplit>(q_all + j * D, keys, n_part, D, scores_all + j * t_pad + col, t_pad,
                          j == 0 ? lead_k : nullptr, lead_v);
          j += 2;
        }
#endif
        for (; j < NQ; ++j) {  // From NQ4.
          Scores1<kSplit>(q_all + j * D, keys, n_part, D, scores_all + j * t_pad + col,
                          j == 0 ? lead_k : nullptr, lead_v);
        }
      }
    });
    if constexpr (kDot) {
      // V is fetched for the value pass, not with the keys: the value pass fetches its lead
      // rows, and the keys of the step's last part fetch the step's first V rows (instead of the
      // value pass of the step before), as many as that part has. Fetched with the keys, a
      // 256-key step's V left L1 before it was read: 13% slower from DRAM, 3% in L3 (one
      // thread). The widening path splits them too (values_fetch_v).
      if (s.pages.size() > 1 && s.pages.front().n >= s.pages.back().n) {
        s.pages.back().first_v = s.pages.front().values;
        s.pages.back().lead_v = nullptr;
      }
      DotScores(s.packed_q.data(), NS / 4, s.pages.data(), s.pages.size(), D, scores_all, t_pad);
    }
    for (size_t j = 0; j < NQ; ++j) {
      float* row = scores_all + j * t_pad;
      if (a.soft_cap > 0) {
        for (size_t t = 0; t < n_keys; ++t) row[t] = a.soft_cap * std::tanh(row[t] / a.soft_cap);
      }
      for (size_t t = n_keys; t < (n_keys + N - 1) / N * N; ++t) row[t] = kNegInf;
    }
    const size_t n_pad = (n_keys + N - 1) / N * N;
    // Causal and sliding-window mask, only where the step crosses a row's bounds.
    ForEachMaskedKey(a, span, t0, t1, [&](int64_t r, int64_t key) {
      for (int64_t g = 0; g < G; ++g) {
        scores_all[static_cast<size_t>(r * G + g) * t_pad + static_cast<size_t>(key - t0)] =
            kNegInf;
      }
    });
    // Online softmax: rescale what was summed so far to the new running maximum.
    for (size_t j = 0; j < NQ; ++j) {
      float* row = scores_all + j * t_pad;
      auto vmax = neg_inf;
      for (size_t t = 0; t < n_pad; t += N) vmax = hn::Max(vmax, hn::LoadU(df, row + t));
      const float step_max = hn::GetLane(hn::MaxOfLanes(df, vmax));
      if (step_max == kNegInf) {
        for (size_t t = 0; t < n_pad; ++t) row[t] = 0.0f;
        if constexpr (kDot) std::fill_n(s.probabilities.data() + j * t_pad, n_pad, uint16_t{0});
        continue;
      }
      const float new_max = std::max(s.m[j], step_max);
      const float correction = s.m[j] == kNegInf ? 0.0f : std::exp(s.m[j] - new_max);
      float step_sum;
      if constexpr (kDot) {
        step_sum = DotSoftmaxRow(row, n_pad, new_max, s.probabilities.data() + j * t_pad);
      } else {
        const auto vnew = hn::Set(df, new_max);
        auto vsum = hn::Zero(df);
        for (size_t t = 0; t < n_pad; t += N) {
          const auto x = hn::LoadU(df, row + t);
          const auto p = ExpBelowMax(df, x, vnew);
          hn::StoreU(p, df, row + t);
          vsum = hn::Add(vsum, p);
        }
        step_sum = hn::GetLane(hn::SumOfLanes(df, vsum));
      }
      s.l[j] = s.l[j] * correction + step_sum;
      s.m[j] = new_max;
      if (correction != 1.0f) {
        float* HWY_RESTRICT acc = acc_all + j * acc_stride;
        const auto vc = hn::Set(df, correction);
        size_t d = 0;
        for (; d + N <= acc_stride; d += N) {
          hn::StoreU(hn::Mul(hn::LoadU(df, acc + d), vc), df, acc + d);
        }
        for (; d < acc_stride; ++d) acc[d] *= correction;
      }
    }
    if constexpr (kDot) {
      DotValues(s.probabilities.data(), t_pad, NS / 4, s.pages.data(), s.pages.size(), D,
                acc_all, acc_stride);
      continue;
    }
    for_each_part(t0, t1, [&](int64_t b, int64_t p0, int64_t p1, int64_t tb) {
      const T* values = PageOf<T>(view, a.layer, true, table[b], it.kv_head) +
                        static_cast<size_t>(p0 - b * bs) * D;
      const T* lead_v = values_fetch_v ? lead_rows(true, tb, p0) : nullptr;
      const size_t col = static_cast<size_t>(p0 - t0);
      const size_t n_part = static_cast<size_t>(p1 - p0);
      size_t j = 0;
#if HWY_TARGET <= HWY_AVX3
      if (D % (2 * N) == 0) {
        for (; j + 2 * kQueryGroup <= NQ4; j += 2 * kQueryGroup) {
          Values8<kSplit>(scores_all + j * t_pad + col, t_pad, values, n_part, D, acc_all + j * D,
                          j == 0 ? lead_v : nullptr);
        }
      }
#endif
      for (; j < NQ4; j += kQueryGroup) {
        Values4<kSplit>(scores_all + j * t_pad + col, t_pad, values, n_part, D, acc_all + j * D,
                        j == 0 ? lead_v : nullptr);
      }
#if HWY_TARGET <= HWY_AVX3
      if (pair_rest) {
        Values2<kSplit>(scores_all + j * t_pad + col, t_pad, values, n_part, D, acc_all + j * D,
                        j == 0 ? lead_v : nullptr);
        j += 2;
      }
#endif
      for (; j < NQ; ++j) {  // From NQ4.
        Values1<kSplit>(scores_all + j * t_pad + col, values, n_part, D, acc_all + j * D,
                        j == 0 ? lead_v : nullptr);
      }
    });
  }

  WriteRows<kDot, kSplit>(a, it, s.acc.data(), acc_stride, s.m.data(), s.l.data());
}

}  // namespace pagedkv::internal::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // PAGEDKV_ATTENTION_KERNEL_INL_H_

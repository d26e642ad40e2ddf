// The row kernel's Q.K products (attention_kernel-inl.h), compiled once per Highway target: scores
// of K rows widened to f32 in registers against groups of four queries (Scores4; on AVX-512 four
// keys at a time against rotated queries), eight (Scores8), a pair (Scores2) and one query
// (Scores1), with the rows ahead prefetched as the kernel asks. The P.V sums are
// row_values-inl.h's.

#if defined(PAGEDKV_ROW_SCORES_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef PAGEDKV_ROW_SCORES_INL_H_
#undef PAGEDKV_ROW_SCORES_INL_H_
#else
#define PAGEDKV_ROW_SCORES_INL_H_
#endif

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "attention/bf16_dot-inl.h"
#include "attention/widen-inl.h"
#include "hwy/highway.h"

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
//
// kExtra = 1 (one group, four keys): also the query after the group (q + 4 * D; GQA 5's fifth)
// against the same keys, into the scores row after the group's, so each key chunk widened feeds
// it too (20 accumulators; two queries after the group, 24, measured slower: see AttendItemT).
template <size_t kKeys, size_t kGroups, bool kSplit, bool kRotated, size_t kExtra = 0, typename T>
HWY_INLINE void ScoresOfKeys(const float* HWY_RESTRICT q, const float* HWY_RESTRICT rot,
                             const T* HWY_RESTRICT k, size_t D, float* HWY_RESTRICT scores,
                             size_t t_pad, const T* fetch_k, const T* fetch_v, ptrdiff_t far) {
  static_assert(kGroups == 1 || kRotated);
  static_assert(kExtra == 0 || (kGroups == 1 && kKeys == 4 && kExtra == 1));
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
  // e[x][i]: key i against extra query x.
  const float* HWY_RESTRICT extra = kExtra > 0 ? q + kQueryGroup * D : nullptr;
  hn::Vec<DF> e[kExtra + 1][kKeys];
  for (size_t x = 0; x < kExtra; ++x) {
    for (size_t i = 0; i < kKeys; ++i) e[x][i] = hn::Zero(df);
  }
  size_t c = 0;
  for (; c + 2 * N <= full; c += 2 * N) {
    if (fetch_k != nullptr) {
      const size_t off = kKeys * c * sizeof(T);
      PrefetchRows(BytesAhead(fetch_k, off), BytesAhead(fetch_v, off), 2 * kKeys * N * sizeof(T),
                   far);
    }
    hn::Vec<DF> lo[kKeys], hi[kKeys];
    for (size_t i = 0; i < kKeys; ++i) LoadPairF32<kSplit>(k + i * D + c, lo[i], hi[i]);
    for (size_t g = 0; g < kGroups; ++g) {
      for (size_t j = 0; j < kQueryGroup; ++j) {
        const auto qlo = InRegister(query(g, j, c));
        const auto qhi = InRegister(query(g, j, c + N));
        auto* ag = a + g * kKeys;
        for (size_t i = 0; i < kKeys; ++i) ag[i][j] = hn::MulAdd(qlo, lo[i], ag[i][j]);
        for (size_t i = 0; i < kKeys; ++i) ag[i][j] = hn::MulAdd(qhi, hi[i], ag[i][j]);
      }
    }
    for (size_t x = 0; x < kExtra; ++x) {
      const auto xlo = hn::LoadU(df, extra + x * D + c);
      const auto xhi = hn::LoadU(df, extra + x * D + c + N);
      for (size_t i = 0; i < kKeys; ++i) {
        e[x][i] = hn::MulAdd(xhi, hi[i], hn::MulAdd(xlo, lo[i], e[x][i]));
      }
    }
  }
  if (fetch_k != nullptr && kKeys * c * sizeof(T) < lead_bytes) {
    const size_t off = kKeys * c * sizeof(T);
    PrefetchRows(BytesAhead(fetch_k, off), BytesAhead(fetch_v, off), lead_bytes - off, far);
  }
  for (; c < full; c += N) {  // Past the whole pairs: in natural order (SplitDims).
    hn::Vec<DF> kc[kKeys];
    for (size_t i = 0; i < kKeys; ++i) kc[i] = LoadF32(k + i * D + c);
    for (size_t g = 0; g < kGroups; ++g) {
      for (size_t j = 0; j < kQueryGroup; ++j) {
        const auto qj = query(g, j, c);
        auto* ag = a + g * kKeys;
        for (size_t i = 0; i < kKeys; ++i) ag[i][j] = hn::MulAdd(qj, kc[i], ag[i][j]);
      }
    }
    for (size_t x = 0; x < kExtra; ++x) {
      const auto xc = hn::LoadU(df, extra + x * D + c);
      for (size_t i = 0; i < kKeys; ++i) e[x][i] = hn::MulAdd(xc, kc[i], e[x][i]);
    }
  }
  if constexpr (kExtra > 0) {  // (kKeys is 4 here; e[x][3] is out of bounds for fewer keys.)
    for (size_t x = 0; x < kExtra; ++x) {
      float sums[4];
      SumOfFour(e[x][0], e[x][1], e[x][2], e[x][3], sums);
      for (size_t i = 0; i < kKeys; ++i) {
        for (size_t d = full; d < D; ++d) sums[i] += extra[x * D + d] * ScalarToF32(k[i * D + d]);
        scores[(kQueryGroup + x) * t_pad + i] = sums[i];
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

// One query: scores[t] = q . K[t]. Prefetches as Scores4; kSplit as there.
//
// Four keys at a time, each with two accumulators (its even and odd chunks), so that eight FMAs
// of a pass over the dims depend on none of the others: one key at a time, with two, a pass took
// two FMAs whose chains each waited the FMA's latency (4 cycles on Zen 3), a quarter of the two a
// cycle the core can start. Decode without GQA (GQA 1) and GQA 2, 1 x 2,048, one thread, Zen 3
// VM (AVX2), with Values1's eight chunks, both compiled into one binary and their calls
// alternated (two runs): bf16 0.76-0.90x the time, f16 0.75-0.91x, GQA 2 bf16 0.73-0.87x, f16
// 0.83-0.89x, f32 (bound by its bytes) 0.94-1.02x; bf16 32 x 2,048 0.90-0.95x, 1 x 32,768 0.95x,
// at two threads 0.91x; GQA 3, 4 and 5 (controls) 1.00-1.02x. Not measured on AVX-512, where the
// same latency holds a key at a time.
template <bool kSplit, typename T>
HWY_INLINE void Scores1(const float* HWY_RESTRICT q, const T* HWY_RESTRICT keys, size_t n_keys,
                        size_t D, float* HWY_RESTRICT scores, const T* lead_k, const T* lead_v,
                        ptrdiff_t far) {
  const DF df;
  const size_t N = hn::Lanes(df);
  size_t t = 0;
  for (; t + 4 <= n_keys; t += 4) {
    if (lead_k != nullptr) {
      PrefetchRows(lead_k + t * D, BytesAhead(lead_v, t * D * sizeof(T)), 4 * D * sizeof(T), far);
    }
    const T* HWY_RESTRICT k = keys + t * D;
    hn::Vec<DF> lo[4], hi[4];
    for (size_t i = 0; i < 4; ++i) lo[i] = hi[i] = hn::Zero(df);
    size_t c = 0;
    for (; c + 2 * N <= D; c += 2 * N) {
      const auto qlo = InRegister(hn::LoadU(df, q + c));
      const auto qhi = InRegister(hn::LoadU(df, q + c + N));
      for (size_t i = 0; i < 4; ++i) {
        hn::Vec<DF> klo, khi;
        LoadPairF32<kSplit>(k + i * D + c, klo, khi);
        lo[i] = hn::MulAdd(qlo, klo, lo[i]);
        hi[i] = hn::MulAdd(qhi, khi, hi[i]);
      }
    }
    for (; c + N <= D; c += N) {
      const auto qc = hn::LoadU(df, q + c);
      for (size_t i = 0; i < 4; ++i) lo[i] = hn::MulAdd(qc, LoadF32(k + i * D + c), lo[i]);
    }
    float sums[4];
    SumOfFour(hn::Add(lo[0], hi[0]), hn::Add(lo[1], hi[1]), hn::Add(lo[2], hi[2]),
              hn::Add(lo[3], hi[3]), sums);
    for (size_t i = 0; i < 4; ++i) {
      for (size_t d = c; d < D; ++d) sums[i] += q[d] * ScalarToF32(k[i * D + d]);
      scores[t + i] = sums[i];
    }
  }
  for (; t < n_keys; ++t) {  // The last one to three keys, one at a time.
    if (lead_k != nullptr) {
      PrefetchRows(lead_k + t * D, BytesAhead(lead_v, t * D * sizeof(T)), D * sizeof(T), far);
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

// scores[j][t] = q[j] . K[t] for the four queries of group q (rows of `scores` are t_pad long).
// K rows are read from the page in the storage dtype and widened in registers, once per group
// (kSplit: see LoadPairF32; the queries' dims are then split the same way). Row t of lead_k and
// lead_v (the rows kLeadRows positions on; null for none) is prefetched with row t. rot: the
// group as RotateQueries lays it out, for the four-key passes (AVX-512; else unused).
//
// kExtra: also the query after the group (q + 4 * D) into the row after the group's, in the
// four-key passes with each key chunk widened once for the five (ScoresOfKeys), the other keys
// one query at a time (Scores1).
template <bool kSplit, size_t kExtra = 0, typename T>
HWY_INLINE void Scores4(const float* HWY_RESTRICT q, const float* HWY_RESTRICT rot,
                        const T* HWY_RESTRICT keys, size_t n_keys, size_t D,
                        float* HWY_RESTRICT scores, size_t t_pad, const T* lead_k, const T* lead_v,
                        ptrdiff_t far) {
  size_t t = 0;
  [[maybe_unused]] size_t extra_done = 0;  // kExtra: keys scored against the extra query.
  if constexpr (!std::is_same_v<T, float> || HWY_TARGET > HWY_AVX3) {
    // 16-bit pages: several keys per pass (f16 decode, two keys: 0.92-0.94x the time of one;
    // f32 pages, whose key loads are twice as wide, measured 1.07x on AVX-512). Four where there
    // are 32 registers (16 accumulators, 8 key chunks, 2 query chunks): bf16 decode on Emerald
    // Rapids 0.88x the time of two keys in L2, 0.95x in L3. f32 pages take two keys too where
    // there are 16 registers: one key's four accumulators each took two dependent FMAs a pass, at
    // most one FMA a cycle. f32 decode, GQA 4, Zen 3 VM, calls alternated in one process (two
    // runs): 1 x 2,048 0.95-0.96x the time contiguous and 0.97-0.98x paged at one and two
    // threads, 32 x 2,048 0.98-0.99x, 1 x 32,768 1.01-1.02x.
#if HWY_TARGET <= HWY_AVX3
    for (; t + 4 <= n_keys; t += 4) {
      ScoresOfKeys<4, 1, kSplit, true, kExtra>(q, rot, keys + t * D, D, scores + t, t_pad,
                                               RowAhead(lead_k, t, D), RowAhead(lead_v, t, D), far);
    }
    extra_done = t;
#endif
    for (; t + 2 <= n_keys; t += 2) {
      ScoresOfKeys<2, 1, kSplit, false>(q, rot, keys + t * D, D, scores + t, t_pad,
                                        RowAhead(lead_k, t, D), RowAhead(lead_v, t, D), far);
    }
  }
  for (; t < n_keys; ++t) {
    ScoresOfKeys<1, 1, kSplit, false>(q, rot, keys + t * D, D, scores + t, t_pad,
                                      RowAhead(lead_k, t, D), RowAhead(lead_v, t, D), far);
  }
  for (size_t x = 0; x < kExtra && extra_done < n_keys; ++x) {
    Scores1<kSplit>(q + (kQueryGroup + x) * D, keys + extra_done * D, n_keys - extra_done, D,
                    scores + (kQueryGroup + x) * t_pad + extra_done, static_cast<const T*>(nullptr),
                    static_cast<const T*>(nullptr), 0);
  }
}

#if HWY_TARGET <= HWY_AVX3
// Scores4 for two groups of four queries (q and rot: the first group's; AVX-512): two keys at a
// time against both groups (16 accumulators), so each key row is widened once for the eight
// queries, where two Scores4 widen it once per group. An odd last key is scored against each
// group in turn. Prefetches as Scores4. Used for f16 pages, whose widening takes two uops per
// vector (GQA 8 decode with Values8, Emerald Rapids, one thread, calls alternated in one
// process: 0.88-0.92x the time of Values8 alone); bf16's split widening is one op, and there
// two Scores4 measured faster (this took 1.04x). Not on AMD CPUs (KernelArgs::scores8): on the
// Zen 4 core two Scores4 took f16 decode (1 x 2,048, one thread, the builds run in turn three
// times) 0.96x the time at GQA 8 and 0.93x at GQA 7, 1.00-1.02x at GQA 4-6 (not changed).
template <bool kSplit, typename T>
HWY_INLINE void Scores8(const float* HWY_RESTRICT q, const float* HWY_RESTRICT rot,
                        const T* HWY_RESTRICT keys, size_t n_keys, size_t D,
                        float* HWY_RESTRICT scores, size_t t_pad, const T* lead_k, const T* lead_v,
                        ptrdiff_t far) {
  size_t t = 0;
  for (; t + 2 <= n_keys; t += 2) {
    ScoresOfKeys<2, 2, kSplit, true>(q, rot, keys + t * D, D, scores + t, t_pad,
                                     RowAhead(lead_k, t, D), RowAhead(lead_v, t, D), far);
  }
  if (t < n_keys) {
    for (size_t g = 0; g < 2; ++g) {
      ScoresOfKeys<1, 1, kSplit, false>(q + g * kQueryGroup * D, rot, keys + t * D, D,
                                        scores + g * kQueryGroup * t_pad + t, t_pad,
                                        g == 0 ? RowAhead(lead_k, t, D) : nullptr,
                                        g == 0 ? RowAhead(lead_v, t, D) : nullptr, far);
    }
  }
}
#endif

// The products of kKeys consecutive key rows at k with two queries (D floats apart from q), lane
// by lane: a[i][j] for row i and query j over the first D / N * N dims. Each key chunk widened
// feeds both queries. The rows kLeadRows on (fetch_k, fetch_v; null: none) are prefetched a slice
// per pass, as ScoresOfKeys.
template <size_t kKeys, bool kSplit, typename T>
HWY_INLINE void PairProducts(const float* HWY_RESTRICT q, const T* HWY_RESTRICT k, size_t D,
                             const T* fetch_k, const T* fetch_v, ptrdiff_t far,
                             hn::Vec<DF> (&a)[kKeys][2]) {
  const DF df;
  const size_t N = hn::Lanes(df);
  const size_t full = D / N * N;
  const size_t lead_bytes = kKeys * D * sizeof(T);
  for (size_t i = 0; i < kKeys; ++i) a[i][0] = a[i][1] = hn::Zero(df);
  size_t c = 0;
  for (; c + 2 * N <= full; c += 2 * N) {
    if (fetch_k != nullptr) {
      const size_t off = kKeys * c * sizeof(T);
      PrefetchRows(BytesAhead(fetch_k, off), BytesAhead(fetch_v, off), 2 * kKeys * N * sizeof(T),
                   far);
    }
    const auto q0lo = InRegister(hn::LoadU(df, q + c));
    const auto q0hi = InRegister(hn::LoadU(df, q + c + N));
    const auto q1lo = InRegister(hn::LoadU(df, q + D + c));
    const auto q1hi = InRegister(hn::LoadU(df, q + D + c + N));
    for (size_t i = 0; i < kKeys; ++i) {
      hn::Vec<DF> lo, hi;
      LoadPairF32<kSplit>(k + i * D + c, lo, hi);
      a[i][0] = hn::MulAdd(q0hi, hi, hn::MulAdd(q0lo, lo, a[i][0]));
      a[i][1] = hn::MulAdd(q1hi, hi, hn::MulAdd(q1lo, lo, a[i][1]));
    }
  }
  if (fetch_k != nullptr && kKeys * c * sizeof(T) < lead_bytes) {
    const size_t off = kKeys * c * sizeof(T);
    PrefetchRows(BytesAhead(fetch_k, off), BytesAhead(fetch_v, off), lead_bytes - off, far);
  }
  for (; c < full; c += N) {  // Past the whole pairs: in natural order (SplitDims).
    const auto q0 = hn::LoadU(df, q + c), q1 = hn::LoadU(df, q + D + c);
    for (size_t i = 0; i < kKeys; ++i) {
      const auto kc = LoadF32(k + i * D + c);
      a[i][0] = hn::MulAdd(q0, kc, a[i][0]);
      a[i][1] = hn::MulAdd(q1, kc, a[i][1]);
    }
  }
}

// Adds the products past the last whole vector (dims from D / N * N) to the sums of kKeys rows at
// k with the two queries at q (sums[j * kKeys + i]: row i, query j) and writes them to scores
// (rows t_pad apart).
template <size_t kKeys, typename T>
HWY_INLINE void WritePairScores(const float* HWY_RESTRICT q, const T* HWY_RESTRICT k, size_t D,
                                const float* sums, float* HWY_RESTRICT scores, size_t t_pad) {
  const size_t full = D / hn::Lanes(DF()) * hn::Lanes(DF());
  for (size_t j = 0; j < 2; ++j) {
    for (size_t i = 0; i < kKeys; ++i) {
      float sum = sums[j * kKeys + i];
      for (size_t d = full; d < D; ++d) sum += q[j * D + d] * ScalarToF32(k[i * D + d]);
      scores[j * t_pad + i] = sum;
    }
  }
}

#if HWY_TARGET <= HWY_AVX3
// Scores of eight consecutive key rows at k against two queries (D floats apart from q):
// scores[j * t_pad + i] = q[j] . row i. The products are PairProducts' (16 accumulators), and the
// 16 dot products are summed by one transpose: per accumulator the lanes of each 128-bit block
// (BlockSumsOfFour), then the blocks, 45 vector ops, which leave each query's eight scores in one
// half for a 256-bit store (in place of 16 scalar stores: GQA 2 decode, 1 x 2,048, one thread,
// calls alternated in one process, over the three dtypes and two runs: 0.92-1.00x the time of the
// fastest call, 0.88-1.04x the median, where GQA 4, which does not come here, measured
// 0.99-1.00x). Prefetches as PairProducts.
template <bool kSplit, typename T>
HWY_INLINE void ScoresOfEightKeys2(const float* HWY_RESTRICT q, const T* HWY_RESTRICT k, size_t D,
                                   float* HWY_RESTRICT scores, size_t t_pad, const T* fetch_k,
                                   const T* fetch_v, ptrdiff_t far) {
  constexpr size_t kKeys = 8;
  hn::Vec<DF> a[kKeys][2];
  PairProducts<kKeys, kSplit>(q, k, D, fetch_k, fetch_v, far, a);
  // Per 128-bit block b: lane i holds that block's part of (keys 0-3 or 4-7) . query j.
  const __m512 s0 = BlockSumsOfFour(a[0][0], a[1][0], a[2][0], a[3][0]).raw;
  const __m512 s1 = BlockSumsOfFour(a[4][0], a[5][0], a[6][0], a[7][0]).raw;
  const __m512 s2 = BlockSumsOfFour(a[0][1], a[1][1], a[2][1], a[3][1]).raw;
  const __m512 s3 = BlockSumsOfFour(a[4][1], a[5][1], a[6][1], a[7][1]).raw;
  // Blocks summed by a 4 x 4 transpose: _mm512_shuffle_f32x4(x, y, 0x88) takes blocks
  // [x0, x2, y0, y2], 0xDD [x1, x3, y1, y3].
  const __m512 p01 =
      _mm512_add_ps(_mm512_shuffle_f32x4(s0, s1, 0x88), _mm512_shuffle_f32x4(s0, s1, 0xDD));
  const __m512 p23 =
      _mm512_add_ps(_mm512_shuffle_f32x4(s2, s3, 0x88), _mm512_shuffle_f32x4(s2, s3, 0xDD));
  // Blocks: keys 0-3 . q0, keys 4-7 . q0, keys 0-3 . q1, keys 4-7 . q1: each query's eight
  // scores in one half.
  const __m512 v =
      _mm512_add_ps(_mm512_shuffle_f32x4(p01, p23, 0x88), _mm512_shuffle_f32x4(p01, p23, 0xDD));
  if (D % hn::Lanes(DF()) == 0) {
    _mm256_storeu_ps(scores, _mm512_castps512_ps256(v));
    _mm256_storeu_ps(scores + t_pad, _mm512_extractf32x8_ps(v, 1));
    return;
  }
  float sums[16];
  _mm512_storeu_ps(sums, v);
  WritePairScores<kKeys>(q, k, D, sums, scores, t_pad);
}
#else
// ScoresOfEightKeys2 where there are 16 registers: four keys against the two queries, 8
// accumulators + 4 query chunks + a widened key pair (PairProducts), and each query's four scores
// summed by SumOfFour. (Two keys with each accumulator split in two, for even and odd chunks, as
// Scores1 does, took 1.08x the time of one query at a time for bf16 and f16 GQA 2 on the Zen 3
// VM, where four keys took 0.90-1.01x.)
template <bool kSplit, typename T>
HWY_INLINE void ScoresOfFourKeys2(const float* HWY_RESTRICT q, const T* HWY_RESTRICT k, size_t D,
                                  float* HWY_RESTRICT scores, size_t t_pad, const T* fetch_k,
                                  const T* fetch_v, ptrdiff_t far) {
  constexpr size_t kKeys = 4;
  hn::Vec<DF> a[kKeys][2];
  PairProducts<kKeys, kSplit>(q, k, D, fetch_k, fetch_v, far, a);
  float sums[2 * kKeys];
  SumOfFour(a[0][0], a[1][0], a[2][0], a[3][0], sums);
  SumOfFour(a[0][1], a[1][1], a[2][1], a[3][1], sums + kKeys);
  WritePairScores<kKeys>(q, k, D, sums, scores, t_pad);
}
#endif

// scores[j][t] = q[j] . K[t] for two queries (D floats apart; rows of `scores` t_pad long): eight
// keys at a time on AVX-512 (ScoresOfEightKeys2), four elsewhere (ScoresOfFourKeys2), the rest
// one query at a time (Scores1). Prefetches as Scores4.
template <bool kSplit, typename T>
HWY_INLINE void Scores2(const float* HWY_RESTRICT q, const T* HWY_RESTRICT keys, size_t n_keys,
                        size_t D, float* HWY_RESTRICT scores, size_t t_pad, const T* lead_k,
                        const T* lead_v, ptrdiff_t far) {
  size_t t = 0;
#if HWY_TARGET <= HWY_AVX3
  for (; t + 8 <= n_keys; t += 8) {
    ScoresOfEightKeys2<kSplit>(q, keys + t * D, D, scores + t, t_pad, RowAhead(lead_k, t, D),
                               RowAhead(lead_v, t, D), far);
  }
#else
  for (; t + 4 <= n_keys; t += 4) {
    ScoresOfFourKeys2<kSplit>(q, keys + t * D, D, scores + t, t_pad, RowAhead(lead_k, t, D),
                              RowAhead(lead_v, t, D), far);
  }
#endif
  if (t < n_keys) {
    for (size_t j = 0; j < 2; ++j) {
      Scores1<kSplit>(q + j * D, keys + t * D, n_keys - t, D, scores + j * t_pad + t,
                      j == 0 ? RowAhead(lead_k, t, D) : nullptr,
                      j == 0 ? RowAhead(lead_v, t, D) : nullptr, far);
    }
  }
}

}  // namespace pagedkv::internal::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // PAGEDKV_ROW_SCORES_INL_H_

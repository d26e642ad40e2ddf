// bf16 K/V with vdpbf16ps (AVX512_BF16), compiled into the AVX3 and AVX3_DL targets and used
// when the CPU has the instruction (Highway 1.0.3 has no target that emits it).
//
// Queries go four at a time (one GQA group of four, or four of a larger one). A last group of
// one or two queries (GQA 2; GQA 5 and 6 are a group and one or two) scores with one or two
// rotated copies, a last group of three (GQA 3 and 7) with two and a copy of the third, a fifth
// query with the group before it, and the last five or six queries sum V in one pass.
//
//   QK^T: 32 dims of a key row, one 512-bit load, meet four rotated copies of the queries' same
//         dims (block b of copy r belongs to query (b + r) % 4) in four vdpbf16ps. Block sums
//         and a rotation back, once per four keys, give the 16 scores (DotScoresOfFour). Two
//         queries take two copies (block b of copy r: query (b + r) % 2), one query one, and
//         three take the two copies of the first two and a third copy of the third alone.
//   PV:   rows t and t + 1 of V, interleaved 16 bits at a time, pair up with the probabilities
//         (p_j[t], p_j[t + 1]) rounded to bf16, as flash attention rounds P before its PV
//         product. The accumulators come out in the interleaved dim order, undone when the
//         output is written (StoreDotValues).
//
// Queries are rounded to bf16 too; accumulation is f32. Error against the f64 reference is at
// most about 2e-3 of the output scale in the tests (bf16 storage itself has 4e-3 steps).

#if defined(PAGEDKV_ATTENTION_BF16_DOT_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef PAGEDKV_ATTENTION_BF16_DOT_INL_H_
#undef PAGEDKV_ATTENTION_BF16_DOT_INL_H_
#else
#define PAGEDKV_ATTENTION_BF16_DOT_INL_H_
#endif

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "attention/page_segment.h"
#include "attention/softmax_exp-inl.h"
#include "hwy/cache_control.h"
#include "hwy/highway.h"
#include "pagedkv/dtype.h"

#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
#include <immintrin.h>
#endif

HWY_BEFORE_NAMESPACE();
namespace pagedkv::internal::HWY_NAMESPACE {

// Writes dst[d] = acc[...] * scale for d < D (a multiple of 8), undoing the interleaved dim
// order of DotValues: per 32 dims, lane 4b + i of the "low" vector (acc[0, 16)) holds dim
// 8b + i, the "high" vector (acc[16, 32)) dim 8b + 4 + i. Reads whole 32-dim chunks (the
// accumulators are padded to them).
#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
inline void StoreDotValues(const float* HWY_RESTRICT acc, size_t D, float scale,
                           float* HWY_RESTRICT dst) {
  const __m512 vs = _mm512_set1_ps(scale);
  // Dims [0, 16) and [16, 32) of a chunk: blocks 0, 1 (2, 3) of low and high, alternating.
  const __m512i first = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i second =
      _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
  for (size_t c0 = 0; c0 < D; c0 += 32) {
    const __m512 lo = _mm512_loadu_ps(acc + c0);
    const __m512 hi = _mm512_loadu_ps(acc + c0 + 16);
    const __m512 out0 = _mm512_mul_ps(_mm512_permutex2var_ps(lo, first, hi), vs);
    const __m512 out1 = _mm512_mul_ps(_mm512_permutex2var_ps(lo, second, hi), vs);
    const size_t rest = D - c0;
    if (rest >= 32) {
      _mm512_storeu_ps(dst + c0, out0);
      _mm512_storeu_ps(dst + c0 + 16, out1);
    } else {
      const auto mask = [](size_t n) {
        return static_cast<__mmask16>(n >= 16 ? 0xFFFFu : (1u << n) - 1);
      };
      _mm512_mask_storeu_ps(dst + c0, mask(rest), out0);
      if (rest > 16) _mm512_mask_storeu_ps(dst + c0 + 16, mask(rest - 16), out1);
    }
  }
}
#else
inline void StoreDotValues(const float* HWY_RESTRICT acc, size_t D, float scale,
                           float* HWY_RESTRICT dst) {
  for (size_t c0 = 0; c0 < D; c0 += 32) {
    for (size_t b = 0; b < 4 && c0 + 8 * b < D; ++b) {
      for (size_t i = 0; i < 4; ++i) {
        dst[c0 + 8 * b + i] = acc[c0 + 4 * b + i] * scale;
        dst[c0 + 8 * b + 4 + i] = acc[c0 + 16 + 4 * b + i] * scale;
      }
    }
  }
}
#endif

// Rows of one page that a step reads, as DotScores and DotValues take them: bf16 bits.
using DotSegment = PageSegment<uint16_t>;

// Prefetches `bytes` from each of k and v that is not null: into L1 where far is 0, and where it
// is not (PageFetch::kFar) into L2, and the bytes `far` on from each into L2 as well (from rows
// kLeadRows on to the same rows of the page a step ahead; one distance serves K and V, whose
// pools lie a fixed distance apart). On the Zen 4 VM, prefetches into L1 kept too few misses in
// flight for scattered pages from DRAM: bf16 decode, 16-token pages, calls alternated in one
// process, two runs, with kFar's first bytes into L2 against into L1: from DRAM (32 x 2,048 and
// 1 x 32,768) 0.78-0.87x the time at one thread and 0.88-0.94x at two; in L3 (1 x 2,048) 1.02x
// for bf16, 1.00x for f16, 0.91-0.98x for f32.
HWY_INLINE void PrefetchRows(const void* k, const void* v, size_t bytes, ptrdiff_t far) {
  const char* kb = static_cast<const char*>(k);
  const char* vb = static_cast<const char*>(v);
  if (far == 0) {
    for (size_t off = 0; off < bytes; off += 64) {
      if (kb != nullptr) hwy::Prefetch(kb + off);
      if (vb != nullptr) hwy::Prefetch(vb + off);
    }
    return;
  }
  for (size_t off = 0; off < bytes; off += 64) {
    if (kb != nullptr) __builtin_prefetch(kb + off, /*rw=*/0, /*locality=*/2);
    if (vb != nullptr) __builtin_prefetch(vb + off, /*rw=*/0, /*locality=*/2);
  }
  for (size_t off = 0; off < bytes; off += 64) {
    if (kb != nullptr) __builtin_prefetch(kb + far + off, /*rw=*/0, /*locality=*/2);
    if (vb != nullptr) __builtin_prefetch(vb + far + off, /*rw=*/0, /*locality=*/2);
  }
}

// p + off bytes, or null for a null p (an offset from null is undefined behaviour).
HWY_INLINE const void* BytesAhead(const void* p, size_t off) {
  return p == nullptr ? nullptr : static_cast<const char*>(p) + off;
}

// Row t of the rows of D elements at p, or null for a null p (as BytesAhead).
template <typename T>
HWY_INLINE const T* RowAhead(const T* p, size_t t, size_t D) {
  return p == nullptr ? nullptr : p + t * D;
}

// Starts the fetch of the first line of each of k and v that is not null, with the hint for
// the outer caches. From DRAM the first miss of a scattered page is what stalls: the row-for-row
// prefetch one page ahead comes too late for it, and after it the hardware streams the page.
// Touching one line of each page a step (16 pages) ahead took 0.78-0.87x the time of bf16
// decode from DRAM at one thread and left L3 decode as it was; more lines per page or a burst
// at the start of the step did no better.
HWY_INLINE void TouchAhead(const void* k, const void* v) {
  if (k != nullptr) __builtin_prefetch(k, /*rw=*/0, /*locality=*/1);
  if (v != nullptr) __builtin_prefetch(v, /*rw=*/0, /*locality=*/1);
}

#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
constexpr bool kHaveBf16Dot = true;

#define PAGEDKV_BF16_DOT_ATTR __attribute__((target(HWY_TARGET_STR ",avx512bf16")))
// Every function here is inline (the HWY_NOINLINE ones too): each kernel file includes this
// header (attend_*.cc), and only attend_bf16_dot.cc uses them.

// 32-dim chunks of a head (the last one zero-padded) and the packed query size DotScores reads
// for num_queries query slots (a multiple of four).
inline size_t DotChunks(size_t D) { return (D + 31) / 32; }
inline size_t PackedQuerySize(size_t num_queries, size_t D) {
  return num_queries / 4 * DotChunks(D) * 4 * 32;
}

// The copy of a packed group of `queries` (1 to 4) real queries whose block b holds query j's
// dims there: four queries rotate over four copies, (j - b) % 4; one or two over one or two,
// (j - b) % 2; of three, the first two as two do and the third in every block of copy 2.
constexpr size_t CopyOf(size_t queries, size_t j, size_t b) {
  return queries == 4 ? (j + 4 - b % 4) % 4 : j < 2 && queries >= 2 ? (j + 2 - b % 2) % 2 : j;
}

// Block 0 of b0, block 1 of b1, block 2 of b2, block 3 of b3.
PAGEDKV_BF16_DOT_ATTR HWY_INLINE __m512i BlocksOf(__m512i b0, __m512i b1, __m512i b2, __m512i b3) {
  return _mm512_mask_mov_epi64(_mm512_mask_mov_epi64(_mm512_mask_mov_epi64(b0, 0x0C, b1), 0x30, b2),
                               0xC0, b3);
}

// Packs the `num_queries` queries at q (f32, already scaled) for DotScores, in groups of four:
// vector (g, c, r) at pack + ((g * chunks + c) * 4 + r) * 32 holds in its 128-bit block b dims
// [32c + 8b, 32c + 8b + 8) of the query 4g + j of its group that CopyOf(the group's real queries,
// j, b) puts there, zeros past D. A group of n < 4 real queries fills copies [0, n). Rounded to
// nearest even, as BF16FromF32.
PAGEDKV_BF16_DOT_ATTR inline void PackQueries(const float* HWY_RESTRICT q, size_t num_queries,
                                              size_t D, uint16_t* HWY_RESTRICT pack) {
  const size_t chunks = DotChunks(D);
  for (size_t g = 0; 4 * g < num_queries; ++g) {
    const size_t real = std::min<size_t>(4, num_queries - 4 * g);
    // The query whose dims block b of copy r holds (CopyOf); -1: a copy not filled.
    int source[4][4];
    for (auto& copy : source) std::fill_n(copy, 4, -1);
    for (size_t j = 0; j < real; ++j) {
      for (size_t b = 0; b < 4; ++b) source[CopyOf(real, j, b)][b] = static_cast<int>(j);
    }
    for (size_t c = 0; c < chunks; ++c) {
      // Dims [32c, 32c + 32) of each query as bf16, zeros past D.
      const size_t dims = std::min<size_t>(D - 32 * c, 32);
      const auto live = static_cast<__mmask16>(dims >= 16 ? 0xFFFFu : (1u << dims) - 1);
      const auto live_hi = static_cast<__mmask16>(dims >= 32  ? 0xFFFFu
                                                  : dims > 16 ? (1u << (dims - 16)) - 1
                                                              : 0u);
      __m512i bits[4];
      for (size_t j = 0; j < real; ++j) {
        const float* row = q + (4 * g + j) * D + 32 * c;
        bits[j] = (__m512i)_mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(live_hi, row + 16),
                                               _mm512_maskz_loadu_ps(live, row));
      }
      if (real == 4) {  // Copy r: block b of query (r + b) % 4, indices the compiler knows.
        for (size_t r = 0; r < 4; ++r) {
          _mm512_storeu_si512(
              pack + ((g * chunks + c) * 4 + r) * 32,
              BlocksOf(bits[r], bits[(r + 1) % 4], bits[(r + 2) % 4], bits[(r + 3) % 4]));
        }
        continue;
      }
      for (size_t r = 0; r < 4 && source[r][0] >= 0; ++r) {
        _mm512_storeu_si512(pack + ((g * chunks + c) * 4 + r) * 32,
                            BlocksOf(bits[source[r][0]], bits[source[r][1]], bits[source[r][2]],
                                     bits[source[r][3]]));
      }
    }
  }
}

// Per 128-bit block j: the sums of block j of a0, a1, a2, a3.
PAGEDKV_BF16_DOT_ATTR HWY_INLINE __m512 SumBlocksOfFour(__m512 a0, __m512 a1, __m512 a2,
                                                        __m512 a3) {
  const __m512 t01 = _mm512_add_ps(_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1));
  const __m512 t23 = _mm512_add_ps(_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3));
  // 64-bit interleaves: per block [a0, a1, a2, a3] of even lanes (lo) and odd lanes (hi).
  const __m512d lo = _mm512_unpacklo_pd(_mm512_castps_pd(t01), _mm512_castps_pd(t23));
  const __m512d hi = _mm512_unpackhi_pd(_mm512_castps_pd(t01), _mm512_castps_pd(t23));
  return _mm512_add_ps(_mm512_castpd_ps(lo), _mm512_castpd_ps(hi));
}

// Scores of four keys (rows of D bf16 at `keys`; kD: D when known at compile time, else 0)
// against the four queries of one packed group: lane 4j + k = q_j . key k.
//
// A 512-bit load of 32 dims of a key meets each of the four rotated query vectors in one
// vdpbf16ps, so the loop has no shuffles: accumulator (k, r) collects in block b the products of
// query (b + r) % 4. After the loop, the blocks are summed four keys at a time and rotated back
// by r, which lines query j up in block j of every sum. Broadcasting 8 dims of the key by a
// 128-bit load per vdpbf16ps instead ran at a quarter of the instruction's peak (1.6-2.1
// against 7.2 G/s, a standalone loop over keys in L1).
//
// The rows at fetch_k and fetch_v (DotSegment; null for none) are prefetched, spread over the
// chunks. One burst per page measured slower from DRAM (10 against 15 GB/s, one
// thread): the prefetches queue behind the cache's few outstanding misses and stall the loop.
//
// `rows` rows of keys are real (1 to 4): the others repeat the last one and are not prefetched.
//
// kRotations 2 (a group of two queries) or 1 (one) halves or quarters the vdpbf16ps: query j's
// score is then in block j and also in block j + 2 (two) or in every block (one).
//
// kExtra: also the one query packed alone at `extra` (a copy with its dims in every block: the
// next group's, or copy 2 of a group of three), from the same key loads, its four scores in
// lanes k of every block of *extra_scores.
template <size_t kD, int kRotations = 4, bool kExtra = false>
PAGEDKV_BF16_DOT_ATTR HWY_INLINE __m512
DotScoresOfFour(const uint16_t* HWY_RESTRICT pack, const uint16_t* HWY_RESTRICT keys, size_t rows,
                size_t run_time_D, const uint16_t* fetch_k, const uint16_t* fetch_v, ptrdiff_t far,
                const uint16_t* HWY_RESTRICT extra = nullptr, __m512* extra_scores = nullptr) {
  const size_t D = kD != 0 ? kD : run_time_D;
  const size_t chunks = DotChunks(D);
  const uint16_t* row[4];
  for (size_t k = 0; k < 4; ++k) row[k] = keys + (k < rows ? k : rows - 1) * D;
  // Bytes of the fetched rows to prefetch per chunk, in whole lines.
  const size_t rows_bytes = rows * D * sizeof(uint16_t);
  const size_t prefetch_step = (rows_bytes / chunks + 63) / 64 * 64;
  __m512 a[4][kRotations];
  __m512 x[4];
  for (int k = 0; k < 4; ++k) {
    for (int r = 0; r < kRotations; ++r) a[k][r] = _mm512_setzero_ps();
    x[k] = _mm512_setzero_ps();
  }
  for (size_t c = 0; c < chunks; ++c) {
    if ((fetch_k != nullptr || fetch_v != nullptr) && c * prefetch_step < rows_bytes) {
      const size_t off = c * prefetch_step;
      const size_t bytes = std::min(prefetch_step, rows_bytes - off);
      // far is K's: fetch_v (the step's first V rows) lies elsewhere.
      PrefetchRows(BytesAhead(fetch_k, off), nullptr, bytes, far);
      if (fetch_v != nullptr) PrefetchRows(nullptr, BytesAhead(fetch_v, off), bytes, 0);
    }
    const size_t dims = D - 32 * c < 32 ? D - 32 * c : 32;
    const __mmask32 valid = dims == 32 ? ~__mmask32{0} : static_cast<__mmask32>((1u << dims) - 1);
    const uint16_t* qc = pack + c * 4 * 32;
    __m512bh qr[kRotations];
    for (int r = 0; r < kRotations; ++r) qr[r] = (__m512bh)_mm512_loadu_si512(qc + 32 * r);
    __m512bh qx{};
    if constexpr (kExtra) qx = (__m512bh)_mm512_loadu_si512(extra + c * 4 * 32);
    for (int k = 0; k < 4; ++k) {
      const __m512bh e = (__m512bh)_mm512_maskz_loadu_epi16(valid, row[k] + 32 * c);
      for (int r = 0; r < kRotations; ++r) a[k][r] = _mm512_dpbf16_ps(a[k][r], e, qr[r]);
      if constexpr (kExtra) x[k] = _mm512_dpbf16_ps(x[k], e, qx);
    }
  }
  if constexpr (kExtra) {
    const __m512 sx = SumBlocksOfFour(x[0], x[1], x[2], x[3]);
    const __m512 u = _mm512_add_ps(sx, _mm512_shuffle_f32x4(sx, sx, 0x4E));
    *extra_scores = _mm512_add_ps(u, _mm512_shuffle_f32x4(u, u, 0xB1));
  }
  // sum_r[4b + k]: block b of accumulator (k, r).
  const __m512 s0 = SumBlocksOfFour(a[0][0], a[1][0], a[2][0], a[3][0]);
  if constexpr (kRotations == 1) {
    // Every block is query 0's: add the halves, then the neighbours.
    const __m512 u = _mm512_add_ps(s0, _mm512_shuffle_f32x4(s0, s0, 0x4E));
    return _mm512_add_ps(u, _mm512_shuffle_f32x4(u, u, 0xB1));
  } else if constexpr (kRotations == 2) {
    // Block b of copy r is query (b + r) % 2: rotating s1 by one block lines its blocks up with
    // s0's of the same query, and blocks j and j + 2 then hold query j's halves.
    const __m512 s1 = SumBlocksOfFour(a[0][1], a[1][1], a[2][1], a[3][1]);
    const __m512 u = _mm512_add_ps(s0, _mm512_shuffle_f32x4(s1, s1, 0x93));
    return _mm512_add_ps(u, _mm512_shuffle_f32x4(u, u, 0x4E));
  } else {
    // Block b of copy r is query (b + r) % 4: rotating block b to (b + r) % 4 puts query j in
    // block j.
    const __m512 s1 = SumBlocksOfFour(a[0][1], a[1][1], a[2][1], a[3][1]);
    const __m512 s2 = SumBlocksOfFour(a[0][2], a[1][2], a[2][2], a[3][2]);
    const __m512 s3 = SumBlocksOfFour(a[0][3], a[1][3], a[2][3], a[3][3]);
    // _mm512_shuffle_f32x4: output block j takes input block imm[2j + 1 : 2j]; here (j - r) % 4.
    const __m512 r1 = _mm512_shuffle_f32x4(s1, s1, 0x93);
    const __m512 r2 = _mm512_shuffle_f32x4(s2, s2, 0x4E);
    const __m512 r3 = _mm512_shuffle_f32x4(s3, s3, 0x39);
    return _mm512_add_ps(_mm512_add_ps(s0, r1), _mm512_add_ps(r2, r3));
  }
}

// Scores of one page against one packed query group: scores[j * t_pad + t] = q_j . row t, for
// j < kRotations, and for j = kExtraRow (0: none) the query packed alone after them: 2, the
// third of a group of three (its copy 2), or 4, the next group's one query.
// Rows come four at a time, sixteen where they can (one transpose stores them).
template <size_t kD, int kRotations, size_t kExtraRow = 0>
PAGEDKV_BF16_DOT_ATTR HWY_INLINE void DotScoresOfGroup(const uint16_t* HWY_RESTRICT pack,
                                                       const DotSegment& page, size_t D,
                                                       float* HWY_RESTRICT scores, size_t t_pad,
                                                       bool first_group) {
  static_assert(kExtraRow == 0 || (kExtraRow == 2 && kRotations == 2) ||
                (kExtraRow == 4 && kRotations == 4));
  constexpr bool kExtra = kExtraRow != 0;
  const uint16_t* extra = kExtraRow == 4   ? pack + DotChunks(D) * 4 * 32
                          : kExtraRow == 2 ? pack + 2 * 32
                                           : nullptr;
  const uint16_t* rows = page.keys;
  // Prefetch only for the first query group: the others read the same rows.
  const uint16_t* fetch_k = first_group ? page.lead_k : nullptr;
  const uint16_t* fetch_v = first_group ? page.first_v : nullptr;
  size_t t = 0;
  for (; t + 16 <= page.n; t += 16) {
    // No lambda here: clang does not give lambdas the enclosing function's target features.
    __m512 v[4], x[4];
    for (size_t i = 0; i < 4; ++i) {
      const size_t t4 = t + 4 * i;
      v[i] = DotScoresOfFour<kD, kRotations, kExtra>(
          pack, rows + t4 * D, 4, D, RowAhead(fetch_k, t4, D), RowAhead(fetch_v, t4, D), page.far,
          extra, &x[i]);
    }
    if constexpr (kExtra) {
      // Block 0 of x_i (keys t + 4i + k in lane k) to block i.
      const __m512 x01 = _mm512_shuffle_f32x4(x[0], x[1], 0x00);
      const __m512 x23 = _mm512_shuffle_f32x4(x[2], x[3], 0x00);
      _mm512_storeu_ps(scores + kExtraRow * t_pad + t, _mm512_shuffle_f32x4(x01, x23, 0x88));
    }
    const __m512 v0 = v[0], v1 = v[1], v2 = v[2], v3 = v[3];
    // Transpose the 4x4 blocks: block j of v_i becomes block i of the row of query j.
    const __m512 t0 = _mm512_shuffle_f32x4(v0, v1, 0x44), t1 = _mm512_shuffle_f32x4(v0, v1, 0xEE);
    const __m512 t2 = _mm512_shuffle_f32x4(v2, v3, 0x44), t3 = _mm512_shuffle_f32x4(v2, v3, 0xEE);
    _mm512_storeu_ps(scores + t, _mm512_shuffle_f32x4(t0, t2, 0x88));
    if constexpr (kRotations >= 2) {
      _mm512_storeu_ps(scores + t_pad + t, _mm512_shuffle_f32x4(t0, t2, 0xDD));
    }
    if constexpr (kRotations == 4) {
      _mm512_storeu_ps(scores + 2 * t_pad + t, _mm512_shuffle_f32x4(t1, t3, 0x88));
      _mm512_storeu_ps(scores + 3 * t_pad + t, _mm512_shuffle_f32x4(t1, t3, 0xDD));
    }
  }
  for (; t < page.n; t += 4) {
    const size_t n = page.n - t < 4 ? page.n - t : 4;
    __m512 x;
    const __m512 v =
        DotScoresOfFour<kD, kRotations, kExtra>(pack, rows + t * D, n, D, RowAhead(fetch_k, t, D),
                                                RowAhead(fetch_v, t, D), page.far, extra, &x);
    alignas(64) float lanes[16];
    _mm512_store_ps(lanes, v);
    for (size_t j = 0; j < static_cast<size_t>(kRotations); ++j) {
      for (size_t k = 0; k < n; ++k) scores[j * t_pad + t + k] = lanes[4 * j + k];
    }
    if constexpr (kExtra) {
      _mm512_store_ps(lanes, x);
      for (size_t k = 0; k < n; ++k) scores[kExtraRow * t_pad + t + k] = lanes[k];
    }
  }
}
// Scores of every packed query group against the rows of a step's pages, in one call so that
// small pages cost no more than large ones. Group by group: every group reading a page before
// the next page (so a 64 KiB step's keys come from L1 for the second group of GQA 8) took GQA 8
// decode 0.975x the time but GQA 4 1.03x.
template <size_t kD>
PAGEDKV_BF16_DOT_ATTR HWY_INLINE void DotScoresOfPages(const uint16_t* HWY_RESTRICT pack,
                                                       size_t queries, const DotSegment* pages,
                                                       size_t num_pages, size_t D,
                                                       float* HWY_RESTRICT scores, size_t t_pad) {
  for (size_t g = 0; 4 * g < queries; ++g) {
    const uint16_t* group_pack = pack + g * DotChunks(D) * 4 * 32;
    const size_t real = std::min<size_t>(4, queries - 4 * g);
    // The last five queries (GQA 5): the fifth is scored with the four, from the same key
    // loads. bf16 decode, one thread, Zen 4, calls alternated, against a group of its own:
    // 0.95-0.96x the time for 1 x 256 (L2), 0.94-0.95x for 1 x 2,048, 0.91x for 32 x 2,048.
    const bool fifth = queries - 4 * g == 5;
    for (size_t s = 0; s < num_pages; ++s) {
      float* group_scores = scores + 4 * g * t_pad + pages[s].col;
      if (fifth) {
        DotScoresOfGroup<kD, 4, 4>(group_pack, pages[s], D, group_scores, t_pad, g == 0);
      } else if (real == 4) {
        DotScoresOfGroup<kD, 4>(group_pack, pages[s], D, group_scores, t_pad, g == 0);
      } else if (real == 3) {
        // Two copies and a third, against four with a zero query: bf16 decode, one thread,
        // Zen 4, calls alternated, two runs: GQA 3 0.93x the time at 1 x 256 and 0.95x at
        // 1 x 2,048, GQA 7 0.95x at both and 0.98-0.99x from DRAM (32 x 2,048); GQA 4 1.00x.
        DotScoresOfGroup<kD, 2, 2>(group_pack, pages[s], D, group_scores, t_pad, g == 0);
      } else if (real == 2) {
        DotScoresOfGroup<kD, 2>(group_pack, pages[s], D, group_scores, t_pad, g == 0);
      } else {
        DotScoresOfGroup<kD, 1>(group_pack, pages[s], D, group_scores, t_pad, g == 0);
      }
    }
    if (fifth) break;
  }
}

// Scores of `queries` queries (packed by PackQueries) against a step's pages.
PAGEDKV_BF16_DOT_ATTR HWY_NOINLINE inline void DotScores(const uint16_t* HWY_RESTRICT pack,
                                                         size_t queries, const DotSegment* pages,
                                                         size_t num_pages, size_t D,
                                                         float* HWY_RESTRICT scores, size_t t_pad) {
  switch (D) {
    case 64:
      return DotScoresOfPages<64>(pack, queries, pages, num_pages, D, scores, t_pad);
    case 128:
      return DotScoresOfPages<128>(pack, queries, pages, num_pages, D, scores, t_pad);
    case 256:
      return DotScoresOfPages<256>(pack, queries, pages, num_pages, D, scores, t_pad);
    default:
      return DotScoresOfPages<0>(pack, queries, pages, num_pages, D, scores, t_pad);
  }
}

// One step of the online softmax for one query: out[t] = bf16(exp(scores[t] - max)) (0 where
// the score is -inf, masked; ExpBelowMax), for n scores (a multiple of 16); returns the sum of the
// rounded values, so the denominator matches the weights the value product uses.
PAGEDKV_BF16_DOT_ATTR HWY_NOINLINE inline float DotSoftmaxRow(const float* HWY_RESTRICT scores,
                                                              size_t n, float max,
                                                              uint16_t* HWY_RESTRICT out) {
  const hn::Full512<float> df;
  const auto vmax = hn::Set(df, max);
  __m512 sum = _mm512_setzero_ps();
  for (size_t t = 0; t < n; t += 16) {
    const __m512 p = ExpBelowMax(df, hn::LoadU(df, scores + t), vmax).raw;
    const __m256i bits = (__m256i)_mm512_cvtneps_pbh(p);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + t), bits);
    sum = _mm512_add_ps(sum, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16)));
  }
  return _mm512_reduce_add_ps(sum);
}

// Rows t and t + 1 of V (row t + 1 zeros when !kPair) against the probability pairs
// (p_j[t], p_j[t + 1]) of the group's kQueries queries, into the accumulators of DotValuesPass.
template <int kChunks, bool kPair, int kQueries>
PAGEDKV_BF16_DOT_ATTR HWY_INLINE void DotValuesTwoRows(const uint16_t* HWY_RESTRICT row,
                                                       const uint16_t* HWY_RESTRICT probs,
                                                       size_t t_pad, size_t D,
                                                       const __mmask32 (&valid)[kChunks],
                                                       __m512 (&a)[kQueries][2 * kChunks]) {
  __m512i lo[kChunks], hi[kChunks];
  for (int c = 0; c < kChunks; ++c) {
    const __m512i v0 = _mm512_maskz_loadu_epi16(valid[c], row + 32 * c);
    const __m512i v1 =
        kPair ? _mm512_maskz_loadu_epi16(valid[c], row + D + 32 * c) : _mm512_setzero_si512();
    lo[c] = _mm512_unpacklo_epi16(v0, v1);
    hi[c] = _mm512_unpackhi_epi16(v0, v1);
  }
  for (int j = 0; j < kQueries; ++j) {
    uint32_t both = 0;  // p[t] in the low half, p[t + 1] in the high half.
    std::memcpy(&both, probs + j * t_pad, kPair ? 4 : 2);
    const __m512bh pb = (__m512bh)_mm512_set1_epi32(static_cast<int>(both));
    for (int c = 0; c < kChunks; ++c) {
      a[j][2 * c] = _mm512_dpbf16_ps(a[j][2 * c], (__m512bh)lo[c], pb);
      a[j][2 * c + 1] = _mm512_dpbf16_ps(a[j][2 * c + 1], (__m512bh)hi[c], pb);
    }
  }
}

// Segments of this many rows (a whole page of the default 16 tokens) are summed by a loop unrolled
// in full (DotValuesPass) for groups of four queries (GQA 4, and GQA 8 in two groups): a loop of
// eight row pairs per segment cost its exit once a page. Unrolled for every group size (1 to 6),
// the kernels' one file then (attention.cc; this path is attend_bf16_dot.cc's now) took the fuzz
// build's clang (ASan and UBSan) more than twice as long. bf16
// decode on the Zen 4 VM, calls alternated in one process, each way its own instantiation of the
// value pass, three runs: 1 x 2,048 paged 0.957-0.973x the time at one thread and 0.963-0.968x
// at two; contiguous (segments of up to 256 rows) 0.99-1.00x; from DRAM (32 x 2,048, one thread)
// 1.00x in two runs, 0.94x in the third. The same bits. The builds before and after, run in turn
// three times: paged / contiguous time (BM_DecodePagedOverContiguous, bf16 1 x 2,048) 1.065-1.078
// before and 1.037-1.066 after at one thread, 1.109-1.151 and 0.945-1.096 at two.
constexpr size_t kUnrolledRows = 16;

// acc[j] += sum_t p[j][t] V[t] over dims [c0, c0 + 32 * kChunks) for the kQueries queries of a
// group (the padding of a last group sums nothing), two keys per vdpbf16ps. With `prefetch`, each
// segment's lead V rows are fetched into L1 row for row, and the pages a step ahead are touched.
template <int kChunks, int kQueries>
PAGEDKV_BF16_DOT_ATTR HWY_INLINE void DotValuesPass(const uint16_t* HWY_RESTRICT p, size_t t_pad,
                                                    const DotSegment* pages, size_t num_pages,
                                                    size_t D, size_t c0, bool prefetch,
                                                    float* HWY_RESTRICT acc, size_t acc_stride) {
  __m512 a[kQueries][2 * kChunks];
  __mmask32 valid[kChunks];
  for (int c = 0; c < kChunks; ++c) {
    const size_t first = c0 + 32 * static_cast<size_t>(c);
    const size_t dims = D - first < 32 ? D - first : 32;
    valid[c] = dims == 32 ? ~__mmask32{0} : static_cast<__mmask32>((1u << dims) - 1);
    for (int j = 0; j < kQueries; ++j) {
      a[j][2 * c] = _mm512_loadu_ps(acc + j * acc_stride + first);
      a[j][2 * c + 1] = _mm512_loadu_ps(acc + j * acc_stride + first + 16);
    }
  }
  const size_t row_bytes = D * sizeof(uint16_t);
  for (size_t s = 0; s < num_pages; ++s) {
    const uint16_t* rows = pages[s].values + c0;
    const uint16_t* probs = p + pages[s].col;
    const size_t n = pages[s].n;
    const uint16_t* lead = prefetch ? pages[s].lead_v : nullptr;
    if (prefetch) TouchAhead(pages[s].far_k, pages[s].far_v);
    if constexpr (kQueries == 4) {
      if (n == kUnrolledRows) {
        if (lead != nullptr) {
          const ptrdiff_t far = pages[s].far;
#pragma GCC unroll 8
          for (size_t t = 0; t < kUnrolledRows; t += 2) {
            PrefetchRows(lead + t * D, nullptr, 2 * row_bytes, far);
            DotValuesTwoRows<kChunks, true, kQueries>(rows + t * D, probs + t, t_pad, D, valid, a);
          }
        } else {
#pragma GCC unroll 8
          for (size_t t = 0; t < kUnrolledRows; t += 2) {
            DotValuesTwoRows<kChunks, true, kQueries>(rows + t * D, probs + t, t_pad, D, valid, a);
          }
        }
        continue;
      }
    }
    size_t t = 0;
    for (; t + 2 <= n; t += 2) {
      if (lead != nullptr) PrefetchRows(lead + t * D, nullptr, 2 * row_bytes, pages[s].far);
      DotValuesTwoRows<kChunks, true, kQueries>(rows + t * D, probs + t, t_pad, D, valid, a);
    }
    if (t < n) {
      DotValuesTwoRows<kChunks, false, kQueries>(rows + t * D, probs + t, t_pad, D, valid, a);
    }
  }
  for (int c = 0; c < kChunks; ++c) {
    const size_t first = c0 + 32 * static_cast<size_t>(c);
    for (int j = 0; j < kQueries; ++j) {
      _mm512_storeu_ps(acc + j * acc_stride + first, a[j][2 * c]);
      _mm512_storeu_ps(acc + j * acc_stride + first + 16, a[j][2 * c + 1]);
    }
  }
}

// The value passes of kQueries (1 to 6) queries over a step's pages, 64 dims at a time.
template <int kQueries>
PAGEDKV_BF16_DOT_ATTR HWY_INLINE void DotValuesOfGroup(const uint16_t* HWY_RESTRICT p, size_t t_pad,
                                                       const DotSegment* pages, size_t num_pages,
                                                       size_t D, bool prefetch,
                                                       float* HWY_RESTRICT acc, size_t acc_stride) {
  size_t c0 = 0;
  for (; c0 + 64 <= acc_stride; c0 += 64) {
    DotValuesPass<2, kQueries>(p, t_pad, pages, num_pages, D, c0, prefetch && c0 == 0, acc,
                               acc_stride);
  }
  if (c0 < acc_stride) {
    DotValuesPass<1, kQueries>(p, t_pad, pages, num_pages, D, c0, prefetch && c0 == 0, acc,
                               acc_stride);
  }
}

// Value accumulation of `queries` queries over the pages of one step: in groups of four, and
// the last five or six in one group, each V row unpacked once for all of them. bf16 decode,
// 1 x 2,048, one thread, on Zen 4, calls alternated: against padding to eight queries, GQA 5
// took 0.74x the time and GQA 6 0.81x (a group of four, then the rest as a group of their own:
// 0.81-0.83x and 0.85-0.86x); seven and eight in one group, 32 dims a pass, took 1.01x and
// 1.05x the time of two groups of four.
// Accumulators are acc_stride (head_dim rounded up to 32) floats per query, in StoreDotValues'
// order. The first pass (first group, first 64 dims) prefetches; the others find the rows in
// cache. Working the step in L1-sized windows instead, every pass of a window before the next,
// measured no faster.
PAGEDKV_BF16_DOT_ATTR HWY_NOINLINE inline void DotValues(const uint16_t* HWY_RESTRICT p,
                                                         size_t t_pad, size_t queries,
                                                         const DotSegment* pages, size_t num_pages,
                                                         size_t D, float* HWY_RESTRICT acc,
                                                         size_t acc_stride) {
  using GroupValues =
      void (*)(const uint16_t*, size_t, const DotSegment*, size_t, size_t, bool, float*, size_t);
  static constexpr GroupValues kGroupValues[] = {nullptr,
                                                 &DotValuesOfGroup<1>,
                                                 &DotValuesOfGroup<2>,
                                                 &DotValuesOfGroup<3>,
                                                 &DotValuesOfGroup<4>,
                                                 &DotValuesOfGroup<5>,
                                                 &DotValuesOfGroup<6>};
  for (size_t j = 0; j < queries;) {
    const size_t rest = queries - j;
    const size_t n = rest == 5 || rest == 6 ? rest : std::min<size_t>(4, rest);
    kGroupValues[n](p + j * t_pad, t_pad, pages, num_pages, D, /*prefetch=*/j == 0,
                    acc + j * acc_stride, acc_stride);
    j += n;
  }
}

#undef PAGEDKV_BF16_DOT_ATTR

#else
constexpr bool kHaveBf16Dot = false;

inline size_t PackedQuerySize(size_t, size_t) { return 0; }
inline void PackQueries(const float*, size_t, size_t, uint16_t*) {}
inline void DotScores(const uint16_t*, size_t, const DotSegment*, size_t, size_t, float*, size_t) {
}
inline float DotSoftmaxRow(const float*, size_t, float, uint16_t*) { return 0.0f; }
inline void DotValues(const uint16_t*, size_t, size_t, const DotSegment*, size_t, size_t, float*,
                      size_t) {}
#endif

}  // namespace pagedkv::internal::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // PAGEDKV_ATTENTION_BF16_DOT_INL_H_

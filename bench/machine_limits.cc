#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "bench/machine_limits.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include <algorithm>
#include <type_traits>

#include "hwy/cache_control.h"
#include "hwy/highway.h"
#include "pagedkv/config.h"

#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
#include <immintrin.h>
#endif

HWY_BEFORE_NAMESPACE();
namespace pagedkv::bench::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

float StreamSumImpl(const float* HWY_RESTRICT data, size_t n) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  auto a0 = hn::Zero(d), a1 = hn::Zero(d), a2 = hn::Zero(d), a3 = hn::Zero(d);
  size_t i = 0;
  for (; i + 4 * N <= n; i += 4 * N) {
    a0 = hn::Add(a0, hn::LoadU(d, data + i));
    a1 = hn::Add(a1, hn::LoadU(d, data + i + N));
    a2 = hn::Add(a2, hn::LoadU(d, data + i + 2 * N));
    a3 = hn::Add(a3, hn::LoadU(d, data + i + 3 * N));
  }
  float sum = hn::GetLane(hn::SumOfLanes(d, hn::Add(hn::Add(a0, a1), hn::Add(a2, a3))));
  for (; i < n; ++i) sum += data[i];
  return sum;
}

// Sum of the pages named by `order` (page_floats floats each), in that order: paged decode's
// access pattern without its arithmetic. ahead 0: the next page's lines are prefetched into L1
// when a page starts. ahead > 0: the page `ahead` pages on is fetched into L2 line for line as
// each line of the current page is read, as the decode kernel fetches its pages a step ahead
// (PageFetch::kFar).
float PageSumImpl(const float* HWY_RESTRICT base, const int32_t* HWY_RESTRICT order,
                  size_t num_pages, size_t page_floats, size_t ahead) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  const size_t chunk_bytes = 4 * N * sizeof(float);
  auto a0 = hn::Zero(d), a1 = hn::Zero(d), a2 = hn::Zero(d), a3 = hn::Zero(d);
  for (size_t i = 0; i < num_pages; ++i) {
    if (ahead == 0 && i + 1 < num_pages) {
      const char* next = reinterpret_cast<const char*>(base + order[i + 1] * page_floats);
      for (size_t off = 0; off < page_floats * sizeof(float); off += 64) {
        hwy::Prefetch(next + off);
      }
    }
    // With ahead > 0: the page to fetch line for line, or null past the last one.
    const char* far = ahead > 0 && i + ahead < num_pages
                          ? reinterpret_cast<const char*>(base + order[i + ahead] * page_floats)
                          : nullptr;
    const float* page = base + order[i] * page_floats;
    for (size_t j = 0; j + 4 * N <= page_floats; j += 4 * N) {
      if (far != nullptr) {
        for (size_t off = 0; off < chunk_bytes; off += 64) {
          __builtin_prefetch(far + j * sizeof(float) + off, /*rw=*/0, /*locality=*/2);
        }
      }
      a0 = hn::Add(a0, hn::LoadU(d, page + j));
      a1 = hn::Add(a1, hn::LoadU(d, page + j + N));
      a2 = hn::Add(a2, hn::LoadU(d, page + j + 2 * N));
      a3 = hn::Add(a3, hn::LoadU(d, page + j + 3 * N));
    }
  }
  return hn::GetLane(hn::SumOfLanes(d, hn::Add(hn::Add(a0, a1), hn::Add(a2, a3))));
}

// Sum of one sequence's pages in paged decode's order, without its arithmetic: a block-major pool
// of blocks of `heads` parts (one head's rows of a page, part_floats floats each) at k, V the same
// at v; `table` names the sequence's num_pages blocks. Per step of `step` pages, per head, the
// head's part of each page of the step, K then V, as the row kernel reads an item of all the
// heads under PageFetch::kFar, with its fetches: each line's counterpart in the next page into L1,
// and in the part read one head-step later (the next head's part of the page; after the last
// head, the first head's part of the page a step on) into L2. block_order: also the pages of the
// step ahead, into L2 in block order (each page's parts in turn, K's then V's), a line for each
// line read.
float DecodeOrderSumImpl(const float* HWY_RESTRICT k, const float* HWY_RESTRICT v,
                         const int32_t* HWY_RESTRICT table, size_t num_pages, size_t heads,
                         size_t part_floats, size_t step, bool block_order) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  const size_t block_floats = heads * part_floats;
  const size_t chunk_bytes = 4 * N * sizeof(float);
  const size_t part_bytes = part_floats * sizeof(float);
  auto a0 = hn::Zero(d), a1 = hn::Zero(d), a2 = hn::Zero(d), a3 = hn::Zero(d);
  const auto part = [&](const float* pool, size_t page, size_t h) {
    return reinterpret_cast<const char*>(pool + table[page] * block_floats + h * part_floats);
  };
  for (size_t p0 = 0; p0 < num_pages; p0 += step) {
    const size_t p1 = std::min(num_pages, p0 + step);
    // Block order: the next line to fetch of the step ahead's pages [p1, ahead_end), byte `ao`
    // of part `ah` of page `ap` of pool `ak` (0: K, 1: V), each page's K parts then its V parts.
    const size_t ahead_end = block_order ? std::min(num_pages, p1 + step) : p1;
    size_t ap = p1, ak = 0, ah = 0, ao = 0;
    for (size_t h = 0; h < heads; ++h) {
      for (const float* pool : {k, v}) {
        for (size_t p = p0; p < p1; ++p) {
          const char* lead = p + 1 < num_pages ? part(pool, p + 1, h) : nullptr;
          const char* later = h + 1 < heads          ? part(pool, p, h + 1)
                              : p + step < num_pages ? part(pool, p + step, 0)
                                                     : nullptr;
          const float* rows = pool + table[p] * block_floats + h * part_floats;
          for (size_t j = 0; j + 4 * N <= part_floats; j += 4 * N) {
            for (size_t off = 0; off < chunk_bytes; off += 64) {
              const size_t at = j * sizeof(float) + off;
              if (lead != nullptr) hwy::Prefetch(lead + at);
              if (later != nullptr) __builtin_prefetch(later + at, /*rw=*/0, /*locality=*/2);
              if (ap < ahead_end) {
                __builtin_prefetch(part(ak == 0 ? k : v, ap, ah) + ao, /*rw=*/0, /*locality=*/2);
                if ((ao += 64) == part_bytes) {
                  ao = 0;
                  if (++ah == heads) {
                    ah = 0;
                    if (++ak == 2) {
                      ak = 0;
                      ++ap;
                    }
                  }
                }
              }
            }
            a0 = hn::Add(a0, hn::LoadU(d, rows + j));
            a1 = hn::Add(a1, hn::LoadU(d, rows + j + N));
            a2 = hn::Add(a2, hn::LoadU(d, rows + j + 2 * N));
            a3 = hn::Add(a3, hn::LoadU(d, rows + j + 3 * N));
          }
        }
      }
    }
  }
  return hn::GetLane(hn::SumOfLanes(d, hn::Add(hn::Add(a0, a1), hn::Add(a2, a3))));
}

// Decode's vector arithmetic at GQA 4 over rows of K and V stored as T, with none of its
// dependencies: per 2N dims of each row, two f32 vectors (bf16: the widening split into even and
// odd dims, a shift and a mask; f16: two conversions; f32: two loads) and an FMA of each with four
// queries held in registers; per 2N dims of K and V, four adds standing in for the scores' sums
// and the softmax (AVX-512 at head dim 128, bf16: 96 vector ops per key, as the row kernel counts
// them). `passes` times over the rows. What the decode kernel could read per second if its loads
// overlapped its arithmetic perfectly, with the hardware prefetcher alone: from DRAM the kernel,
// which also fetches in software, can read more.
template <typename T>
float DecodeArithmeticSumOf(const T* HWY_RESTRICT k, const T* HWY_RESTRICT v, size_t n,
                            size_t passes) {
  const hn::ScalableTag<float> d;
  const hn::RebindToUnsigned<decltype(d)> du;
  const size_t N = hn::Lanes(d);
  // Sixteen accumulators where there are 32 registers, eight (K and V share them) elsewhere.
  constexpr size_t kAcc = HWY_TARGET <= HWY_AVX3 ? 16 : 8;
  constexpr size_t kV = kAcc == 16 ? 8 : 0;  // The first of V's accumulators.
  const hn::Vec<decltype(d)> q[4] = {hn::Set(d, 1.0001f), hn::Set(d, 0.9999f), hn::Set(d, 1.0002f),
                                     hn::Set(d, 0.9998f)};
  // Elements [i, i + 2N) at p as two f32 vectors, as the row kernel widens them.
  const auto load_pair = [&](const T* HWY_RESTRICT p, size_t i, hn::Vec<decltype(d)>& lo,
                             hn::Vec<decltype(d)>& hi) {
    if constexpr (std::is_same_v<T, float>) {
      lo = hn::LoadU(d, p + i);
      hi = hn::LoadU(d, p + i + N);
    } else if constexpr (std::is_same_v<T, hwy::float16_t>) {
      const hn::Rebind<hwy::float16_t, decltype(d)> dh;
      lo = hn::PromoteTo(d, hn::LoadU(dh, p + i));
      hi = hn::PromoteTo(d, hn::LoadU(dh, p + i + N));
    } else {
      const auto w = hn::LoadU(du, reinterpret_cast<const uint32_t*>(p + i));
      lo = hn::BitCast(d, hn::ShiftLeft<16>(w));
      hi = hn::BitCast(d, hn::And(w, hn::Set(du, 0xFFFF0000u)));
    }
  };
  hn::Vec<decltype(d)> acc[kAcc];
  for (auto& a : acc) a = hn::Zero(d);
  for (size_t pass = 0; pass < passes; ++pass) {
    for (size_t i = 0; i + 2 * N <= n; i += 2 * N) {
      hn::Vec<decltype(d)> klo, khi, vlo, vhi;
      load_pair(k, i, klo, khi);
      load_pair(v, i, vlo, vhi);
      for (size_t j = 0; j < 4; ++j) {
        acc[j] = hn::MulAdd(q[j], klo, acc[j]);
        acc[4 + j] = hn::MulAdd(q[j], khi, acc[4 + j]);
        acc[kV + j] = hn::MulAdd(q[j], vlo, acc[kV + j]);
        acc[kV + 4 + j] = hn::MulAdd(q[j], vhi, acc[kV + 4 + j]);
      }
      for (size_t j = 0; j < 4; ++j) acc[j] = hn::Add(acc[j], klo);
    }
  }
  auto sum = acc[0];
  for (size_t j = 1; j < kAcc; ++j) sum = hn::Add(sum, acc[j]);
  return hn::GetLane(hn::SumOfLanes(d, sum));
}

float DecodeArithmeticSumImpl(DType dtype, const void* k, const void* v, size_t bytes,
                              size_t passes) {
  switch (dtype) {
    case DType::kF32:
      return DecodeArithmeticSumOf(static_cast<const float*>(k), static_cast<const float*>(v),
                                   bytes / 4, passes);
    case DType::kF16:
      return DecodeArithmeticSumOf(static_cast<const hwy::float16_t*>(k),
                                   static_cast<const hwy::float16_t*>(v), bytes / 2, passes);
    default:
      return DecodeArithmeticSumOf(static_cast<const hwy::bfloat16_t*>(k),
                                   static_cast<const hwy::bfloat16_t*>(v), bytes / 2, passes);
  }
}

double FmaChainsImpl(int64_t iterations, float seed) {
  const hn::ScalableTag<float> d;
  // Twelve independent chains hide the FMA latency on every x86 core we target (Zen 5 needs 8:
  // 2 per cycle, 4 cycles each). Each starts from its own value: chains from one value are the
  // same computation, and the compiler merged them into one (this benchmark then timed one
  // chain's latency and reported 311 GFLOP/s on a core whose peak is 240-250).
  const auto m = hn::Set(d, 0.999999f);
  const auto a = hn::Set(d, 1e-7f);
  const auto start = [&](int k) { return hn::Set(d, seed + 0.125f * static_cast<float>(k)); };
  auto c0 = start(0), c1 = start(1), c2 = start(2), c3 = start(3), c4 = start(4), c5 = start(5),
       c6 = start(6), c7 = start(7), c8 = start(8), c9 = start(9), c10 = start(10),
       c11 = start(11);
  for (int64_t i = 0; i < iterations; ++i) {
    c0 = hn::MulAdd(c0, m, a); c1 = hn::MulAdd(c1, m, a); c2 = hn::MulAdd(c2, m, a);
    c3 = hn::MulAdd(c3, m, a); c4 = hn::MulAdd(c4, m, a); c5 = hn::MulAdd(c5, m, a);
    c6 = hn::MulAdd(c6, m, a); c7 = hn::MulAdd(c7, m, a); c8 = hn::MulAdd(c8, m, a);
    c9 = hn::MulAdd(c9, m, a); c10 = hn::MulAdd(c10, m, a); c11 = hn::MulAdd(c11, m, a);
  }
  const auto sum = hn::Add(hn::Add(hn::Add(hn::Add(c0, c1), hn::Add(c2, c3)),
                                   hn::Add(hn::Add(c4, c5), hn::Add(c6, c7))),
                           hn::Add(hn::Add(c8, c9), hn::Add(c10, c11)));
  volatile float sink = hn::GetLane(sum);
  (void)sink;
  return 2.0 * 12.0 * static_cast<double>(hn::Lanes(d)) * static_cast<double>(iterations);
}

#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
// Sixteen independent chains of vdpbf16ps from registers (32 multiply-adds each): the peak the
// bf16 attention path works against. Zen 5 needs more than twelve (7.2 G/s with twelve, 7.9 with
// sixteen or 24, a standalone loop). Each chain starts from its own value, as in FmaChainsImpl.
// Needs AVX512_BF16 (checked by the caller).
__attribute__((target(HWY_TARGET_STR ",avx512bf16"))) HWY_NOINLINE double Bf16DotChainsImpl(
    int64_t iterations, float seed) {
  constexpr int kChains = 16;
  __m512 acc[kChains];
  for (int k = 0; k < kChains; ++k) acc[k] = _mm512_set1_ps(seed + 0.125f * static_cast<float>(k));
  const __m512bh x = (__m512bh)_mm512_set1_epi32(0x3f803f80);  // bf16 pairs (1, 1).
  const __m512bh y = (__m512bh)_mm512_set1_epi32(0x33d633d6);  // bf16 pairs of about 1e-7.
  for (int64_t i = 0; i < iterations; ++i) {
    for (__m512& a : acc) a = _mm512_dpbf16_ps(a, x, y);
  }
  __m512 sum = acc[0];
  for (int k = 1; k < kChains; ++k) sum = _mm512_add_ps(sum, acc[k]);
  volatile float sink = _mm512_reduce_add_ps(sum);
  (void)sink;
  return kChains * static_cast<double>(iterations);
}
#else
double Bf16DotChainsImpl(int64_t, float) { return 0.0; }
#endif

}  // namespace pagedkv::bench::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include <vector>

#include "attention/worker_pool.h"
#include "bench/machine_limits.h"

namespace pagedkv::bench {
HWY_EXPORT(StreamSumImpl);
HWY_EXPORT(PageSumImpl);
HWY_EXPORT(DecodeOrderSumImpl);
HWY_EXPORT(DecodeArithmeticSumImpl);
HWY_EXPORT(FmaChainsImpl);
HWY_EXPORT(Bf16DotChainsImpl);

float StreamSum(const float* data, size_t n) { return HWY_DYNAMIC_DISPATCH(StreamSumImpl)(data, n); }
float StreamOnce(absl::Span<const float> data, int threads) {
  const size_t per = data.size() / static_cast<size_t>(threads);
  std::vector<float> sums(static_cast<size_t>(threads));
  internal::ParallelFor(threads, threads, [&](int64_t i) {
    const auto t = static_cast<size_t>(i);
    sums[t] = StreamSum(data.data() + per * t, per);
  });
  float sum = 0;
  for (float x : sums) sum += x;
  return sum;
}
float PageSum(const float* base, const int32_t* order, size_t num_pages, size_t page_floats,
              size_t ahead) {
  return HWY_DYNAMIC_DISPATCH(PageSumImpl)(base, order, num_pages, page_floats, ahead);
}
float DecodeOrderSum(const float* k, const float* v, const int32_t* table, size_t num_pages,
                     size_t heads, size_t part_floats, size_t step, bool block_order) {
  return HWY_DYNAMIC_DISPATCH(DecodeOrderSumImpl)(k, v, table, num_pages, heads, part_floats, step,
                                                  block_order);
}
float DecodeArithmeticSum(DType dtype, const void* k, const void* v, size_t bytes, size_t passes) {
  return HWY_DYNAMIC_DISPATCH(DecodeArithmeticSumImpl)(dtype, k, v, bytes, passes);
}
double FmaChains(int64_t iterations, float seed) {
  return HWY_DYNAMIC_DISPATCH(FmaChainsImpl)(iterations, seed);
}
double Bf16DotChains(int64_t iterations, float seed) {
#if defined(__x86_64__) || defined(__i386__)
  if (!__builtin_cpu_supports("avx512bf16")) return 0.0;
  return HWY_DYNAMIC_DISPATCH(Bf16DotChainsImpl)(iterations, seed);
#else
  return 0.0;
#endif
}

}  // namespace pagedkv::bench
#endif

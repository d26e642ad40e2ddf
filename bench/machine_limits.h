// The machine's own limits, measured with the same Highway dispatch as the kernels: what a
// kernel's bytes/s and FLOP/s are compared against in the same run.
#ifndef PAGEDKV_BENCH_MACHINE_LIMITS_H_
#define PAGEDKV_BENCH_MACHINE_LIMITS_H_

#include <cstddef>
#include <cstdint>

#include "absl/types/span.h"
#include "pagedkv/config.h"

namespace pagedkv::bench {

// Sum of n floats, streamed with the widest vectors this CPU has.
float StreamSum(const float* data, size_t n);
// StreamSum of `data` with `threads` threads, each its own slice (BM_StreamRead's call).
float StreamOnce(absl::Span<const float> data, int threads);
// Sum of num_pages pages of page_floats floats at base, in the order given (page indices). ahead
// 0: the next page is prefetched into L1 when a page starts; ahead > 0: the page `ahead` pages on
// is fetched into L2 line for line as the current page is read.
float PageSum(const float* base, const int32_t* order, size_t num_pages, size_t page_floats,
              size_t ahead);
// One sequence's num_pages pages (block ids in `table`) of a block-major pool of `heads` parts of
// part_floats floats a block, K at k and V at v, summed in the order decode reads an item of all
// the heads under PageFetch::kFar, with its fetches; block_order: the pages a step ahead fetched
// into L2 in block order too (machine_limits.cc).
float DecodeOrderSum(const float* k, const float* v, const int32_t* table, size_t num_pages,
                     size_t heads, size_t part_floats, size_t step, bool block_order);
// Decode's vector arithmetic (GQA 4) over `bytes` of K at k and as many of V at v, stored as
// dtype, `passes` times, without the kernel's dependencies between its parts.
float DecodeArithmeticSum(DType dtype, const void* k, const void* v, size_t bytes, size_t passes);
// Runs `iterations` rounds of independent fused multiply-adds and returns the FLOPs done
// (2 per lane per FMA).
double FmaChains(int64_t iterations, float seed);
// Runs `iterations` rounds of independent vdpbf16ps and returns how many were executed; 0 when
// the CPU lacks AVX512_BF16.
double Bf16DotChains(int64_t iterations, float seed);

}  // namespace pagedkv::bench

#endif  // PAGEDKV_BENCH_MACHINE_LIMITS_H_

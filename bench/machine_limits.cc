#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "bench/machine_limits.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

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

double FmaChainsImpl(int64_t iterations, float seed) {
  const hn::ScalableTag<float> d;
  // Ten independent chains hide the FMA latency on every x86 core we target.
  auto m = hn::Set(d, 0.999999f);
  auto a = hn::Set(d, 1e-7f);
  auto c0 = hn::Set(d, seed), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0,
       c8 = c0, c9 = c0;
  for (int64_t i = 0; i < iterations; ++i) {
    c0 = hn::MulAdd(c0, m, a); c1 = hn::MulAdd(c1, m, a); c2 = hn::MulAdd(c2, m, a);
    c3 = hn::MulAdd(c3, m, a); c4 = hn::MulAdd(c4, m, a); c5 = hn::MulAdd(c5, m, a);
    c6 = hn::MulAdd(c6, m, a); c7 = hn::MulAdd(c7, m, a); c8 = hn::MulAdd(c8, m, a);
    c9 = hn::MulAdd(c9, m, a);
  }
  const auto sum = hn::Add(hn::Add(hn::Add(c0, c1), hn::Add(c2, c3)),
                           hn::Add(hn::Add(hn::Add(c4, c5), hn::Add(c6, c7)), hn::Add(c8, c9)));
  volatile float sink = hn::GetLane(sum);
  (void)sink;
  return 2.0 * 10.0 * static_cast<double>(hn::Lanes(d)) * static_cast<double>(iterations);
}

}  // namespace pagedkv::bench::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include "bench/machine_limits.h"

namespace pagedkv::bench {
HWY_EXPORT(StreamSumImpl);
HWY_EXPORT(FmaChainsImpl);

float StreamSum(const float* data, size_t n) { return HWY_DYNAMIC_DISPATCH(StreamSumImpl)(data, n); }
double FmaChains(int64_t iterations, float seed) {
  return HWY_DYNAMIC_DISPATCH(FmaChainsImpl)(iterations, seed);
}

}  // namespace pagedkv::bench
#endif

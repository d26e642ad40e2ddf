// The machine's own limits, which the attention rows (attention_bench.cc) and the goal report
// (goals.cc) compare against in the same run: streaming and scattered reads, decode's arithmetic
// without its dependencies, and the FMA and vdpbf16ps peaks.
#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "attention/worker_pool.h"
#include "bench/bench_util.h"
#include "bench/machine_limits.h"
#include "benchmark/benchmark.h"
#include "pagedkv/config.h"

namespace pagedkv::bench {
namespace {

// 0 to n - 1 in a random order drawn from `seed`: page or block ids handed out in random order.
std::vector<int32_t> ShuffledIds(size_t n, uint32_t seed) {
  std::vector<int32_t> ids(n);
  for (size_t i = 0; i < n; ++i) ids[i] = static_cast<int32_t>(i);
  std::shuffle(ids.begin(), ids.end(), std::mt19937(seed));
  return ids;
}

// The physical limit: stream a buffer of the same size with the same number of threads (16 MiB:
// the f32 decode rows' K/V).
void BM_StreamRead(benchmark::State& state) {
  const size_t bytes = static_cast<size_t>(state.range(0));
  const int threads = static_cast<int>(state.range(1));
  const ArenaArray<float> data(bytes / sizeof(float), 1.0f);
  for (auto _ : state) benchmark::DoNotOptimize(StreamOnce(data.span(), threads));
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(bytes));
}
BENCHMARK(BM_StreamRead)
    ->ArgNames({"bytes", "threads"})
    ->ArgsProduct({{8 << 20, 16 << 20, 128 << 20, 256 << 20}, ThreadCounts()})
    ->UseRealTime();

// Decode's arithmetic (GQA 4: for bf16, 96 vector ops per key and KV head on AVX-512) over K and V
// rows of dtype streamed from buffers of `bytes` in all, without the kernel's dependencies: the
// bytes/s the decode rows could reach if their loads overlapped their arithmetic perfectly (with
// no software prefetch: from DRAM the kernel can read more). 32 KiB sits in L1 (read again and
// again: the arithmetic alone), 8 MiB in L3 as BM_DecodePaged's 1 x 2,048 in bf16, 256 MiB in DRAM
// as its 32 x 2,048. Compare with BM_StreamRead of the same size and threads. The goal lines put
// each BM_DecodePaged row's ratio between two made from the 32 KiB row of its dtype (goals.cc):
// the arithmetic against the stream, and the two taking turns.
void BM_DecodeArithmeticRead(benchmark::State& state) {
  const size_t bytes = static_cast<size_t>(state.range(0));
  const DType dtype = static_cast<DType>(state.range(1));
  const int threads = static_cast<int>(state.range(2));
  // Half K, half V: f32 1.0 or bf16 / f16 pairs of about 1, so the sums stay finite.
  const uint32_t one = dtype == DType::kF32   ? 0x3f800000u
                       : dtype == DType::kF16 ? 0x3c003c00u
                                              : 0x3f803f80u;
  const ArenaArray<uint32_t> k(bytes / 8, one), v(bytes / 8, one);
  const size_t per = k.size() / static_cast<size_t>(threads);
  // At least 8 MiB per thread per iteration, so that the 32 KiB rows are not timing the threads'
  // start and join.
  const size_t passes = std::max<size_t>(1, (size_t{8} << 20) / (2 * per * sizeof(uint32_t)));
  std::vector<float> sums(static_cast<size_t>(threads));
  for (auto _ : state) {
    internal::ParallelFor(threads, threads, [&](int64_t i) {
      const auto t = static_cast<size_t>(i);
      sums[t] = DecodeArithmeticSum(dtype, k.data() + per * t, v.data() + per * t,
                                    per * sizeof(uint32_t), passes);
    });
    benchmark::DoNotOptimize(sums.data());
  }
  state.SetBytesProcessed(state.iterations() *
                          static_cast<int64_t>(2 * per * sizeof(uint32_t) * passes * threads));
}
BENCHMARK(BM_DecodeArithmeticRead)
    ->ArgNames({"bytes", "dtype", "threads"})
    ->ArgsProduct({{32 << 10}, {0, 1, 2}, ThreadCounts()})
    ->ArgsProduct({{8 << 20, 256 << 20}, {1}, ThreadCounts()})
    ->UseRealTime();

// Paged decode's access pattern without its arithmetic: runs of `kib` KiB of a huge-page arena
// read in random order, split over the threads. 4 KiB is one KV head's page of 16 bf16 rows of
// 128, as the decode rows read them; 32 KiB is a whole 16-token block of 8 KV heads (or one
// head's 128-token page). `ahead` 0: the next run is prefetched into L1 as a run starts; 4: the
// run four on is fetched into L2 line for line with the lines read, as the decode kernel fetches
// pages a step ahead (PageFetch::kFar). Its bytes/s against BM_StreamRead's is what scattering
// costs the memory system itself. On the Zen 4 VM, 256 MiB at one thread, against the stream of
// the same huge-page memory (one run, medians of 3): 4 KiB runs read 0.62 of it with `ahead` 4
// and 0.35 with 0, 32 KiB runs 0.93 and 0.45. (Against the earlier stream of 4 KiB pages, two
// runs: 0.72-0.78 and 0.39, 0.83-0.96 and 0.64-0.66.) A standalone loop of the same shape, 4 KiB
// runs against a sequential read of its own huge-page buffer: 0.66-0.72 with every line fetched
// into L2 2 to 64 runs ahead (prefetcht1 and t2 alike, 0.61-0.64 one run ahead), 0.39 into L1,
// 0.40-0.41 with the non-temporal hint, and 0.18-0.42 with only the first 1 to 8 lines of each run
// fetched, which does not set the hardware prefetcher going; 8 and 16 KiB runs 0.59-0.60 with
// the L2 fetch, 32 KiB 0.80-0.85. That is the most software fetching gets from scattered 4 KiB
// pages on this VM, where decode of 32 x 2,048 reads 0.61-0.64.
void BM_ScatteredPageRead(benchmark::State& state) {
  const size_t bytes = static_cast<size_t>(state.range(0));
  const int threads = static_cast<int>(state.range(1));
  const size_t page_floats = static_cast<size_t>(state.range(2)) * 1024 / sizeof(float);
  const size_t pages = bytes / (page_floats * sizeof(float));
  const auto ahead = static_cast<size_t>(state.range(3));
  const ArenaArray<float> buffer(bytes / sizeof(float), 1.0f);
  const float* base = buffer.data();
  const std::vector<int32_t> order = ShuffledIds(pages, 3);
  const size_t per = pages / static_cast<size_t>(threads);
  std::vector<float> sums(static_cast<size_t>(threads));
  for (auto _ : state) {
    internal::ParallelFor(threads, threads, [&](int64_t i) {
      const auto t = static_cast<size_t>(i);
      sums[t] = PageSum(base, order.data() + per * t, per, page_floats, ahead);
    });
    benchmark::DoNotOptimize(sums.data());
  }
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(per * threads) *
                          static_cast<int64_t>(page_floats * sizeof(float)));
}
BENCHMARK(BM_ScatteredPageRead)
    ->ArgNames({"bytes", "threads", "kib", "ahead"})
    ->ArgsProduct({{8 << 20, 256 << 20}, ThreadCounts(), {4, 32}, {0, 4}})
    ->UseRealTime();

// Paged decode's reads of 32 x 2,048 bf16 (256 MiB: 16-token pages handed out in random order from
// block-major pools, 8 KV heads of 128 dims) without its arithmetic: in the order and with the
// fetches of the row kernel under PageFetch::kFar (steps of 16 pages, each head's part of a
// page's K then V, 4 KiB a part; DecodeOrderSum), the sequences split over the threads.
// block_order 1 also fetches the pages a step ahead into L2 in block order. On the Zen 4 VM
// (two runs, medians, against BM_StreamRead of 256 MiB in the same run): 0.63-0.68 of the stream
// at one thread, where decode of 32 x 2,048 reads 0.61-0.64, and 0.85-0.99 at two, where decode
// reads 0.59-0.83 (a third run, six repetitions: 0.61 at two, decode 0.69; the VM's two-thread
// DRAM rate swings too much to say which is faster); block_order 0.76-0.83 and 0.83-1.08 (a
// standalone loop of the same shape: 0.73-0.83 against 0.58-0.66 at one thread). The same fetch
// in the kernel (each head's segments fetching their share of the pages a step ahead) left its
// DRAM rows as they were, 0.60-0.64 of the stream against 0.61-0.63 in two runs of each build,
// and took 1.06-1.2x the time in L3: not kept.
void BM_DecodeOrderRead(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  const bool block_order = state.range(1) != 0;
  constexpr size_t kSeqs = 32, kPagesPerSeq = 128, kHeads = 8, kPartFloats = 1024, kStep = 16;
  constexpr size_t kBlocks = kSeqs * kPagesPerSeq;
  const ArenaArray<float> k(kBlocks * kHeads * kPartFloats, 1.0f);
  const ArenaArray<float> v(k.size(), 1.0f);
  const std::vector<int32_t> table = ShuffledIds(kBlocks, 5);
  const size_t per = kSeqs / static_cast<size_t>(threads);
  std::vector<float> sums(static_cast<size_t>(threads));
  for (auto _ : state) {
    internal::ParallelFor(threads, threads, [&](int64_t i) {
      const auto t = static_cast<size_t>(i);
      float sum = 0;
      for (size_t s = per * t; s < per * (t + 1); ++s) {
        sum += DecodeOrderSum(k.data(), v.data(), table.data() + s * kPagesPerSeq, kPagesPerSeq,
                              kHeads, kPartFloats, kStep, block_order);
      }
      sums[t] = sum;
    });
    benchmark::DoNotOptimize(sums.data());
  }
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(per * threads) *
                          static_cast<int64_t>(2 * kPagesPerSeq * kHeads * kPartFloats * 4));
}
BENCHMARK(BM_DecodeOrderRead)
    ->ArgNames({"threads", "block_order"})
    ->ArgsProduct({ThreadCounts(), {0, 1}})
    ->UseRealTime();

// The FMA peak with the same threads, for the extend ratio.
void BM_FmaPeak(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  constexpr int64_t kIterations = 1 << 22;
  double flops = 0;
  std::vector<double> done(static_cast<size_t>(threads));
  for (auto _ : state) {
    internal::ParallelFor(threads, threads, [&](int64_t i) {
      done[static_cast<size_t>(i)] = FmaChains(kIterations, 1.0f + static_cast<float>(i));
    });
    for (double d : done) flops += d;
  }
  state.counters["flop_per_second"] = benchmark::Counter(flops, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_FmaPeak)->ArgNames({"threads"})->ArgsProduct({ThreadCounts()})->UseRealTime();

// vdpbf16ps per second on one thread: bf16 decode at GQA 4 needs 32 of them per key and KV
// head (512 bytes of K/V), so this rate / 32 * 512 bounds its bytes/s.
void BM_Bf16DotPeak(benchmark::State& state) {
  constexpr int64_t kIterations = 1 << 22;
  double done = 0;
  for (auto _ : state) done += Bf16DotChains(kIterations, 1.0f);
  if (done == 0) {
    state.SkipWithError("this CPU has no AVX512_BF16");
    return;
  }
  state.counters["dot_per_second"] = benchmark::Counter(done, benchmark::Counter::kIsRate);
  state.counters["gqa4_bound_bytes_per_second"] =
      benchmark::Counter(done / 32.0 * 512.0, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_Bf16DotPeak)->UseRealTime();

}  // namespace
}  // namespace pagedkv::bench

// pagedkv-sim's scheduler: hand-computable runs, invariants every step, determinism.
#include <cstdint>
#include <cstdio>
#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "src/sim/backends.h"
#include "src/sim/simulator.h"
#include "src/sim/workload.h"
#include "test_util.h"

namespace pagedkv::sim {
namespace {

BackendOptions TinyOptions(int64_t budget_tokens, int64_t max_seq_len) {
  BackendOptions o;
  o.model = *FindPreset("tiny");
  o.budget_tokens = budget_tokens;
  o.block_size = 4;
  o.max_seq_len = max_seq_len;
  return o;
}

SimOptions ExactOptions() {
  SimOptions o;
  o.step_seconds = 1.0;
  o.watermark = 0.0;
  o.sample_every = 1;
  o.check_invariants = true;
  return o;
}

// The built-in workload with prompts and outputs capped and arrivals `speedup` times as fast.
Workload ShortWorkload(int64_t requests, uint64_t seed, int64_t max_prompt, int64_t max_output,
                       double speedup) {
  Workload w = SyntheticWorkload(requests, seed);
  for (Request& r : w.requests) {
    r.prompt_tokens = std::min(r.prompt_tokens, max_prompt);
    r.output_tokens = std::min(r.output_tokens, max_output);
    r.arrival_seconds /= speedup;
  }
  return w;
}

std::unique_ptr<Backend> Make(const std::string& policy, const BackendOptions& o) {
  if (policy == "paged") return *MakePagedBackend(o);
  if (policy == "contiguous_max") return MakeContiguousMaxBackend(o);
  return MakeContiguousDoublingBackend(o);
}

absl::StatusOr<PolicyResult> RunOne(const Workload& w, const SimOptions& s,
                                    const std::string& policy, const BackendOptions& o) {
  std::unique_ptr<Backend> backend = Make(policy, o);
  return Simulate(w, s, o.max_seq_len, o.budget_tokens, BytesPerToken(o.model), *backend);
}

// One request, prompt 10, output 6, blocks of 4. After each of the five sampled steps the
// sequence holds 11..15 tokens (at the sixth it completes before the sample).
TEST(SimulatorTest, OneRequestHasExactUtilization) {
  Request r;
  r.prompt_tokens = 10;
  r.output_tokens = 6;
  const Workload w{"one", {r}};
  const BackendOptions o = TinyOptions(64, 32);
  PKV_ASSIGN_OR_FAIL(PolicyResult paged, RunOne(w, ExactOptions(), "paged", o));
  // Slots 12, 12, 16, 16, 16.
  EXPECT_DOUBLE_EQ(paged.utilization_mean, (11.0 / 12 + 1.0 + 13.0 / 16 + 14.0 / 16 + 15.0 / 16) / 5);
  EXPECT_EQ(paged.peak_sequences, 1);
  EXPECT_EQ(paged.completed, 1);
  EXPECT_EQ(paged.steps, 6);
  EXPECT_DOUBLE_EQ(paged.tail_waste_tokens_mean, (1 + 0 + 3 + 2 + 1 + 0) / 6.0);
  // A fresh pool: the sequence grows into the next block each time, so its pages are one run.
  EXPECT_DOUBLE_EQ(paged.run_tokens_mean, (12 + 12 + 16 + 16 + 16) / 5.0);
  PKV_ASSIGN_OR_FAIL(PolicyResult max, RunOne(w, ExactOptions(), "contiguous_max", o));
  EXPECT_DOUBLE_EQ(max.utilization_mean, 13.0 / 32);
  EXPECT_DOUBLE_EQ(max.run_tokens_mean, 32.0);
  PKV_ASSIGN_OR_FAIL(PolicyResult doubling, RunOne(w, ExactOptions(), "contiguous_doubling", o));
  EXPECT_DOUBLE_EQ(doubling.utilization_mean, 13.0 / 16);
  EXPECT_EQ(doubling.copied_tokens, 0);
}

// Two requests at once, each needing 3 blocks at the end, in a pool of 4 blocks: both are
// admitted (2 blocks each), the first decode step runs out, and the newer one is preempted before
// it decodes (so no step ever runs two) and recomputed after the first finishes.
TEST(SimulatorTest, PreemptsTheNewestAndRecomputesIt) {
  Request r;
  r.prompt_tokens = 8;
  r.output_tokens = 4;
  const Workload w{"two", {r, r}};
  const BackendOptions o = TinyOptions(16, 16);
  PKV_ASSIGN_OR_FAIL(PolicyResult paged, RunOne(w, ExactOptions(), "paged", o));
  EXPECT_EQ(paged.completed, 2);
  EXPECT_EQ(paged.preemptions, 1);
  EXPECT_EQ(paged.peak_sequences, 1);
  EXPECT_EQ(paged.steps, 8);  // 4 steps each, one after the other.
  // contiguous_max reserves 16 per sequence: one at a time, no preemption.
  PKV_ASSIGN_OR_FAIL(PolicyResult max, RunOne(w, ExactOptions(), "contiguous_max", o));
  EXPECT_EQ(max.peak_sequences, 1);
  EXPECT_EQ(max.preemptions, 0);
  EXPECT_EQ(max.completed, 2);
}

TEST(SimulatorTest, RejectsWhatCanNeverFit) {
  Request small, too_long, too_big;
  small.prompt_tokens = 4;
  small.output_tokens = 2;
  too_long.prompt_tokens = 60;
  too_long.output_tokens = 10;  // Longer than max_seq_len 64.
  too_big.prompt_tokens = 40;
  too_big.output_tokens = 2;    // Fits max_seq_len but not the 32-token budget.
  too_big.arrival_seconds = 10;
  const Workload w{"reject", {small, too_long, too_big}};
  for (const char* policy : {"paged", "contiguous_doubling"}) {
    PKV_ASSIGN_OR_FAIL(PolicyResult res, RunOne(w, ExactOptions(), policy, TinyOptions(32, 64)));
    EXPECT_EQ(res.completed, 1) << policy;
    EXPECT_EQ(res.rejected, 2) << policy;
  }
}

// Beam search and parallel sampling on a random workload: every policy keeps its invariants at
// every step (checked inside Simulate), ends with nothing held, and gives the same answer twice.
TEST(SimulatorTest, BeamsAndSamplesKeepInvariantsAndAreDeterministic) {
  Workload w = ShortWorkload(120, 5, 300, 60, 20);
  w.requests[3].samples = 3;
  SimOptions s = ExactOptions();
  s.watermark = 0.01;
  s.step_seconds = 0.01;
  for (const char* policy : {"paged", "contiguous_max", "contiguous_doubling"}) {
    BackendOptions o = TinyOptions(4000, 2048);
    PKV_ASSIGN_OR_FAIL(PolicyResult a, RunOne(w, s, policy, o));
    PKV_ASSIGN_OR_FAIL(PolicyResult b, RunOne(w, s, policy, o));
    EXPECT_EQ(a.completed + a.rejected, 120) << policy;
    EXPECT_EQ(a.completed, b.completed) << policy;
    EXPECT_EQ(a.preemptions, b.preemptions) << policy;
    EXPECT_EQ(a.steps, b.steps) << policy;
    EXPECT_EQ(a.utilization_mean, b.utilization_mean) << policy;
    EXPECT_LE(a.peak_memory_bytes, 4000.0 * BytesPerToken(o.model)) << policy;
    if (std::string(policy) == "paged") {
      EXPECT_GT(a.sharing_saved_fraction, 0.0);
      EXPECT_GT(a.prefix_hit_rate, 0.0);
      EXPECT_GT(a.preemptions, 0) << "the budget is meant to be tight";
    }
  }
  // Materialized K/V runs the same schedule.
  BackendOptions real = TinyOptions(4000, 2048);
  real.materialize = true;
  PKV_ASSIGN_OR_FAIL(PolicyResult materialized, RunOne(w, s, "paged", real));
  PKV_ASSIGN_OR_FAIL(PolicyResult accounting, RunOne(w, s, "paged", TinyOptions(4000, 2048)));
  EXPECT_EQ(materialized.steps, accounting.steps);
  EXPECT_EQ(materialized.preemptions, accounting.preemptions);
}

// Once the pool is full of cached blocks, LRU eviction scatters pages and sweep eviction keeps
// them in runs; every step's invariants hold either way.
TEST(SimulatorTest, SweepEvictionKeepsPagesInRuns) {
  Workload w = ShortWorkload(300, 9, 400, 80, 2);
  SimOptions s = ExactOptions();
  s.watermark = 0.01;
  s.step_seconds = 0.01;
  BackendOptions lru = TinyOptions(16000, 2048);
  lru.block_size = 16;
  BackendOptions sweep = lru;
  sweep.eviction_order = EvictionOrder::kSweep;
  PKV_ASSIGN_OR_FAIL(PolicyResult a, RunOne(w, s, "paged", lru));
  PKV_ASSIGN_OR_FAIL(PolicyResult b, RunOne(w, s, "paged", sweep));
  std::printf("run tokens: LRU %.1f, sweep %.1f; prefix hit rate: LRU %.4f, sweep %.4f\n",
              a.run_tokens_mean, b.run_tokens_mean, a.prefix_hit_rate, b.prefix_hit_rate);
  EXPECT_EQ(a.completed, 300);
  EXPECT_EQ(b.completed, 300);
  EXPECT_GT(a.prefix_hit_rate, 0.0);
  EXPECT_GT(b.prefix_hit_rate, 0.0);
  EXPECT_GT(b.run_tokens_mean, 2 * a.run_tokens_mean);
  EXPECT_GT(b.prefix_hit_rate, 0.95 * a.prefix_hit_rate) << "chances keep the popular prefixes";
}

TEST(SimulatorTest, NoSharingCostsMemory) {
  Workload w = SyntheticWorkload(60, 8);
  SimOptions s = ExactOptions();
  s.beam_width = 4;
  s.step_seconds = 0.01;
  s.check_invariants = false;  // A large pool: recounting it every step would dominate.
  BackendOptions shared = TinyOptions(1 << 17, 8192);
  BackendOptions copied = shared;
  copied.sharing = false;
  PKV_ASSIGN_OR_FAIL(PolicyResult a, RunOne(w, s, "paged", shared));
  PKV_ASSIGN_OR_FAIL(PolicyResult b, RunOne(w, s, "paged", copied));
  EXPECT_LT(a.mean_memory_bytes, 0.5 * b.mean_memory_bytes);
  EXPECT_EQ(b.sharing_saved_fraction, 0.0);
  EXPECT_GT(b.copied_tokens, 0);
}

}  // namespace
}  // namespace pagedkv::sim

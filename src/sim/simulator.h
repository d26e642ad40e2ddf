// The continuous-batching scheduler of pagedkv-sim, run once per KV-cache policy.
#ifndef PAGEDKV_SIM_SIMULATOR_H_
#define PAGEDKV_SIM_SIMULATOR_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "src/sim/backends.h"
#include "src/sim/workload.h"

namespace pagedkv::sim {

struct SimOptions {
  double time_scale = 1.0;      // Arrivals happen time_scale times faster.
  double step_seconds = 0.03;   // Simulated time of one decode step.
  double watermark = 0.01;      // Budget fraction kept free when admitting.
  int32_t beam_width = 0;       // > 0: overrides every request's beam width.
  int32_t samples = 0;          // > 0: overrides every request's parallel samples.
  int64_t shared_prefix = 0;    // > 0: every prompt opens with this many common tokens.
  int32_t sample_every = 10;    // Steps between samples of utilization and waste.
  bool check_invariants = false;  // Backend invariants after every step (tests).
  uint64_t seed = 1;
  // Called now and then with the fraction of requests finished, for a progress bar.
  std::function<void(double)> progress;
};

struct PolicyResult {
  std::string policy;
  double utilization_mean = 0;        // Time-averaged tokens stored / slots reserved.
  int64_t peak_sequences = 0;
  double mean_sequences = 0;
  int64_t completed = 0;
  int64_t rejected = 0;               // Longer than max_seq_len, or larger than the budget.
  int64_t preemptions = 0;
  double tail_waste_tokens_mean = 0;
  double shared_blocks_saved_mean = 0;
  double sharing_saved_fraction = 0;  // 1 - blocks used / blocks private copies would need.
  double prefix_hit_rate = 0;         // Prompt tokens from cache / prompt tokens, first admissions.
  // Token slots per stretch of adjacent K/V that decode streams (Usage::runs), over the samples:
  // paged, runs of consecutive block ids; contiguous, whole sequences.
  double run_tokens_mean = 0;
  double tokens_per_step = 0;
  double manager_ns_per_step = 0;
  double attention_ns_per_step = 0;   // --materialize: decode attention over every layer.
  double wall_seconds = 0;
  int64_t steps = 0;
  double mean_memory_bytes = 0;
  double peak_memory_bytes = 0;
  int64_t copied_tokens = 0;
  // Over time, one point per sample: seconds, KV bytes in use, live tokens.
  std::vector<double> series_seconds, series_memory_bytes, series_live_tokens;
};

// Replays `workload` against `backend` (bytes_per_token converts slots to bytes). Returns
// kInternal if an invariant breaks (with check_invariants) or a block is left at the end.
absl::StatusOr<PolicyResult> Simulate(const Workload& workload, const SimOptions& options,
                                      int64_t max_seq_len, int64_t budget_tokens,
                                      int64_t bytes_per_token, Backend& backend);

}  // namespace pagedkv::sim

#endif  // PAGEDKV_SIM_SIMULATOR_H_

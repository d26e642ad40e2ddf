// pagedkv-sim: replays a serving workload through the real PagedKvCache and, under the same KV
// budget, through contiguous caches, and reports what paging buys.
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "src/sim/backends.h"
#include "src/sim/presets.h"
#include "src/sim/report.h"
#include "src/sim/simulator.h"
#include "src/sim/workload.h"

ABSL_FLAG(std::string, trace, "",
          "Workload trace: an Azure LLM inference CSV (TIMESTAMP,ContextTokens,GeneratedTokens) "
          "or a Mooncake .jsonl; empty runs the built-in synthetic workload");
ABSL_FLAG(int64_t, requests, 3000, "Requests of the built-in synthetic workload");
ABSL_FLAG(double, time_scale, 1.0, "Replay arrivals this many times faster");
ABSL_FLAG(std::string, model, "llama-3-8b",
          "Model preset: llama-3-8b, llama-3-70b, mistral-7b or tiny (sets bytes per token)");
ABSL_FLAG(std::string, kv_budget, "16GiB",
          "KV memory for every policy: bytes (16GiB, 512MB) or tokens (3M-tokens)");
ABSL_FLAG(int32_t, block_size, 16, "Tokens per page of the paged cache");
ABSL_FLAG(int64_t, max_seq_len, 0,
          "Longest sequence; contiguous_max reserves this much per sequence. 0: the workload's "
          "longest request rounded up to a power of two, capped by the model's context");
ABSL_FLAG(int32_t, beam_width, 0, "Beam search with this many beams for every request (0: as "
                                  "the workload says)");
ABSL_FLAG(int32_t, samples, 0, "Parallel sampling of this many outputs per request (0: as the "
                               "workload says)");
ABSL_FLAG(int64_t, shared_prefix, 0, "Give every prompt a common prefix of this many tokens");
ABSL_FLAG(bool, no_sharing, false,
          "Paged policy without sharing: forks copy and the prefix cache is off");
ABSL_FLAG(std::string, eviction_order, "lru",
          "Which cached block the paged cache reuses when none is free: lru (exactly the least "
          "recently used) or sweep (a cursor over block ids that passes a block once for each "
          "time it was released, up to 3, so pages stay in runs)");
ABSL_FLAG(bool, materialize, false,
          "Give the paged cache real K/V storage and write every token's K/V (tiny model sizes)");
ABSL_FLAG(double, step_ms, 30.0, "Simulated time of one decode step, in milliseconds");
ABSL_FLAG(double, watermark, 0.01, "Fraction of the budget kept free when admitting");
ABSL_FLAG(int32_t, sample_every, 10, "Steps between samples of utilization, waste and sharing");
ABSL_FLAG(uint64_t, seed, 1, "Seed of the synthetic workload, token ids and beam search");
ABSL_FLAG(std::string, policies, "paged,contiguous_max,contiguous_doubling",
          "Comma-separated policies to run");
ABSL_FLAG(std::string, json, "", "Write results as JSON to this file");
ABSL_FLAG(std::string, svg, "", "Write a plot of memory and live tokens over time to this file");
ABSL_FLAG(bool, check_invariants, false, "Check the cache's invariants after every step (slow)");
ABSL_FLAG(bool, progress, true, "Show a progress bar on stderr when it is a terminal");

namespace pagedkv::sim {
namespace {

// Accepts --kv-budget as well as --kv_budget, and --no-sharing.
std::vector<char*> DashesToUnderscores(int argc, char** argv, std::vector<std::string>& storage) {
  storage.assign(argv, argv + argc);
  for (size_t i = 1; i < storage.size(); ++i) {
    std::string& arg = storage[i];
    if (arg == "--") break;
    if (arg.rfind("--", 0) != 0) continue;
    const size_t end = std::min(arg.find('='), arg.size());
    std::replace(arg.begin() + 2, arg.begin() + static_cast<std::ptrdiff_t>(end), '-', '_');
  }
  std::vector<char*> out;
  for (std::string& s : storage) out.push_back(s.data());
  return out;
}

int Fail(const absl::Status& status, int code) {
  std::fprintf(stderr, "pagedkv-sim: %s\n", std::string(status.message()).c_str());
  return code;
}

absl::Status WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  out.close();
  if (!out) return absl::UnavailableError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Replays an LLM serving workload through pagedkv's paged KV cache and through contiguous "
      "caches under the same KV budget.\nUsage: pagedkv-sim [--trace FILE] [--model M] "
      "[--kv-budget SIZE] [--beam-width N] [--json FILE] [--svg FILE] ...\nFlags may be "
      "spelled with dashes or underscores.");
  std::vector<std::string> storage;
  std::vector<char*> args = DashesToUnderscores(argc, argv, storage);
  absl::ParseCommandLine(static_cast<int>(args.size()), args.data());

  absl::StatusOr<ModelPreset> model = FindPreset(absl::GetFlag(FLAGS_model));
  if (!model.ok()) return Fail(model.status(), 2);
  absl::StatusOr<int64_t> budget = ParseBudgetTokens(absl::GetFlag(FLAGS_kv_budget), *model);
  if (!budget.ok()) return Fail(budget.status(), 2);
  const int32_t block_size = absl::GetFlag(FLAGS_block_size);
  if (block_size < 1) {
    return Fail(absl::InvalidArgumentError(absl::StrCat("--block-size ", block_size,
                                                        " must be at least 1")), 2);
  }
  if (*budget < block_size) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(
                    "--kv-budget ", absl::GetFlag(FLAGS_kv_budget), " holds ", *budget,
                    " tokens, less than one block of ", block_size)), 2);
  }
  const bool materialize = absl::GetFlag(FLAGS_materialize);
  if (materialize && *budget * BytesPerToken(*model) > (int64_t{4} << 30)) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(
                    "--materialize allocates the K/V for real: ", *budget, " tokens of ",
                    model->name, " need more than 4 GiB; use --model tiny or a smaller budget")),
                2);
  }

  Workload workload;
  if (const std::string trace = absl::GetFlag(FLAGS_trace); !trace.empty()) {
    absl::StatusOr<Workload> read = ReadTrace(trace);
    if (!read.ok()) return Fail(read.status(), 2);
    workload = *std::move(read);
  } else {
    if (absl::GetFlag(FLAGS_requests) < 1) {
      return Fail(absl::InvalidArgumentError("--requests must be at least 1"), 2);
    }
    workload = SyntheticWorkload(absl::GetFlag(FLAGS_requests), absl::GetFlag(FLAGS_seed));
  }

  int64_t max_seq_len = absl::GetFlag(FLAGS_max_seq_len);
  if (max_seq_len <= 0) {
    int64_t longest = 1;
    for (const Request& r : workload.requests) {
      longest = std::max(longest, r.prompt_tokens + r.output_tokens);
    }
    max_seq_len = 16;
    while (max_seq_len < longest) max_seq_len *= 2;
    max_seq_len = std::min(max_seq_len, model->context);
  }

  SimOptions options;
  options.time_scale = absl::GetFlag(FLAGS_time_scale);
  options.step_seconds = absl::GetFlag(FLAGS_step_ms) / 1000.0;
  options.watermark = absl::GetFlag(FLAGS_watermark);
  options.beam_width = absl::GetFlag(FLAGS_beam_width);
  options.samples = absl::GetFlag(FLAGS_samples);
  options.shared_prefix = absl::GetFlag(FLAGS_shared_prefix);
  options.sample_every = absl::GetFlag(FLAGS_sample_every);
  options.check_invariants = absl::GetFlag(FLAGS_check_invariants);
  options.seed = absl::GetFlag(FLAGS_seed);
  if (options.watermark < 0 || options.watermark >= 1) {
    return Fail(absl::InvalidArgumentError("--watermark must be in [0, 1)"), 2);
  }
  const bool show_progress = absl::GetFlag(FLAGS_progress) && isatty(STDERR_FILENO);

  BackendOptions backend_options;
  backend_options.model = *model;
  backend_options.budget_tokens = *budget;
  backend_options.block_size = block_size;
  backend_options.max_seq_len = max_seq_len;
  backend_options.sharing = !absl::GetFlag(FLAGS_no_sharing);
  backend_options.materialize = materialize;
  const std::string eviction_order = absl::GetFlag(FLAGS_eviction_order);
  if (eviction_order == "lru") {
    backend_options.eviction_order = EvictionOrder::kLru;
  } else if (eviction_order == "sweep") {
    backend_options.eviction_order = EvictionOrder::kSweep;
  } else {
    return Fail(absl::InvalidArgumentError(absl::StrCat(
                    "--eviction_order must be lru or sweep, not \"", eviction_order, "\"")),
                2);
  }

  RunHeader header{workload.name, model->name, static_cast<int64_t>(workload.requests.size()),
                   *budget, BytesPerToken(*model), block_size, max_seq_len};
  std::vector<PolicyResult> results;
  for (absl::string_view policy : absl::StrSplit(absl::GetFlag(FLAGS_policies), ',')) {
    std::unique_ptr<Backend> backend;
    if (policy == "paged") {
      absl::StatusOr<std::unique_ptr<Backend>> paged = MakePagedBackend(backend_options);
      if (!paged.ok()) return Fail(paged.status(), 2);
      backend = *std::move(paged);
    } else if (policy == "contiguous_max") {
      backend = MakeContiguousMaxBackend(backend_options);
    } else if (policy == "contiguous_doubling") {
      backend = MakeContiguousDoublingBackend(backend_options);
    } else {
      return Fail(absl::InvalidArgumentError(absl::StrCat(
                      "unknown policy '", policy,
                      "' in --policies; choose paged, contiguous_max, contiguous_doubling")),
                  2);
    }
    const std::string label(policy);
    if (show_progress) {
      options.progress = [&label](double done) {
        const int width = 40;
        const int filled = static_cast<int>(done * width);
        std::fprintf(stderr, "\r%-20s [%s%s] %3d%%", label.c_str(), std::string(filled, '#').c_str(),
                     std::string(width - filled, '.').c_str(), static_cast<int>(done * 100));
        std::fflush(stderr);
      };
    }
    absl::StatusOr<PolicyResult> result =
        Simulate(workload, options, max_seq_len, *budget, BytesPerToken(*model), *backend);
    if (show_progress) std::fprintf(stderr, "\r%80s\r", "");
    if (!result.ok()) return Fail(result.status(), 1);
    results.push_back(*std::move(result));
  }

  std::fputs(FormatTable(header, results).c_str(), stdout);
  if (const std::string path = absl::GetFlag(FLAGS_json); !path.empty()) {
    if (absl::Status s = WriteFile(path, FormatJson(header, results)); !s.ok()) return Fail(s, 1);
  }
  if (const std::string path = absl::GetFlag(FLAGS_svg); !path.empty()) {
    if (absl::Status s = WriteFile(path, FormatSvg(header, results)); !s.ok()) return Fail(s, 1);
  }
  return 0;
}

}  // namespace
}  // namespace pagedkv::sim

int main(int argc, char** argv) { return pagedkv::sim::Main(argc, argv); }

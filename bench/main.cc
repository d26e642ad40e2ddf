// pagedkv_bench's main: Google Benchmark's, with GoalsReporter around the display reporter, so
// every run ends with the goal ratios of the benchmarks it ran (on stderr).
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <iostream>
#include <memory>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "bench/goals.h"
#include "benchmark/benchmark.h"
#include "hwy/targets.h"

namespace {

// The value of --<flag>=value among the arguments, or `otherwise`. Read before
// benchmark::Initialize, which takes its flags out of argv; the display reporter is chosen here
// as the library would (its own choice is not exposed).
std::string FlagValue(int argc, char** argv, absl::string_view flag, std::string otherwise) {
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (absl::ConsumePrefix(&arg, "--") && absl::ConsumePrefix(&arg, flag) &&
        absl::ConsumePrefix(&arg, "=")) {
      otherwise = std::string(arg);
    }
  }
  return otherwise;
}

std::unique_ptr<benchmark::BenchmarkReporter> DisplayReporter(int argc, char** argv) {
  const std::string format = FlagValue(argc, argv, "benchmark_format", "console");
  if (format == "json") return std::make_unique<benchmark::JSONReporter>();
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored \
    "-Wdeprecated-declarations"  // As the library's own --benchmark_format=csv.
  if (format == "csv") return std::make_unique<benchmark::CSVReporter>();
#pragma GCC diagnostic pop
  const std::string color = FlagValue(argc, argv, "benchmark_color", "auto");
  const bool colored = color == "auto" ? isatty(STDOUT_FILENO) != 0
                                       : color == "true" || color == "yes" || color == "1";
  const std::string tabular = FlagValue(argc, argv, "benchmark_counters_tabular", "false");
  int options =
      colored ? benchmark::ConsoleReporter::OO_Color : benchmark::ConsoleReporter::OO_None;
  if (tabular == "true" || tabular == "yes" || tabular == "1") {
    options |= benchmark::ConsoleReporter::OO_Tabular;
  }
  return std::make_unique<benchmark::ConsoleReporter>(
      static_cast<benchmark::ConsoleReporter::OutputOptions>(options));
}

// --pagedkv_target=NAME: limits Highway's dispatch to the target of that name (as
// hwy::TargetName spells it: AVX3_DL, AVX3, AVX2, SSE4, ...; any case), of those this CPU runs and
// the binary holds, so that the kernels a narrower CPU would run are measured on this one (the
// streaming-read and FMA baselines run on it too). Taken out of argv, as benchmark::Initialize
// would reject it. Returns false, having said why, for a name not among them.
bool LimitTargets(int* argc, char** argv) {
  constexpr absl::string_view kFlag = "--pagedkv_target=";
  std::string wanted;
  int kept = 1;
  for (int i = 1; i < *argc; ++i) {
    absl::string_view arg = argv[i];
    if (absl::ConsumePrefix(&arg, kFlag)) {
      wanted = absl::AsciiStrToUpper(arg);
    } else {
      argv[kept++] = argv[i];
    }
  }
  *argc = kept;
  if (wanted.empty()) return true;
  std::string available;
  for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
    if (hwy::TargetName(target) == wanted) {
      hwy::SetSupportedTargetsForTest(target);
      return true;
    }
    available += std::string(available.empty() ? "" : ", ") + hwy::TargetName(target);
  }
  std::cerr << "pagedkv_bench: --pagedkv_target=" << wanted
            << " is not a target this CPU runs and this binary holds; those are: " << available
            << "\n";
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  if (!LimitTargets(&argc, argv)) return 1;
  // The best of the targets left is the one dispatched to; JSON output records it.
  benchmark::AddCustomContext("pagedkv_target",
                              hwy::TargetName(hwy::SupportedAndGeneratedTargets().front()));
  std::unique_ptr<benchmark::BenchmarkReporter> display = DisplayReporter(argc, argv);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  pagedkv::bench::GoalsReporter goals(std::move(display), &std::cerr);
  benchmark::RunSpecifiedBenchmarks(&goals);
  benchmark::Shutdown();
  return 0;
}

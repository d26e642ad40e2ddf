// The goals the issues set, computed from one run's results: a reporter that passes every run on
// to the chosen display reporter (console, JSON or CSV) and, at the end, prints to stderr each
// goal ratio whose benchmarks ran, with its two sides, the goal and whether it is met. Medians are
// used where there are repetitions. So the ratios the closing notes report come from the run
// itself, with no script, and a JSON run's stdout stays valid JSON.
#ifndef PAGEDKV_BENCH_GOALS_H_
#define PAGEDKV_BENCH_GOALS_H_

#include <map>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "benchmark/benchmark.h"

namespace pagedkv::bench {

class GoalsReporter : public benchmark::BenchmarkReporter {
 public:
  // `display` prints the runs as --benchmark_format asked; `summary` gets the goals.
  GoalsReporter(std::unique_ptr<benchmark::BenchmarkReporter> display, std::ostream* summary);

  bool ReportContext(const Context& context) override;
  void ReportRuns(const std::vector<Run>& runs) override;
  void Finalize() override;

 private:
  struct Result {
    double seconds = 0;  // Real time per iteration.
    std::map<std::string, double> counters;
    bool median = false;
  };
  // The result of "<function>/<args>" (as "BM_StreamRead/bytes:8388608/threads:1"), or null.
  const Result* Find(const std::string& name) const;
  void PrintGoals() const;

  std::unique_ptr<benchmark::BenchmarkReporter> display_;
  std::ostream* summary_;
  std::map<std::string, Result> results_;
};

}  // namespace pagedkv::bench

#endif  // PAGEDKV_BENCH_GOALS_H_

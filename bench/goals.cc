#include "bench/goals.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"

namespace pagedkv::bench {
namespace {

// The value of `key` in benchmark arguments "key:value/key:value", or "".
std::string Arg(const std::string& args, absl::string_view key) {
  for (absl::string_view part : absl::StrSplit(args, '/')) {
    if (absl::ConsumePrefix(&part, key) && absl::ConsumePrefix(&part, ":")) {
      return std::string(part);
    }
  }
  return "";
}

// The arguments of benchmark `name` when it is one of family `prefix` ("BM_X/"), else "".
std::string ArgsOf(absl::string_view name, absl::string_view prefix) {
  return absl::ConsumePrefix(&name, prefix) ? std::string(name) : "";
}

std::string Rate(double bytes_per_second) {
  return absl::StrFormat("%.2f GB/s", bytes_per_second / 1e9);
}

std::string Time(double seconds) {
  if (seconds < 1e-6) return absl::StrFormat("%.1f ns", seconds * 1e9);
  if (seconds < 1e-3) return absl::StrFormat("%.2f us", seconds * 1e6);
  return absl::StrFormat("%.2f ms", seconds * 1e3);
}

}  // namespace

GoalsReporter::GoalsReporter(std::unique_ptr<benchmark::BenchmarkReporter> display,
                             std::ostream* summary)
    : display_(std::move(display)), summary_(summary) {}

bool GoalsReporter::ReportContext(const Context& context) {
  return display_->ReportContext(context);
}

void GoalsReporter::ReportRuns(const std::vector<Run>& runs) {
  for (const Run& run : runs) {
    if (run.error_occurred) continue;
    const bool median = run.run_type == Run::RT_Aggregate;
    if (median && run.aggregate_name != "median") continue;
    std::string name = run.run_name.function_name;
    if (!run.run_name.args.empty()) absl::StrAppend(&name, "/", run.run_name.args);
    Result& r = results_[name];
    if (r.median && !median) continue;
    r.median = median;
    r.seconds = run.GetAdjustedRealTime() / benchmark::GetTimeUnitMultiplier(run.time_unit);
    r.counters.clear();
    for (const auto& [counter, value] : run.counters) r.counters[counter] = value.value;
  }
  display_->ReportRuns(runs);
}

void GoalsReporter::Finalize() {
  display_->Finalize();
  PrintGoals();
}

const GoalsReporter::Result* GoalsReporter::Find(const std::string& name) const {
  const auto it = results_.find(name);
  return it == results_.end() ? nullptr : &it->second;
}

void GoalsReporter::PrintGoals() const {
  std::string out;
  // One line: what is compared, its ratio, and the goal with whether it is met (if there is one).
  const auto line = [&out](const std::string& what, double ratio, const std::string& goal,
                           bool met) {
    // Three decimals for ratios, whole numbers for the large ones (fork).
    absl::StrAppendFormat(&out, ratio < 1000 ? "  %-84s %7.3f" : "  %-84s %7.0f", what, ratio);
    if (!goal.empty()) absl::StrAppend(&out, "  goal ", goal, met ? ": met" : ": not met");
    absl::StrAppend(&out, "\n");
  };
  const auto counter = [](const Result& r, const std::string& name) {
    const auto it = r.counters.find(name);
    return it == r.counters.end() ? 0.0 : it->second;
  };

  // The time of benchmark a over that of b.
  const auto time_ratio = [&](const std::string& what, const char* a, const char* b,
                              const std::string& goal, bool (*met)(double)) {
    const Result* x = Find(a);
    const Result* y = Find(b);
    if (x == nullptr || y == nullptr) return;
    const double r = x->seconds / y->seconds;
    line(absl::StrCat(what, ": ", Time(x->seconds), " / ", Time(y->seconds)), r, goal, met(r));
  };
  time_ratio("pool / mimalloc, one block", "BM_PoolAllocFree", "BM_MimallocAllocFree", "<= 0.5",
             [](double r) { return r <= 0.5; });
  time_ratio("contiguous clone / paged fork, 4,096 tokens", "BM_CloneContiguous/4096",
             "BM_ForkPaged/4096", ">= 10000", [](double r) { return r >= 1e4; });
  if (const Result* step = Find("BM_DecodeStep/1024"); step != nullptr) {
    const double ns = counter(*step, "ns_per_seq") * 1e9;
    line("decode step, 1,024 sequences: ns per sequence", ns, "<= 20", ns <= 20);
  }

  // Decode rows against the stream of their K/V bytes, with the same threads.
  for (const auto& [name, paged] : results_) {
    const std::string args = ArgsOf(name, "BM_DecodePaged/");
    if (args.empty()) continue;
    const std::string threads = Arg(args, "threads");
    const auto kv_bytes = static_cast<int64_t>(counter(paged, "kv_bytes"));
    const Result* stream =
        Find(absl::StrCat("BM_StreamRead/bytes:", kv_bytes, "/threads:", threads));
    const double paged_rate = counter(paged, "bytes_per_second");
    if (stream != nullptr) {
      const double stream_rate = counter(*stream, "bytes_per_second");
      const double r = paged_rate / stream_rate;
      line(absl::StrCat("decode paged ", args, ": ", Rate(paged_rate), " / stream ",
                        Rate(stream_rate)),
           r, ">= 0.90", r >= 0.9);
      // What decode's arithmetic in the row's dtype allows against that stream, from its rate
      // with K/V in L1 (no memory cost): min(1, arithmetic / stream) if every load overlapped the
      // arithmetic, arithmetic / (arithmetic + stream) if none did and their times added up.
      const Result* arithmetic = Find(absl::StrCat(
          "BM_DecodeArithmeticRead/bytes:32768/dtype:", Arg(args, "dtype"), "/threads:", threads));
      if (arithmetic != nullptr) {
        const double a = counter(*arithmetic, "bytes_per_second");
        line(absl::StrCat("  arithmetic alone (K/V in L1: ", Rate(a), "): if loads overlap it"),
             std::min(1.0, a / stream_rate), "", false);
        line("  arithmetic alone: if loads and arithmetic take turns", a / (a + stream_rate), "",
             false);
      }
    }
    if (const Result* contiguous = Find("BM_DecodeContiguous/" + args); contiguous != nullptr) {
      line(absl::StrCat("decode paged / contiguous time (separate rows) ", args),
           paged.seconds / contiguous->seconds, "", false);
    }
  }
  for (const auto& [name, both] : results_) {
    const std::string args = ArgsOf(name, "BM_DecodePagedOverContiguous/");
    if (args.empty()) continue;
    const double r = counter(both, "paged_over_contiguous");
    line(absl::StrCat("decode paged / contiguous time (calls alternated) ", args), r, "<= 1.03",
         r <= 1.03);
  }
  for (const auto& [name, both] : results_) {
    const std::string args = ArgsOf(name, "BM_DecodePagedOverStream/");
    if (args.empty()) continue;
    const double r = counter(both, "paged_over_stream");
    line(absl::StrCat("decode paged / stream bytes/s (calls alternated) ", args), r, ">= 0.90",
         r >= 0.9);
  }
  for (const auto& [name, step] : results_) {
    const std::string args = ArgsOf(name, "BM_DecodeModelStep/");
    if (args.empty()) continue;
    const Result* stream =
        Find(absl::StrCat("BM_StreamRead/bytes:268435456/threads:", Arg(args, "threads")));
    if (stream == nullptr) continue;
    const double r = counter(step, "bytes_per_second") / counter(*stream, "bytes_per_second");
    line(absl::StrCat("model step ", args, ": ", Rate(counter(step, "bytes_per_second")),
                      " / stream of 256 MiB ", Rate(counter(*stream, "bytes_per_second")),
                      " (separate rows)"),
         r, "", false);
  }
  for (const auto& [name, both] : results_) {
    const std::string args = ArgsOf(name, "BM_DecodeModelStepOverStream/");
    if (args.empty()) continue;
    const double r = counter(both, "step_over_stream");
    line(absl::StrCat("model step / stream of its bytes, bytes/s (calls alternated) ", args), r,
         ">= 0.90", r >= 0.9);
  }
  // The K/V rate of each GQA group over group 1's in the same dtype: how much of the one-query
  // rate a group keeps while doing its work for more queries per byte. No goal of its own.
  for (const auto& [name, gqa] : results_) {
    const std::string args = ArgsOf(name, "BM_DecodeGqa/");
    if (args.empty() || Arg(args, "group") == "1") continue;
    const Result* one = Find(absl::StrCat("BM_DecodeGqa/dtype:", Arg(args, "dtype"), "/group:1"));
    if (one == nullptr) continue;
    const double rate = counter(gqa, "bytes_per_second");
    const double rate1 = counter(*one, "bytes_per_second");
    line(absl::StrCat("decode GQA ", args, " / group 1: ", Rate(rate), " / ", Rate(rate1)),
         rate / rate1, "", false);
  }
  if (const Result* cap = Find("BM_DecodeSoftCap"); cap != nullptr) {
    line("decode with / without a logits soft-cap, Gemma 2 shape, time",
         counter(*cap, "capped_over_uncapped"), "", false);
  }
  for (const auto& [name, fetch] : results_) {
    const std::string args = ArgsOf(name, "BM_DecodePageFetch/");
    if (args.empty()) continue;
    line(absl::StrCat("decode PageFetch::kFar / kNear time ", args),
         counter(fetch, "far_over_near"), "", false);
  }
  // The arithmetic ceiling, for reading the decode ratios: no goal of its own.
  for (const auto& [name, arithmetic] : results_) {
    const std::string args = ArgsOf(name, "BM_DecodeArithmeticRead/");
    if (args.empty()) continue;
    const Result* stream = Find(absl::StrCat("BM_StreamRead/bytes:", Arg(args, "bytes"),
                                             "/threads:", Arg(args, "threads")));
    if (stream == nullptr) continue;
    line(absl::StrCat("decode's arithmetic alone ", args, ": ",
                      Rate(counter(arithmetic, "bytes_per_second")), " / stream ",
                      Rate(counter(*stream, "bytes_per_second"))),
         counter(arithmetic, "bytes_per_second") / counter(*stream, "bytes_per_second"), "", false);
  }
  for (const auto& [name, extend] : results_) {
    const std::string args = ArgsOf(name, "BM_ExtendPaged/");
    if (args.empty()) continue;
    const Result* peak = Find("BM_FmaPeak/threads:" + Arg(args, "threads"));
    if (peak == nullptr) continue;
    const double flops = counter(extend, "flop_per_second");
    const double r = flops / counter(*peak, "flop_per_second");
    line(absl::StrFormat("extend %s: %.1f / FMA peak %.1f GFLOP/s", args, flops / 1e9,
                         counter(*peak, "flop_per_second") / 1e9),
         r, ">= 0.5", r >= 0.5);
  }
  if (out.empty()) return;
  bool medians = false;
  for (const auto& [name, r] : results_) medians = medians || r.median;
  *summary_ << "Goals, from this run" << (medians ? " (medians of the repetitions)" : "") << ":\n"
            << out << std::flush;
}

}  // namespace pagedkv::bench

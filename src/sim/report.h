// pagedkv-sim output: a table for people, JSON for programs, an SVG plot for both.
#ifndef PAGEDKV_SIM_REPORT_H_
#define PAGEDKV_SIM_REPORT_H_

#include <string>
#include <vector>

#include "src/sim/simulator.h"

namespace pagedkv::sim {

struct RunHeader {
  std::string workload;
  std::string model;
  int64_t requests = 0;
  int64_t budget_tokens = 0;
  int64_t bytes_per_token = 0;
  int32_t block_size = 0;
  int64_t max_seq_len = 0;
};

std::string FormatTable(const RunHeader& header, const std::vector<PolicyResult>& results);
// {"run": {...}, "paged": {...}, "contiguous_max": {...}, "contiguous_doubling": {...}}
std::string FormatJson(const RunHeader& header, const std::vector<PolicyResult>& results);
// KV memory in use and live tokens over time, one line per policy.
std::string FormatSvg(const RunHeader& header, const std::vector<PolicyResult>& results);

}  // namespace pagedkv::sim

#endif  // PAGEDKV_SIM_REPORT_H_

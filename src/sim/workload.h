// Requests for pagedkv-sim: the built-in synthetic workload and the trace readers.
#ifndef PAGEDKV_SIM_WORKLOAD_H_
#define PAGEDKV_SIM_WORKLOAD_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace pagedkv::sim {

struct Request {
  double arrival_seconds = 0.0;
  int64_t prompt_tokens = 0;
  int64_t output_tokens = 0;
  int32_t beam_width = 1;   // > 1: beam search with this many beams.
  int32_t samples = 1;      // > 1: parallel sampling of this many independent outputs.
  // Where the prompt's token ids come from. A prompt is the concatenation of `prefix_blocks`
  // (Mooncake hash ids, each a run of kPrefixBlockTokens deterministic ids; identical ids give
  // identical tokens), then `shared_prefix` tokens of system prompt `system_prompt` (-1: none),
  // then ids unique to the request.
  std::vector<int64_t> prefix_blocks;
  int32_t system_prompt = -1;
  int64_t shared_prefix = 0;
};

inline constexpr int64_t kPrefixBlockTokens = 512;

struct Workload {
  std::string name;
  std::vector<Request> requests;  // In arrival order.
};

// The default: seeded Poisson arrivals with log-normal prompt and output lengths, a quarter of
// the requests opening with one of four shared system prompts, and one in ten doing beam search.
Workload SyntheticWorkload(int64_t num_requests, uint64_t seed);

// Azure LLM inference trace CSV: header `TIMESTAMP,ContextTokens,GeneratedTokens`, timestamps
// like `2023-11-16 18:15:46.6805900`. Arrivals are relative to the first request.
absl::StatusOr<Workload> ReadAzureCsv(const std::string& path);
// Mooncake trace JSONL: one object a line with `timestamp` (ms), `input_length`,
// `output_length` and `hash_ids`.
absl::StatusOr<Workload> ReadMooncakeJsonl(const std::string& path);
// Either reader, by extension (.jsonl: Mooncake, otherwise Azure CSV).
absl::StatusOr<Workload> ReadTrace(const std::string& path);

// Parsers of one line, for tests and fuzzing; `where` names file and line in errors.
absl::StatusOr<Request> ParseAzureLine(absl::string_view line, absl::string_view where,
                                       double* absolute_seconds);
absl::StatusOr<Request> ParseMooncakeLine(absl::string_view line, absl::string_view where);

// The token ids of r's prompt, deterministic in (r, request_index, seed).
std::vector<int32_t> PromptTokens(const Request& r, int64_t request_index, uint64_t seed);

}  // namespace pagedkv::sim

#endif  // PAGEDKV_SIM_WORKLOAD_H_

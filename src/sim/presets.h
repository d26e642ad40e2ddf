// Model presets and size parsing for pagedkv-sim.
#ifndef PAGEDKV_SIM_PRESETS_H_
#define PAGEDKV_SIM_PRESETS_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "pagedkv/config.h"

namespace pagedkv::sim {

struct ModelPreset {
  std::string name;
  int32_t num_layers;
  int32_t num_kv_heads;
  int32_t head_dim;
  DType dtype;
  int64_t context;  // The model's longest sequence.
};

// llama-3-8b, llama-3-70b (Llama 3.1 shapes, 128k context), mistral-7b, tiny (for --materialize).
absl::StatusOr<ModelPreset> FindPreset(absl::string_view name);
int64_t BytesPerToken(const ModelPreset& m);

// A KV budget as bytes ("16GiB", "512MB", "1e9") or tokens ("3M-tokens", "131072-tokens"),
// returned in tokens of model m. kInvalidArgument naming the text otherwise.
absl::StatusOr<int64_t> ParseBudgetTokens(absl::string_view text, const ModelPreset& m);

}  // namespace pagedkv::sim

#endif  // PAGEDKV_SIM_PRESETS_H_

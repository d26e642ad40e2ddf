#include "src/sim/presets.h"

#include <cmath>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/types/span.h"

namespace pagedkv::sim {

absl::StatusOr<ModelPreset> FindPreset(absl::string_view name) {
  static const ModelPreset kPresets[] = {
      {"llama-3-8b", 32, 8, 128, DType::kBF16, 131072},
      {"llama-3-70b", 80, 8, 128, DType::kBF16, 131072},
      {"mistral-7b", 32, 8, 128, DType::kBF16, 32768},
      {"tiny", 2, 2, 64, DType::kF32, 4096},
  };
  for (const ModelPreset& m : kPresets) {
    if (m.name == name) return m;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown --model '", name, "'; choose llama-3-8b, llama-3-70b, mistral-7b or tiny"));
}

int64_t BytesPerToken(const ModelPreset& m) {
  return 2 * int64_t{m.num_layers} * m.num_kv_heads * m.head_dim * DTypeSize(m.dtype);
}

absl::StatusOr<int64_t> ParseBudgetTokens(absl::string_view text, const ModelPreset& m) {
  std::string s = absl::AsciiStrToLower(absl::StripAsciiWhitespace(text));
  absl::string_view rest = s;
  const bool tokens = absl::ConsumeSuffix(&rest, "-tokens") || absl::ConsumeSuffix(&rest, "tokens");
  struct Unit {
    const char* suffix;
    double factor;
  };
  // Longest suffixes first, so "gib" is not read as "b".
  static const Unit kTokenUnits[] = {{"k", 1e3}, {"m", 1e6}, {"g", 1e9}};
  static const Unit kByteUnits[] = {{"kib", 1024.0}, {"mib", 1048576.0}, {"gib", 1073741824.0},
                                    {"tib", 1099511627776.0}, {"kb", 1e3}, {"mb", 1e6},
                                    {"gb", 1e9}, {"tb", 1e12}, {"b", 1.0}};
  double factor = 1.0;
  for (const Unit& u : tokens ? absl::MakeConstSpan(kTokenUnits) : absl::MakeConstSpan(kByteUnits)) {
    if (absl::ConsumeSuffix(&rest, u.suffix)) {
      factor = u.factor;
      break;
    }
  }
  double value;
  if (!absl::SimpleAtod(rest, &value) || !(value > 0) || !std::isfinite(value)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--kv-budget '", text, "' is not a size: give bytes like 16GiB or tokens like 3M-tokens"));
  }
  const double amount = value * factor;
  const double budget_tokens = tokens ? amount : amount / static_cast<double>(BytesPerToken(m));
  if (budget_tokens > 9e15) return absl::InvalidArgumentError(absl::StrCat("--kv-budget '", text, "' is too large"));
  return static_cast<int64_t>(budget_tokens);
}

}  // namespace pagedkv::sim

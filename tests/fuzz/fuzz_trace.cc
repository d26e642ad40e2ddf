// The trace parsers on arbitrary lines: an error or a request with sane fields, never a crash.
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz_common.h"
#include "src/sim/workload.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace pagedkv;
  const std::string line(reinterpret_cast<const char*>(data), size);
  double seconds = 0;
  absl::StatusOr<sim::Request> azure = sim::ParseAzureLine(line, "fuzz:1", &seconds);
  if (azure.ok() && (azure->prompt_tokens < 1 || azure->output_tokens < 1)) {
    fuzz::Die("Azure line parsed into an empty request");
  }
  if (!azure.ok() && azure.status().message().find("fuzz:1") == std::string::npos) {
    fuzz::Die("Azure error does not name the line:", azure.status());
  }
  absl::StatusOr<sim::Request> mooncake = sim::ParseMooncakeLine(line, "fuzz:2");
  if (mooncake.ok()) {
    if (mooncake->prompt_tokens < 1 || mooncake->output_tokens < 1 ||
        static_cast<int64_t>(mooncake->prefix_blocks.size()) * sim::kPrefixBlockTokens <
            mooncake->prompt_tokens) {
      fuzz::Die("Mooncake line parsed into an inconsistent request");
    }
  } else if (mooncake.status().message().find("fuzz:2") == std::string::npos) {
    fuzz::Die("Mooncake error does not name the line:", mooncake.status());
  }
  return 0;
}

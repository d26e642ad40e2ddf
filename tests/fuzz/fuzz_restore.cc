// Restore() of arbitrary bytes: it must refuse cleanly or restore a sequence that serializes back
// to the very same bytes, and the cache must keep its invariants either way.
//
// PAGEDKV_FUZZ_WRITE_SEEDS=DIR writes valid payloads into DIR to start a corpus.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "fuzz_common.h"

namespace pagedkv::fuzz {
namespace {

void WriteSeeds(const std::string& dir) {
  auto cache = *PagedKvCache::Create(FuzzConfig(false));
  for (int n : {0, 1, 5, 9}) {
    const SeqId id = cache->CreateSequence()->id;
    std::vector<int32_t> tokens(static_cast<size_t>(n), 7);
    const int64_t start = *cache->Reserve(id, tokens);
    std::vector<float> kv(static_cast<size_t>(n * 2 * 8), 0.5f);
    for (int32_t layer = 0; layer < 2; ++layer) cache->WriteKv(id, layer, start, kv, kv).IgnoreError();
    if (n == 9) cache->Reserve(id, 1).IgnoreError();  // Unknown token: a payload without ids.
    std::ofstream(dir + "/seed_" + std::to_string(n)) << *cache->Serialize(id);
  }
}

}  // namespace
}  // namespace pagedkv::fuzz

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* dir = std::getenv("PAGEDKV_FUZZ_WRITE_SEEDS")) pagedkv::fuzz::WriteSeeds(dir);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace pagedkv;
  static std::unique_ptr<PagedKvCache> cache = *PagedKvCache::Create(fuzz::FuzzConfig(true));
  const std::string payload(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<SeqId> restored = cache->Restore(payload);
  fuzz::Check(*cache);
  if (!restored.ok()) {
    const absl::StatusCode code = restored.status().code();
    if (code != absl::StatusCode::kInvalidArgument && code != absl::StatusCode::kResourceExhausted) {
      fuzz::Die("unexpected error code:", restored.status());
    }
    return 0;
  }
  absl::StatusOr<std::string> again = cache->Serialize(*restored);
  if (!again.ok()) fuzz::Die("restored sequence does not serialize:", again.status());
  if (*again != payload) fuzz::Die("restore then serialize changed the payload");
  if (!cache->Free(*restored).ok()) fuzz::Die("cannot free the restored sequence");
  fuzz::Check(*cache);
  return 0;
}

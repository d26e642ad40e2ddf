// Serialize() and Restore(): one sequence as a versioned, checksummed byte payload.
//
// Payload v1, little-endian:
//   char[8] magic "PAGEDKV\0" | u32 version | u32 num_layers | u32 num_kv_heads | u32 head_dim |
//   u32 block_size | u8 dtype | u8 has_tokens | u16 zero | i64 length | u64 salt |
//   i32 tokens[length] (when has_tokens) |
//   for each layer: K then V, [length][num_kv_heads][head_dim] of dtype |
//   u64 checksum of every byte before it.
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "pagedkv/paged_kv_cache.h"

namespace pagedkv {
namespace {

static_assert(std::endian::native == std::endian::little, "payloads are little-endian");

constexpr char kMagic[8] = {'P', 'A', 'G', 'E', 'D', 'K', 'V', '\0'};
constexpr uint32_t kVersion = 1;
constexpr int64_t kHeaderBytes = 8 + 5 * 4 + 4 + 8 + 8;
constexpr int64_t kChecksumBytes = 8;

// FNV-1a over 8-byte words, then the tail bytes: detects corruption, not tampering.
uint64_t Checksum(const char* data, size_t n) {
  constexpr uint64_t kPrime = 0x100000001b3ull;
  uint64_t h = 0xcbf29ce484222325ull ^ n;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t word;
    std::memcpy(&word, data + i, 8);
    h = (h ^ word) * kPrime;
    h ^= h >> 29;
  }
  for (; i < n; ++i) h = (h ^ static_cast<unsigned char>(data[i])) * kPrime;
  return h;
}

template <typename T>
void Put(std::string& out, T value) {
  out.append(reinterpret_cast<const char*>(&value), sizeof(T));
}

template <typename T>
T Take(absl::string_view payload, int64_t& offset) {
  T value;
  std::memcpy(&value, payload.data() + offset, sizeof(T));
  offset += static_cast<int64_t>(sizeof(T));
  return value;
}

absl::Status Mismatch(absl::string_view field, int64_t payload_value, int64_t cache_value) {
  return absl::InvalidArgumentError(absl::StrCat("payload ", field, " is ", payload_value,
                                                 " but this cache has ", cache_value));
}

}  // namespace

absl::StatusOr<std::string> PagedKvCache::Serialize(SeqId seq) const {
  std::shared_lock lock(mu_);
  if (absl::Status s = CheckStorage("Serialize"); !s.ok()) return s;
  absl::StatusOr<const Sequence*> found = Get(seq);
  if (!found.ok()) return found.status();
  const Sequence& s = **found;
  const CacheConfig& config = pool_->config();
  const size_t row_bytes = static_cast<size_t>(config.head_dim) * DTypeSize(config.dtype);

  std::string out;
  out.reserve(static_cast<size_t>(kHeaderBytes + s.length * (4 + config.BytesPerToken()) +
                                  kChecksumBytes));
  out.append(kMagic, sizeof(kMagic));
  Put<uint32_t>(out, kVersion);
  Put<uint32_t>(out, static_cast<uint32_t>(config.num_layers));
  Put<uint32_t>(out, static_cast<uint32_t>(config.num_kv_heads));
  Put<uint32_t>(out, static_cast<uint32_t>(config.head_dim));
  Put<uint32_t>(out, static_cast<uint32_t>(config.block_size));
  Put<uint8_t>(out, static_cast<uint8_t>(config.dtype));
  Put<uint8_t>(out, s.tokens_known ? 1 : 0);
  Put<uint16_t>(out, 0);
  Put<int64_t>(out, s.length);
  Put<uint64_t>(out, s.salt);
  if (s.tokens_known) {
    const std::vector<int32_t> tokens = *TokensLocked(seq);
    out.append(reinterpret_cast<const char*>(tokens.data()), tokens.size() * sizeof(int32_t));
  }
  for (int32_t layer = 0; layer < config.num_layers; ++layer) {
    for (bool is_value : {false, true}) {
      for (int64_t pos = 0; pos < s.length; ++pos) {
        for (int32_t h = 0; h < config.num_kv_heads; ++h) {
          out.append(reinterpret_cast<const char*>(Row(s, layer, is_value, pos, h)), row_bytes);
        }
      }
    }
  }
  Put<uint64_t>(out, Checksum(out.data(), out.size()));
  return out;
}

absl::StatusOr<SeqId> PagedKvCache::Restore(absl::string_view payload) {
  std::unique_lock lock(mu_);
  if (absl::Status s = CheckStorage("Restore"); !s.ok()) return s;
  const CacheConfig& config = pool_->config();
  const int64_t size = static_cast<int64_t>(payload.size());
  if (size < kHeaderBytes + kChecksumBytes) {
    return absl::InvalidArgumentError(absl::StrCat("payload of ", size,
                                                   " bytes is shorter than the ",
                                                   kHeaderBytes + kChecksumBytes,
                                                   "-byte minimum: truncated or not a payload"));
  }
  if (std::memcmp(payload.data(), kMagic, sizeof(kMagic)) != 0) {
    return absl::InvalidArgumentError("payload does not start with the pagedkv magic \"PAGEDKV\"");
  }
  int64_t offset = sizeof(kMagic);
  const uint32_t version = Take<uint32_t>(payload, offset);
  if (version != kVersion) {
    return absl::InvalidArgumentError(
        absl::StrCat("payload version ", version, " is not supported (this build reads ",
                     kVersion, ")"));
  }
  const uint32_t num_layers = Take<uint32_t>(payload, offset);
  const uint32_t num_kv_heads = Take<uint32_t>(payload, offset);
  const uint32_t head_dim = Take<uint32_t>(payload, offset);
  const uint32_t block_size = Take<uint32_t>(payload, offset);
  const uint8_t dtype = Take<uint8_t>(payload, offset);
  const uint8_t has_tokens = Take<uint8_t>(payload, offset);
  const uint16_t zero = Take<uint16_t>(payload, offset);
  const int64_t length = Take<int64_t>(payload, offset);
  const uint64_t salt = Take<uint64_t>(payload, offset);

  if (num_layers != static_cast<uint32_t>(config.num_layers)) {
    return Mismatch("num_layers", num_layers, config.num_layers);
  }
  if (num_kv_heads != static_cast<uint32_t>(config.num_kv_heads)) {
    return Mismatch("num_kv_heads", num_kv_heads, config.num_kv_heads);
  }
  if (head_dim != static_cast<uint32_t>(config.head_dim)) {
    return Mismatch("head_dim", head_dim, config.head_dim);
  }
  if (dtype != static_cast<uint8_t>(config.dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat("payload dtype ", dtype <= 2 ? DTypeName(static_cast<DType>(dtype)) : "?",
                     " (", dtype, ") but this cache stores ", DTypeName(config.dtype)));
  }
  if (block_size == 0) return absl::InvalidArgumentError("payload block_size is 0");
  if (has_tokens > 1 || zero != 0) {
    return absl::InvalidArgumentError(absl::StrCat("payload flags are corrupt (has_tokens ",
                                                   has_tokens, ", reserved ", zero, ")"));
  }
  if (length < 0 || length > config.max_seq_len) {
    return absl::InvalidArgumentError(absl::StrCat("payload length ", length,
                                                   " outside [0, max_seq_len ",
                                                   config.max_seq_len, "]"));
  }
  const int64_t token_bytes = has_tokens ? length * 4 : 0;
  const int64_t expected = kHeaderBytes + token_bytes + length * config.BytesPerToken() +
                           kChecksumBytes;
  if (size != expected) {
    return absl::InvalidArgumentError(absl::StrCat("payload is ", size, " bytes; its header (",
                                                   length, " tokens) implies ", expected));
  }
  int64_t checksum_offset = size - kChecksumBytes;
  const uint64_t stored = Take<uint64_t>(payload, checksum_offset);
  const uint64_t computed = Checksum(payload.data(), static_cast<size_t>(size - kChecksumBytes));
  if (stored != computed) {
    return absl::InvalidArgumentError(absl::StrCat("payload checksum mismatch (stored ", stored,
                                                   ", computed ", computed, "): corrupt"));
  }

  const int64_t blocks = (length + config.block_size - 1) / config.block_size;
  if (blocks > pool_->num_available()) {
    return NotEnoughBlocks(blocks, absl::StrCat("restoring a sequence of ", length, " tokens"));
  }
  // Nothing can fail from here on.
  const SeqId id = NewSlot();
  Sequence& s = *Find(id);
  s.salt = salt;
  std::vector<int32_t> tokens;
  if (has_tokens && length > 0) {
    tokens.resize(static_cast<size_t>(length));
    std::memcpy(tokens.data(), payload.data() + offset, static_cast<size_t>(token_bytes));
    offset += token_bytes;
  }
  s.planned_blocks = blocks;
  Sequence* const restored = &s;
  AllocateBlocks(absl::MakeConstSpan(&restored, 1), &batch_scratch_.fresh);
  absl::Span<const BlockId> fresh(batch_scratch_.fresh);
  CommitReserve(s, length, tokens, fresh);
  if (length > 0 && !has_tokens) s.tokens_known = false;
  const size_t row_bytes = static_cast<size_t>(config.head_dim) * DTypeSize(config.dtype);
  for (int32_t layer = 0; layer < config.num_layers; ++layer) {
    for (bool is_value : {false, true}) {
      for (int64_t pos = 0; pos < length; ++pos) {
        for (int32_t h = 0; h < config.num_kv_heads; ++h) {
          std::memcpy(Row(s, layer, is_value, pos, h), payload.data() + offset, row_bytes);
          offset += static_cast<int64_t>(row_bytes);
        }
      }
    }
  }
  return id;
}

}  // namespace pagedkv

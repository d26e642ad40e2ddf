#include "src/sim/workload.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"

namespace pagedkv::sim {
namespace {

uint64_t Mix(uint64_t x) {  // splitmix64
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

int32_t TokenId(uint64_t stream, int64_t i) {
  return static_cast<int32_t>(Mix(stream * 0x100000001b3ull + static_cast<uint64_t>(i)) % 128000);
}

absl::Status FieldError(absl::string_view where, absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(where, ": field ", field, ": ", what));
}

absl::StatusOr<int64_t> ParseCount(absl::string_view text, absl::string_view where,
                                   absl::string_view field) {
  int64_t value;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(text), &value)) {
    return FieldError(where, field, absl::StrCat("'", text, "' is not an integer"));
  }
  if (value < 0) return FieldError(where, field, absl::StrCat(value, " is negative"));
  return value;
}

template <typename ParseLine>
absl::Status ForEachLine(const std::string& path, ParseLine parse) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open trace ", path));
  std::string line;
  for (int64_t number = 1; std::getline(in, line); ++number) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (absl::StripAsciiWhitespace(line).empty()) continue;
    if (absl::Status s = parse(line, absl::StrCat(path, ":", number), number); !s.ok()) return s;
  }
  return absl::OkStatus();
}

// A read trace, checked to hold requests and sorted by arrival (stable: ties keep file order).
absl::StatusOr<Workload> InArrivalOrder(Workload w, const std::string& path) {
  if (w.requests.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": no requests"));
  std::stable_sort(w.requests.begin(), w.requests.end(), [](const Request& a, const Request& b) {
    return a.arrival_seconds < b.arrival_seconds;
  });
  return w;
}

}  // namespace

Workload SyntheticWorkload(int64_t num_requests, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::exponential_distribution<double> gap(8.0);              // 8 requests/s.
  std::lognormal_distribution<double> prompt(std::log(600.0), 0.9);
  std::lognormal_distribution<double> output(std::log(150.0), 0.8);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  constexpr int64_t kSystemPromptTokens[4] = {256, 512, 768, 1024};
  Workload w{"synthetic", {}};
  double t = 0.0;
  for (int64_t i = 0; i < num_requests; ++i) {
    t += gap(rng);
    Request r;
    r.arrival_seconds = t;
    r.prompt_tokens = std::clamp<int64_t>(std::llround(prompt(rng)), 8, 6000);
    r.output_tokens = std::clamp<int64_t>(std::llround(output(rng)), 1, 1500);
    if (u(rng) < 0.25) {
      r.system_prompt = static_cast<int32_t>(rng() % 4);
      r.shared_prefix = kSystemPromptTokens[r.system_prompt];
      r.prompt_tokens += r.shared_prefix;
    }
    if (u(rng) < 0.10) r.beam_width = 4;
    w.requests.push_back(std::move(r));
  }
  return w;
}

absl::StatusOr<Request> ParseAzureLine(absl::string_view line, absl::string_view where,
                                       double* absolute_seconds) {
  std::vector<absl::string_view> fields = absl::StrSplit(line, ',');
  if (fields.size() != 3) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": expected 3 fields TIMESTAMP,ContextTokens,GeneratedTokens, found ",
        fields.size()));
  }
  absl::Time time;
  std::string error;
  if (!absl::ParseTime("%Y-%m-%d %H:%M:%E*S", std::string(absl::StripAsciiWhitespace(fields[0])),
                       absl::UTCTimeZone(), &time, &error)) {
    return FieldError(where, "TIMESTAMP", absl::StrCat("'", fields[0], "': ", error));
  }
  Request r;
  *absolute_seconds = absl::ToDoubleSeconds(time - absl::UnixEpoch());
  absl::StatusOr<int64_t> context = ParseCount(fields[1], where, "ContextTokens");
  if (!context.ok()) return context.status();
  absl::StatusOr<int64_t> generated = ParseCount(fields[2], where, "GeneratedTokens");
  if (!generated.ok()) return generated.status();
  if (*context == 0) return FieldError(where, "ContextTokens", "0: a prompt needs a token");
  r.prompt_tokens = *context;
  r.output_tokens = std::max<int64_t>(*generated, 1);
  return r;
}

absl::StatusOr<Workload> ReadAzureCsv(const std::string& path) {
  Workload w{path, {}};
  double first = 0.0;
  absl::Status s = ForEachLine(path, [&](const std::string& line, const std::string& where,
                                         int64_t number) -> absl::Status {
    if (number == 1) {
      if (absl::StripAsciiWhitespace(line) != "TIMESTAMP,ContextTokens,GeneratedTokens") {
        return absl::InvalidArgumentError(absl::StrCat(
            where, ": header is '", line, "', want TIMESTAMP,ContextTokens,GeneratedTokens"));
      }
      return absl::OkStatus();
    }
    double seconds;
    absl::StatusOr<Request> r = ParseAzureLine(line, where, &seconds);
    if (!r.ok()) return r.status();
    if (w.requests.empty()) first = seconds;
    r->arrival_seconds = seconds - first;
    if (r->arrival_seconds < 0) {
      return FieldError(where, "TIMESTAMP", "earlier than the first request: not in order");
    }
    w.requests.push_back(*std::move(r));
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return InArrivalOrder(std::move(w), path);
}

namespace {

// A cursor over one JSON object of numbers and arrays of numbers: all the Mooncake format uses.
class JsonLine {
 public:
  JsonLine(absl::string_view text, absl::string_view where) : text_(text), where_(where) {}

  absl::Status Error(absl::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat(where_, ": column ", pos_ + 1, ": ", what));
  }
  void SkipSpace() {
    while (pos_ < text_.size() && std::isspace(static_cast<unsigned char>(text_[pos_]))) ++pos_;
  }
  bool Consume(char c) {
    SkipSpace();
    if (pos_ < text_.size() && text_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  absl::StatusOr<std::string> Key() {
    if (!Consume('"')) return Error("expected a quoted key");
    const size_t end = text_.find('"', pos_);
    if (end == absl::string_view::npos) return Error("unterminated key");
    std::string key(text_.substr(pos_, end - pos_));
    pos_ = end + 1;
    if (!Consume(':')) return Error(absl::StrCat("expected ':' after \"", key, "\""));
    return key;
  }
  absl::StatusOr<double> Number(absl::string_view field) {
    SkipSpace();
    const size_t start = pos_;
    while (pos_ < text_.size() && (std::isdigit(static_cast<unsigned char>(text_[pos_])) ||
                                   text_[pos_] == '-' || text_[pos_] == '+' ||
                                   text_[pos_] == '.' || text_[pos_] == 'e' || text_[pos_] == 'E')) {
      ++pos_;
    }
    double value;
    if (start == pos_ || !absl::SimpleAtod(text_.substr(start, pos_ - start), &value)) {
      return FieldError(where_, field, absl::StrCat("expected a number at column ", start + 1));
    }
    return value;
  }
  bool AtEnd() {
    SkipSpace();
    return pos_ == text_.size();
  }

 private:
  absl::string_view text_;
  absl::string_view where_;
  size_t pos_ = 0;
};

absl::StatusOr<int64_t> WholeCount(double value, absl::string_view where, absl::string_view field) {
  if (value < 0 || value != std::floor(value) || value > 1e12) {
    return FieldError(where, field, absl::StrCat(value, " is not a count"));
  }
  return static_cast<int64_t>(value);
}

}  // namespace

absl::StatusOr<Request> ParseMooncakeLine(absl::string_view line, absl::string_view where) {
  JsonLine json(line, where);
  if (!json.Consume('{')) return json.Error("expected '{'");
  Request r;
  bool seen_time = false, seen_input = false, seen_output = false, seen_ids = false;
  if (!json.Consume('}')) {
    do {
      absl::StatusOr<std::string> key = json.Key();
      if (!key.ok()) return key.status();
      if (*key == "hash_ids") {
        if (!json.Consume('[')) return FieldError(where, "hash_ids", "expected an array");
        if (!json.Consume(']')) {
          do {
            absl::StatusOr<double> id = json.Number("hash_ids");
            if (!id.ok()) return id.status();
            absl::StatusOr<int64_t> whole = WholeCount(*id, where, "hash_ids");
            if (!whole.ok()) return whole.status();
            r.prefix_blocks.push_back(*whole);
          } while (json.Consume(','));
          if (!json.Consume(']')) return FieldError(where, "hash_ids", "expected ',' or ']'");
        }
        seen_ids = true;
        continue;
      }
      absl::StatusOr<double> value = json.Number(*key);
      if (!value.ok()) return value.status();
      if (*key == "timestamp") {
        if (*value < 0) return FieldError(where, "timestamp", "negative");
        r.arrival_seconds = *value / 1000.0;
        seen_time = true;
      } else if (*key == "input_length" || *key == "output_length") {
        absl::StatusOr<int64_t> count = WholeCount(*value, where, *key);
        if (!count.ok()) return count.status();
        (*key == "input_length" ? r.prompt_tokens : r.output_tokens) = *count;
        (*key == "input_length" ? seen_input : seen_output) = true;
      }
    } while (json.Consume(','));
    if (!json.Consume('}')) return json.Error("expected ',' or '}'");
  }
  if (!json.AtEnd()) return json.Error("trailing characters after the object");
  if (!seen_time) return FieldError(where, "timestamp", "missing");
  if (!seen_input) return FieldError(where, "input_length", "missing");
  if (!seen_output) return FieldError(where, "output_length", "missing");
  if (!seen_ids) return FieldError(where, "hash_ids", "missing");
  if (r.prompt_tokens == 0) return FieldError(where, "input_length", "0: a prompt needs a token");
  if (static_cast<int64_t>(r.prefix_blocks.size()) * kPrefixBlockTokens < r.prompt_tokens) {
    return FieldError(where, "hash_ids",
                      absl::StrCat(r.prefix_blocks.size(), " blocks of ", kPrefixBlockTokens,
                                   " tokens cannot cover input_length ", r.prompt_tokens));
  }
  r.output_tokens = std::max<int64_t>(r.output_tokens, 1);
  return r;
}

absl::StatusOr<Workload> ReadMooncakeJsonl(const std::string& path) {
  Workload w{path, {}};
  absl::Status s = ForEachLine(path, [&](const std::string& line, const std::string& where,
                                         int64_t) -> absl::Status {
    absl::StatusOr<Request> r = ParseMooncakeLine(line, where);
    if (!r.ok()) return r.status();
    w.requests.push_back(*std::move(r));
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return InArrivalOrder(std::move(w), path);
}

absl::StatusOr<Workload> ReadTrace(const std::string& path) {
  if (absl::EndsWith(path, ".jsonl")) return ReadMooncakeJsonl(path);
  return ReadAzureCsv(path);
}

std::vector<int32_t> PromptTokens(const Request& r, int64_t request_index, uint64_t seed) {
  std::vector<int32_t> tokens;
  tokens.reserve(static_cast<size_t>(r.prompt_tokens));
  for (int64_t id : r.prefix_blocks) {
    for (int64_t i = 0; i < kPrefixBlockTokens && static_cast<int64_t>(tokens.size()) < r.prompt_tokens; ++i) {
      tokens.push_back(TokenId(Mix(static_cast<uint64_t>(id) ^ 0xb10c), i));
    }
  }
  for (int64_t i = 0; i < r.shared_prefix && static_cast<int64_t>(tokens.size()) < r.prompt_tokens; ++i) {
    tokens.push_back(TokenId(Mix(static_cast<uint64_t>(r.system_prompt) ^ 0x5959), i));
  }
  const uint64_t own = Mix(seed ^ Mix(static_cast<uint64_t>(request_index) + 0x7e57));
  for (int64_t i = 0; static_cast<int64_t>(tokens.size()) < r.prompt_tokens; ++i) {
    tokens.push_back(TokenId(own, i));
  }
  return tokens;
}

}  // namespace pagedkv::sim

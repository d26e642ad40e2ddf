// pagedkv-sim inputs: trace parsing errors, budgets, prompt token generation.
#include <cstdint>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "src/sim/presets.h"
#include "src/sim/workload.h"
#include "test_util.h"

namespace pagedkv::sim {
namespace {

void ExpectError(const absl::Status& s, absl::string_view needle) {
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find(needle), absl::string_view::npos) << s << "\nlacks: " << needle;
}

TEST(AzureTraceTest, ParsesALine) {
  double seconds = 0;
  PKV_ASSIGN_OR_FAIL(Request r, ParseAzureLine("2023-11-16 18:15:46.5,374,44", "f:2", &seconds));
  EXPECT_EQ(r.prompt_tokens, 374);
  EXPECT_EQ(r.output_tokens, 44);
  double later = 0;
  PKV_ASSERT_OK(ParseAzureLine("2023-11-16 18:15:48.75,1,0", "f:3", &later));
  EXPECT_NEAR(later - seconds, 2.25, 1e-6);  // Seconds since 1970 in a double.
}

TEST(AzureTraceTest, ErrorsNameLineAndField) {
  double s;
  ExpectError(ParseAzureLine("2023-11-16 18:15:46,374", "t.csv:7", &s).status(),
              "t.csv:7: expected 3 fields");
  ExpectError(ParseAzureLine("yesterday,374,44", "t.csv:8", &s).status(), "t.csv:8: field TIMESTAMP");
  ExpectError(ParseAzureLine("2023-11-16 18:15:46,abc,44", "t.csv:9", &s).status(),
              "t.csv:9: field ContextTokens: 'abc' is not an integer");
  ExpectError(ParseAzureLine("2023-11-16 18:15:46,5,-1", "t.csv:10", &s).status(),
              "t.csv:10: field GeneratedTokens: -1 is negative");
  ExpectError(ParseAzureLine("2023-11-16 18:15:46,0,3", "t.csv:11", &s).status(),
              "field ContextTokens: 0");
}

TEST(AzureTraceTest, ReadsAFileAndChecksTheHeader) {
  const std::string dir = PAGEDKV_TEST_DATA_DIR;
  PKV_ASSIGN_OR_FAIL(Workload w, ReadTrace(dir + "/azure_small.csv"));
  ASSERT_EQ(w.requests.size(), 8u);
  EXPECT_DOUBLE_EQ(w.requests[0].arrival_seconds, 0.0);
  EXPECT_NEAR(w.requests[7].arrival_seconds, 2.81941, 1e-4);
  ExpectError(ReadTrace(dir + "/azure_bad.csv").status(), "azure_bad.csv:3: field ContextTokens");
  ExpectError(ReadTrace(dir + "/mooncake_small.jsonl").ok() ? absl::InvalidArgumentError("header")
                                                             : absl::OkStatus(),
              "header");  // The JSONL file parses as Mooncake, not CSV.
  EXPECT_EQ(ReadTrace(dir + "/missing.csv").status().code(), absl::StatusCode::kNotFound);
}

TEST(MooncakeTraceTest, ParsesALine) {
  PKV_ASSIGN_OR_FAIL(Request r, ParseMooncakeLine(
      R"({"timestamp": 1500, "input_length": 700, "output_length": 9, "hash_ids": [0, 4]})", "m:1"));
  EXPECT_DOUBLE_EQ(r.arrival_seconds, 1.5);
  EXPECT_EQ(r.prompt_tokens, 700);
  EXPECT_EQ(r.output_tokens, 9);
  EXPECT_EQ(r.prefix_blocks, (std::vector<int64_t>{0, 4}));
}

TEST(MooncakeTraceTest, ErrorsNameLineAndField) {
  ExpectError(ParseMooncakeLine("[1]", "m:3").status(), "m:3: column 1: expected '{'");
  ExpectError(ParseMooncakeLine(R"({"timestamp": 1, "input_length": 7, "output_length": 1})", "m:4").status(),
              "m:4: field hash_ids: missing");
  ExpectError(ParseMooncakeLine(R"({"timestamp": 1, "input_length": "x", "output_length": 1, "hash_ids": [1]})",
                                "m:5").status(),
              "m:5: field input_length: expected a number");
  ExpectError(ParseMooncakeLine(R"({"timestamp": 1, "input_length": 600, "output_length": 1, "hash_ids": [1]})",
                                "m:6").status(),
              "m:6: field hash_ids: 1 blocks of 512 tokens cannot cover input_length 600");
  ExpectError(ParseMooncakeLine(R"({"timestamp": 1, "input_length": 6, "output_length": 1, "hash_ids": [1, 2.5]})",
                                "m:7").status(),
              "m:7: field hash_ids: 2.5 is not a count");
  ExpectError(ParseMooncakeLine(R"({"timestamp": 1, "input_length": 6, "output_length": 1, "hash_ids": [1]} x)",
                                "m:8").status(),
              "m:8: column");
}

TEST(PromptTokensTest, IdenticalHashIdsGiveIdenticalTokens) {
  Request a;
  a.prompt_tokens = 1100;
  a.prefix_blocks = {0, 1, 3};
  Request b = a;
  b.prefix_blocks = {0, 1, 2};
  const std::vector<int32_t> ta = PromptTokens(a, 0, 1);
  const std::vector<int32_t> tb = PromptTokens(b, 1, 1);
  ASSERT_EQ(ta.size(), 1100u);
  EXPECT_TRUE(std::equal(ta.begin(), ta.begin() + 1024, tb.begin()));
  EXPECT_NE(std::vector<int32_t>(ta.begin() + 1024, ta.end()),
            std::vector<int32_t>(tb.begin() + 1024, tb.end()));
  EXPECT_EQ(PromptTokens(a, 0, 1), ta) << "deterministic";
}

TEST(PromptTokensTest, SharedSystemPromptThenUniqueTokens) {
  Request a;
  a.prompt_tokens = 40;
  a.system_prompt = 2;
  a.shared_prefix = 16;
  const std::vector<int32_t> t0 = PromptTokens(a, 0, 9);
  const std::vector<int32_t> t1 = PromptTokens(a, 1, 9);
  EXPECT_TRUE(std::equal(t0.begin(), t0.begin() + 16, t1.begin()));
  EXPECT_NE(std::vector<int32_t>(t0.begin() + 16, t0.end()),
            std::vector<int32_t>(t1.begin() + 16, t1.end()));
}

TEST(PresetTest, BudgetsInBytesAndTokens) {
  PKV_ASSIGN_OR_FAIL(ModelPreset m, FindPreset("llama-3-8b"));
  EXPECT_EQ(BytesPerToken(m), 131072);
  EXPECT_EQ(*ParseBudgetTokens("16GiB", m), 131072);
  EXPECT_EQ(*ParseBudgetTokens("3M-tokens", m), 3000000);
  EXPECT_EQ(*ParseBudgetTokens("4096-tokens", m), 4096);
  EXPECT_EQ(*ParseBudgetTokens("1.5 GB", m), 11444);
  ExpectError(ParseBudgetTokens("lots", m).status(), "--kv-budget 'lots' is not a size");
  ExpectError(ParseBudgetTokens("-5GiB", m).status(), "not a size");
  ExpectError(FindPreset("gpt-5").status(), "unknown --model 'gpt-5'");
}

TEST(SyntheticWorkloadTest, IsDeterministicAndVaried) {
  const Workload a = SyntheticWorkload(500, 3);
  const Workload b = SyntheticWorkload(500, 3);
  ASSERT_EQ(a.requests.size(), 500u);
  int beams = 0, shared = 0;
  for (size_t i = 0; i < a.requests.size(); ++i) {
    EXPECT_EQ(a.requests[i].prompt_tokens, b.requests[i].prompt_tokens);
    if (i > 0) {
      EXPECT_GE(a.requests[i].arrival_seconds, a.requests[i - 1].arrival_seconds);
    }
    beams += a.requests[i].beam_width > 1;
    shared += a.requests[i].system_prompt >= 0;
  }
  EXPECT_GT(beams, 20);
  EXPECT_GT(shared, 70);
}

}  // namespace
}  // namespace pagedkv::sim

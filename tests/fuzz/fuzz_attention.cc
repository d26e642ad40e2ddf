// ExtendAttention over shapes, contents and options drawn from the bytes, against the
// double-precision reference over the same K/V read back contiguously: head dims 1-72, block
// sizes 1-24, 1-3 KV heads, GQA 1-6, the three dtypes, up to three sequences (forks among them)
// of up to 160 tokens with ragged query counts, windows, soft-caps, scales, 1-3 threads with
// partitions as small as one token, vdpbf16ps on and off. The output must stay within the
// tests' tolerance of the reference, and run in place (out == q) give the same bits. Some inputs
// break one argument on purpose instead (shapes, options, out overlapping q): the call must then
// return kInvalidArgument and leave the output as it was.
#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "attention/reference_attention.h"
#include "fuzz_common.h"
#include "pagedkv/attention.h"

namespace pagedkv::fuzz {
namespace {

constexpr float kUntouched = -7.0f;
constexpr float kInfinity = std::numeric_limits<float>::infinity();

void Run(FuzzedDataProvider& in) {
  CacheConfig config;
  config.num_layers = 1;
  config.head_dim = in.ConsumeIntegralInRange<int32_t>(1, 72);
  config.block_size = in.ConsumeIntegralInRange<int32_t>(1, 24);
  config.num_kv_heads = in.ConsumeIntegralInRange<int32_t>(1, 3);
  config.dtype = static_cast<DType>(in.ConsumeIntegralInRange<int>(0, 2));
  const int32_t group = in.ConsumeIntegralInRange<int32_t>(1, 6);
  const int num_seqs = in.ConsumeIntegralInRange<int>(1, 3);
  config.max_seq_len = 160;
  config.num_blocks = num_seqs * (config.max_seq_len / config.block_size + 2);
  auto cache = PagedKvCache::Create(config);
  if (!cache.ok()) Die("create:", cache.status());
  std::mt19937 rng(in.ConsumeIntegral<uint32_t>());
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);

  std::vector<SeqId> ids;
  std::vector<int32_t> q_offsets = {0};
  for (int s = 0; s < num_seqs; ++s) {
    SeqId id;
    int64_t have = 0;
    if (s > 0 && in.ConsumeBool()) {
      auto forked = (*cache)->Fork(ids[in.ConsumeIntegralInRange<size_t>(0, ids.size() - 1)]);
      if (!forked.ok()) Die("fork:", forked.status());
      id = *forked;
      have = *(*cache)->Length(id);
    } else {
      id = (*cache)->CreateSequence()->id;
    }
    const int64_t length = in.ConsumeIntegralInRange<int64_t>(std::max<int64_t>(have, 1), 160);
    auto start = (*cache)->Reserve(id, length - have);
    if (!start.ok()) Die("reserve:", start.status());
    std::vector<float> k(static_cast<size_t>((length - have) * config.num_kv_heads *
                                             config.head_dim));
    std::vector<float> v(k.size());
    for (float& x : k) x = u(rng);
    for (float& x : v) x = u(rng);
    if (absl::Status st = (*cache)->WriteKv(id, 0, *start, k, v); !st.ok()) Die("write:", st);
    ids.push_back(id);
    q_offsets.push_back(q_offsets.back() +
                        in.ConsumeIntegralInRange<int32_t>(1, static_cast<int32_t>(
                                                                  std::min<int64_t>(length, 8))));
  }
  Check(**cache);

  AttentionOptions options;
  if (in.ConsumeBool()) options.scale = in.ConsumeIntegralInRange<int>(1, 64) / 32.0f;
  if (in.ConsumeBool()) options.sliding_window = in.ConsumeIntegralInRange<int32_t>(1, 170);
  if (in.ConsumeBool()) options.soft_cap = in.ConsumeIntegralInRange<int>(1, 200) / 4.0f;
  options.num_threads = in.ConsumeIntegralInRange<int32_t>(1, 3);
  options.min_partition_tokens = in.ConsumeIntegralInRange<int32_t>(1, 64);
  options.bf16_products = static_cast<Bf16Products>(in.ConsumeIntegralInRange<int>(0, 2));
  options.page_fetch = static_cast<PageFetch>(in.ConsumeIntegralInRange<int>(0, 2));
  options.min_shared_prefix_tokens = in.ConsumeIntegralInRange<int32_t>(-1, 64);
  // bf16 products round the queries to bf16, so each logit is off by about 2^-9 of its size
  // (attention.h). Beyond scale 1, these K/V make logits sharp enough for that to leave the
  // tolerance below: a documented limit of the option, not a fault. f32 products take any scale.
  if (options.bf16_products != Bf16Products::kWiden && config.dtype == DType::kBF16) {
    options.scale = std::min(options.scale, 1.0f);
  }

  const int32_t num_q_heads = config.num_kv_heads * group;
  const size_t q_size = static_cast<size_t>(q_offsets.back()) * num_q_heads * config.head_dim;
  std::vector<float> q(q_size);
  for (float& x : q) x = u(rng);
  PagedKvViewStorage storage;
  auto view = (*cache)->MakeView(ids, &storage);
  if (!view.ok()) Die("view:", view.status());
  std::vector<float> out(q_size, kUntouched);

  // One argument broken on purpose: the call must refuse it and write nothing.
  const int broken = in.ConsumeIntegralInRange<int>(0, 9);
  if (broken == 6) {  // out a few floats on from q in one buffer.
    const size_t shift = in.ConsumeIntegralInRange<size_t>(1, q_size);
    std::vector<float> shared(q_size + shift);
    std::copy(q.begin(), q.end(), shared.begin());
    const std::vector<float> before = shared;
    const absl::Status st = ExtendAttention(*view, 0, num_q_heads, q_offsets,
                                            absl::MakeConstSpan(shared.data(), q_size),
                                            absl::MakeSpan(shared.data() + shift, q_size), options);
    const bool overlaps = shift < q_size;
    if (overlaps && st.code() != absl::StatusCode::kInvalidArgument) {
      Die("overlapping q and out not refused:", st);
    }
    if (!overlaps && !st.ok()) Die("adjacent q and out refused:", st);
    if (overlaps && shared != before) Die("a refused call wrote its output");
    return;
  }
  if (broken > 0 && broken <= 5) {
    std::vector<int32_t> bad_offsets = q_offsets;
    std::vector<float> bad_q = q;
    int32_t heads = num_q_heads;
    AttentionOptions bad_options = options;
    // The view as a caller might fill it in by hand, over copies of the tables.
    PagedKvView bad_view = *view;
    std::vector<BlockId> bad_ids = storage.block_ids;
    std::vector<int64_t> bad_lens = storage.seq_lens;
    bad_view.block_ids = bad_ids.data();
    bad_view.seq_lens = bad_lens.data();
    if (broken == 1) bad_offsets.back() += 1;  // q too short for the offsets.
    if (broken == 2) {
      // Query heads not a multiple of the KV heads, or a sequence whose table names a block out
      // of range or is too short for its length.
      const int which = in.ConsumeIntegralInRange<int>(0, 2);
      const size_t s = in.ConsumeIntegralInRange<size_t>(0, ids.size() - 1);
      const int64_t bs = config.block_size;
      const int64_t pages = (bad_lens[s] + bs - 1) / bs;
      if (which == 0) heads = num_q_heads + 1;
      if (which == 1) {
        const int32_t at = storage.block_offsets[s] +
                           in.ConsumeIntegralInRange<int32_t>(0, static_cast<int32_t>(pages - 1));
        const auto past = in.ConsumeIntegralInRange<int32_t>(0, 1000);
        bad_ids[static_cast<size_t>(at)] = in.ConsumeBool() ? -1 - past : config.num_blocks + past;
      }
      if (which == 2) {
        bad_lens[s] = int64_t{storage.block_offsets[s + 1] - storage.block_offsets[s]} * bs + 1;
      }
    }
    if (broken == 3) bad_options.sliding_window = -1;       // A bad option.
    if (broken == 4) {                                      // More queries than positions.
      bad_offsets.back() += 200;
      bad_q.resize(static_cast<size_t>(bad_offsets.back()) * heads * config.head_dim);
    }
    if (broken == 5) bad_options.soft_cap = kInfinity;  // NaN logits if taken.
    const absl::Status st =
        ExtendAttention(bad_view, 0, heads, bad_offsets, bad_q, absl::MakeSpan(out), bad_options);
    if (st.code() != absl::StatusCode::kInvalidArgument) Die("bad input not refused:", st);
    if (!std::all_of(out.begin(), out.end(), [](float x) { return x == kUntouched; })) {
      Die("a refused call wrote its output");
    }
    return;
  }

  const absl::Status st =
      ExtendAttention(*view, 0, num_q_heads, q_offsets, q, absl::MakeSpan(out), options);
  if (!st.ok()) Die("attention:", st);
  if (in.ConsumeBool()) {  // In place: the same bits as with separate buffers.
    std::vector<float> q_and_out = q;
    const absl::Status again = ExtendAttention(*view, 0, num_q_heads, q_offsets, q_and_out,
                                               absl::MakeSpan(q_and_out), options);
    if (!again.ok()) Die("attention in place:", again);
    if (q_and_out != out) Die("attention in place differs from separate buffers");
  }
  std::vector<internal::ContiguousKv> contiguous;
  for (SeqId id : ids) {
    internal::ContiguousKv kv;
    kv.length = *(*cache)->Length(id);
    const size_t n = static_cast<size_t>(kv.length * config.num_kv_heads * config.head_dim);
    kv.k.resize(n);
    kv.v.resize(n);
    if (absl::Status r = (*cache)->ReadKv(id, 0, 0, kv.length, absl::MakeSpan(kv.k),
                                          absl::MakeSpan(kv.v));
        !r.ok()) {
      Die("read:", r);
    }
    contiguous.push_back(std::move(kv));
  }
  const std::vector<float> want = internal::ReferenceAttention(
      contiguous, config.num_kv_heads, config.head_dim, num_q_heads, q_offsets, q, options);
  double scale = 1e-30, err = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    scale = std::max(scale, std::fabs(double{want[i]}));
    err = std::max(err, std::fabs(double{want[i]} - double{out[i]}));
  }
  const double tolerance = config.dtype == DType::kF32 ? 1e-5 : 2e-2;
  if (!(err <= tolerance * scale)) {
    std::fprintf(stderr,
                 "head_dim %d block %d kv heads %d group %d dtype %s seqs %d scale %g window %d "
                 "cap %g threads %d partition %d bf16 products %d shared prefix %d: error %g of "
                 "scale %g\n",
                 config.head_dim, config.block_size, config.num_kv_heads, group,
                 std::string(DTypeName(config.dtype)).c_str(), num_seqs, options.scale,
                 options.sliding_window, options.soft_cap, options.num_threads,
                 options.min_partition_tokens, static_cast<int>(options.bf16_products),
                 options.min_shared_prefix_tokens, err / scale, scale);
    Die("attention differs from the reference");
  }
}

}  // namespace
}  // namespace pagedkv::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  pagedkv::fuzz::Run(in);
  return 0;
}

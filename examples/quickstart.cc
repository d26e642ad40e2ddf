// Creates a cache, writes a prompt's K/V, forks it for two samples, decodes a token of each with
// attention through the block tables, and prints the stats.
#include <cstdio>
#include <vector>

#include "pagedkv/pagedkv.h"

int main() {
  pagedkv::CacheConfig config;
  config.num_layers = 4;
  config.num_kv_heads = 2;
  config.head_dim = 64;
  config.block_size = 16;
  config.dtype = pagedkv::DType::kBF16;
  config.num_blocks = 64;
  config.enable_prefix_caching = true;

  auto cache = pagedkv::PagedKvCache::Create(config);
  if (!cache.ok()) {
    std::fprintf(stderr, "create: %s\n", cache.status().ToString().c_str());
    return 1;
  }
  pagedkv::PagedKvCache& kv = **cache;

  // A 40-token prompt: reserve its slots, then write K/V (here a ramp) for every layer.
  std::vector<int> prompt(40);
  for (int i = 0; i < 40; ++i) prompt[i] = 1000 + i;
  auto seq = kv.CreateSequence(prompt);
  if (!seq.ok()) return 1;
  const int per_layer = 40 * config.num_kv_heads * config.head_dim;
  std::vector<float> k(config.num_layers * per_layer), v(k.size());
  for (size_t i = 0; i < k.size(); ++i) k[i] = v[i] = 0.001f * static_cast<float>(i % 997);
  if (auto s = kv.AppendKv(seq->id, k, v, prompt); !s.ok()) {
    std::fprintf(stderr, "append: %s\n", s.ToString().c_str());
    return 1;
  }

  // Parallel sampling: two children share every page of the prompt.
  auto child = kv.Fork(seq->id);
  if (!child.ok()) return 1;
  for (pagedkv::SeqId id : {seq->id, *child}) {
    if (auto s = kv.Reserve(id, 1); !s.ok()) return 1;  // Copies the shared tail block only.
  }

  // Decode: each sequence's new token (position 40) gets its K/V, then attention reads all 41
  // positions of both through one view, 4 query heads over the 2 KV heads (GQA), for layer 0.
  const std::vector<float> k1(config.num_kv_heads * config.head_dim, 0.5f), v1(k1);
  for (pagedkv::SeqId id : {seq->id, *child}) {
    for (int layer = 0; layer < config.num_layers; ++layer) {
      if (auto s = kv.WriteKv(id, layer, 40, k1, v1); !s.ok()) return 1;
    }
  }
  pagedkv::PagedKvViewStorage storage;
  auto view = kv.MakeView({seq->id, *child}, &storage);
  if (!view.ok()) return 1;
  std::vector<float> q(2 * 4 * config.head_dim, 0.1f), out(q.size());
  if (auto s = pagedkv::DecodeAttention(*view, /*layer=*/0, 4, q, absl::MakeSpan(out)); !s.ok()) {
    std::fprintf(stderr, "attention: %s\n", s.ToString().c_str());
    return 1;
  }
  std::printf("attention output of sequence 0, head 0, dim 0: %.4f\n", out[0]);

  // The same prompt again: its two full blocks come from the prefix cache.
  auto again = kv.CreateSequence(prompt);
  if (!again.ok()) return 1;

  const pagedkv::CacheStats st = kv.Stats();
  std::printf("sequences %lld, blocks used %d of %d, tokens %lld logical / %lld physical\n",
              static_cast<long long>(st.num_sequences), st.pool.used_blocks, st.pool.num_blocks,
              static_cast<long long>(st.logical_tokens),
              static_cast<long long>(st.physical_tokens));
  std::printf("utilization %.3f, blocks saved by sharing %lld, copy-on-write copies %lld\n",
              st.utilization, static_cast<long long>(st.blocks_saved_by_sharing),
              static_cast<long long>(st.cow_copies));
  std::printf("prefix cache: %lld of %lld prompt tokens served from cache\n",
              static_cast<long long>(st.prefix_hit_tokens),
              static_cast<long long>(st.prefix_query_tokens));
  if (auto s = kv.CheckInvariants(); !s.ok()) {
    std::fprintf(stderr, "invariants: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}

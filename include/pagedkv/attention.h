// Attention kernels that read K/V straight through the block tables of a PagedKvView.
#ifndef PAGEDKV_ATTENTION_H_
#define PAGEDKV_ATTENTION_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "pagedkv/view.h"

namespace pagedkv {

// How bf16 pages are multiplied (f32 and f16 pages always widen to f32).
enum class Bf16Products : int8_t {
  // kDot on AMD CPUs that have the instruction, kWiden on the others. On a Zen 5 core kDot took
  // decode 0.53-0.59x and extend 0.45-0.48x the time of widening (BM_Bf16Products, measured
  // before widening split bf16 into even and odd dims and before the tile kernel). Intel cores
  // up to Emerald Rapids run vdpbf16ps at a quarter of their f32 FMA rate (BM_Bf16DotPeak
  // 1.28 G/s against 5.4 G FMAs/s on one), where kWiden took decode 0.84-0.95x and extend
  // (tile_kernel-inl.h) 0.58-0.62x the time of kDot, with f32 products.
  kAuto = 0,
  // vdpbf16ps on bf16 pairs where the CPU has AVX512_BF16, with queries and softmax
  // probabilities rounded to bf16, as GPU flash attention does, summing in f32. Error about 2e-3
  // of the output scale. Not for decode without GQA (one query per KV head widens, which is as
  // fast there). Rounding the query to bf16 moves each logit by up to 2^-9 of sum |q_i k_i|, so
  // the error grows with the logits' spread: with `scale` 1.75 on head dim 64 (logits about
  // +-10) over a 14-key window it reached 2e-2 of the output scale. For sharp attention (a large
  // `scale`, few keys that matter), use kWiden.
  kDot = 1,
  // K/V widened to f32 in registers, every product in f32 (error about 3e-7), on every CPU.
  kWiden = 2,
};

// How the decode kernel fetches the K/V pages ahead of those it reads, where the block table
// scatters them (pages of 256 tokens or fewer; the row kernel: decode and short extends).
enum class PageFetch : int8_t {
  // kFar on AMD family 19h cores with AVX-512 (Zen 4), the one core where it was measured
  // faster; kNear on the others. On a Zen 3 core (family 19h, AVX2) kFar was mixed: 0.78-0.89x
  // the time for 1 x 32,768 from DRAM, 0.97-1.16x for bf16 32 x 2,048, 1.01-1.06x at two threads.
  kAuto = 0,
  // The rows 16 positions ahead into L1 while rows are read (with 16-token pages: the same row
  // of the next page the block table names), and the first line of each page a step ahead (256
  // positions) into the outer caches.
  kNear = 1,
  // kNear's rows 16 positions ahead into L2 instead of L1, and every row of the pages a step
  // ahead into L2 as well, row for row with the rows being read: more misses in flight than
  // L1's fill buffers allow. BM_DecodePageFetch on a Zen 4 core (16-token pages in random order,
  // calls alternated): from DRAM 0.66-0.72x the time of kNear at one thread (bf16, f16 and f32)
  // and 0.78x at two, before the rows 16 ahead went to L2 too (a further 0.78-0.87x at one thread,
  // 0.88-0.94x at two); with K/V in L3 1.06x, where the extra prefetches only cost issue slots.
  // Decode steps then go through a sequence's KV heads in turn, the next head's pages being the
  // ones fetched a step ahead: 0.82-0.93x the time from DRAM at one thread, 0.90-0.94x at two,
  // 0.98-1.05x in L3 (bf16, f16, f32). Results are the same bits as kNear's.
  kFar = 2,
};

// AttentionOptions::min_shared_prefix_tokens' default: a size chosen per dtype.
inline constexpr int32_t kAutoSharedPrefix = -1;

struct AttentionOptions {
  // Multiplies q.k before the softmax. 0: 1 / sqrt(head_dim).
  float scale = 0.0f;
  // > 0: a query at position p sees only keys in [p - sliding_window + 1, p].
  int32_t sliding_window = 0;
  // > 0 (and finite): logits become soft_cap * tanh(logits / soft_cap) (Gemma 2 style), after
  // scaling.
  float soft_cap = 0.0f;
  // Threads of the process-wide pool to spread work over (OpenMP's; in builds without OpenMP
  // the library's own, where a call made while another caller's work holds the pool runs
  // inline); 1 runs inline on the caller, 0 uses every hardware thread (counted once per
  // process). At most 256; threads beyond the work items (sequence, KV heads, query tile,
  // partition) have nothing to do.
  int32_t num_threads = 1;
  // With more threads than (sequence, kv head) work, a long context is split into partitions of
  // at least this many tokens that run in parallel and are reduced (flash-decoding).
  int32_t min_partition_tokens = 512;
  // Sequences of one call whose block tables start with the same blocks for at least this many
  // tokens (forks for beam search and parallel sampling, prompts shared through the prefix
  // cache) read those pages once for all of them: one work item attends all their queries to the
  // shared keys, others each sequence's queries to its own keys, and the two are combined as
  // flash-decoding's partitions are. A group holds at most 64 query vectors per KV head (16
  // sequences' decode at GQA 4). Results differ from unshared reads by rounding only.
  //   -1 (kAutoSharedPrefix): 1,024 tokens for f32 and bf16 pages, never for f16 pages.
  //   0: never. Nor with a sliding_window.
  // It saves bytes, not arithmetic. On the 2-vCPU Zen 4 VM (BM_DecodeForked, calls alternated,
  // one and two threads) 8 prompts of 2,048 tokens forked 4 ways, with 64 tokens each of their
  // own, took bf16 0.87-0.89x and 0.72-0.89x the unshared time, f32 0.73-0.75x and 0.65-0.89x,
  // f16 0.95x and 0.85-0.99x (three runs); one such prompt forked 2-16 ways bf16 0.91-1.02x, f32
  // 0.72-0.90x, f16 0.95-1.08x; 8 x 4 forks of 1,024 tokens (bf16) 0.94x and 0.88x, of 256 tokens
  // 1.20x and 1.64x (each sequence pays a work item's fixed cost twice).
  int32_t min_shared_prefix_tokens = kAutoSharedPrefix;
  // How bf16 pages are multiplied (Bf16Products). kAuto's results differ between CPUs by the
  // bf16 rounding; kWiden gives the same f32 products everywhere.
  Bf16Products bf16_products = Bf16Products::kAuto;
  // How pages ahead of those being read are fetched (PageFetch).
  PageFetch page_fetch = PageFetch::kAuto;
};

// Decode: one query token per viewed sequence, attending to all of its cached positions (the
// query's own K/V included: reserve and write it first).
//   q, out: [view.num_seqs][num_q_heads][head_dim] f32.
// Query heads that share a KV head (num_q_heads / num_kv_heads of them, GQA) are processed
// together, so each K/V page is read once per group. out may be q itself (in place), not an
// overlapping part of it. kInvalidArgument names any shape mismatch, bad option or overlap;
// nothing is written then.
absl::Status DecodeAttention(const PagedKvView& view, int32_t layer, int32_t num_q_heads,
                             absl::Span<const float> q, absl::Span<float> out,
                             const AttentionOptions& options = {});

// Extend (prefill, chunked prefill, speculative verification, decode): sequence s has
// n_s = q_offsets[s + 1] - q_offsets[s] query tokens, its last n_s positions, so query i of a
// sequence of length L sees positions <= L - n_s + i (causal).
//   q_offsets: [view.num_seqs + 1], q_offsets[0] == 0, non-decreasing, n_s <= L.
//   q, out: [q_offsets.back()][num_q_heads][head_dim] f32; out may be q itself, as in decode.
absl::Status ExtendAttention(const PagedKvView& view, int32_t layer, int32_t num_q_heads,
                             absl::Span<const int32_t> q_offsets, absl::Span<const float> q,
                             absl::Span<float> out, const AttentionOptions& options = {});

}  // namespace pagedkv

#endif  // PAGEDKV_ATTENTION_H_

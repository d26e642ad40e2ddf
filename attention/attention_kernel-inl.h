// The row kernel for one work item (decode, and any item with few queries per KV head; items
// with many take tile_kernel-inl.h), compiled once per Highway target (attend_*.cc include this
// file through hwy/foreach_target.h, one dtype or kernel each; attention.cc picks per item).
//
// Per KV block of the item's range: K rows are dotted with every query of the group (GQA: a
// page is read once per KV head, not once per query head), scores get the soft-cap and the
// causal/window mask, an online softmax rescales the running sums, and V rows are accumulated
// with the probabilities. Two ways to do the products:
//   - bf16 pages on a CPU with AVX512_BF16, two or more queries per item, in groups of four
//     (a last group of one or two scores with one or two rotated copies of its queries, of
//     three with two and a copy of the third, a last group of one to three sums values for
//     those alone, and the last five or six sum values together): vdpbf16ps on bf16 pairs
//     (bf16_dot-inl.h), queries and probabilities rounded to bf16, f32 sums;
//   - otherwise K and V rows are widened to f32 in registers, once per group of four queries
//     (bf16: split into even and odd dims by a shift and a mask, LoadPairF32); three queries
//     left over are padded to a group, two take a pair path (Scores2, Values2: eight keys
//     against the pair on AVX-512, four elsewhere), and one scores four keys at a time
//     (Scores1). On AVX-512, four keys are scored at a time against the group laid out in
//     rotated blocks, so that 16 dot products are summed with one transpose (RotateQueries);
//     V rows (and f16 K rows) are widened once per two groups (eight queries: GQA 8, or
//     GQA 4 with two query rows), Values8 and Scores8, and V rows once for a group and the one
//     or two queries after it (GQA 5 and 6, ValuesOf<5> and ValuesOf<6>), and K rows
//     once for a group and the query after it (GQA 5, Scores4<kSplit, 1>).
// K rows kLeadRows positions ahead are prefetched, row for row, while keys are scored, and V rows
// while values are summed, across page boundaries: the hardware prefetcher does not follow a jump
// to a scattered page, nor keep far enough ahead inside a large one. With PageFetch::kFar the same
// rows of the pages a step ahead are fetched into L2 with them (PageSegment::far), and wherever
// there are such rows (not past the item's last page) the lead rows too go into L2 instead of L1
// (PrefetchRows).
//
// An item may hold several KV heads of its sequence (WorkItem::kv_heads). With PageFetch::kFar
// each step is taken for one head after another (head-local queries, accumulators and softmax
// state; shared scores), so a block's pages are read for all heads close in time, and the pages
// "a step ahead" are those read one head-step later: the next head's pages of the same step, and
// after the last head the first head's pages of the next step (build_segments). Otherwise the
// caller takes the heads one at a time (AttendItem). bf16 decode on the Zen 4 VM, calls
// alternated against an item per head, one thread: from DRAM 0.82-0.83x the time for
// 1 x 32,768 and 0.92-0.93x for 32 x 2,048 (f16 1 x 32,768: 0.85x), in L3 0.98-1.01x for the
// three dtypes; a contiguous cache, which now has pages to fetch ahead, 0.80-0.90x from DRAM.

#if defined(PAGEDKV_ATTENTION_KERNEL_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef PAGEDKV_ATTENTION_KERNEL_INL_H_
#undef PAGEDKV_ATTENTION_KERNEL_INL_H_
#else
#define PAGEDKV_ATTENTION_KERNEL_INL_H_
#endif

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "attention/bf16_dot-inl.h"
#include "attention/kernel_args.h"
#include "attention/page_segment.h"
#include "attention/row_scores-inl.h"
#include "attention/row_values-inl.h"
#include "attention/soft_cap-inl.h"
#include "attention/softmax_exp-inl.h"
#include "attention/widen-inl.h"
#include "attention/work_item-inl.h"
#include "hwy/cache_control.h"
#include "hwy/highway.h"
#include "pagedkv/dtype.h"

HWY_BEFORE_NAMESPACE();
namespace pagedkv::internal::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// How far ahead of the row being read (in positions of the sequence) its K and V are fetched into
// L1, row for row. With 16-token pages that is the same row of the next page named by the block
// table, which the hardware prefetcher does not follow. Larger pages, and a contiguous cache (one
// page per sequence), are fetched as far ahead inside the page and across into the next: before,
// only the next page was fetched, and from DRAM (bf16, one thread) 128-token pages took 1.27x and
// a contiguous cache 2.4x the time. 8, 32 or 64 rows ahead measured 0.99-1.26x, 0.94-1.11x and
// 0.99-1.18x the time of 16 over those rows; earlier, 2-4 16-token pages ahead was 1.05-1.15x
// and with f32 pages pushed the current ones out of L1.
constexpr int64_t kLeadRows = 16;

// kDot: bf16 pages through vdpbf16ps (bf16_dot-inl.h), in groups of four query slots;
// otherwise K and V are widened to f32 in registers. kSplit (bf16): widened by LoadPairF32's
// split, with queries and accumulators in its dim order (SplitDims).
template <typename T, bool kDot, bool kSplit = false>
void AttendItemT(const KernelArgs& a, const WorkItem& it) {
  const DF df;
  const size_t N = hn::Lanes(df);
  const PagedKvView& view = a.view;
  const size_t D = static_cast<size_t>(view.head_dim);
  const int64_t bs = view.block_size;
  const int64_t G = a.group;
  // The item's KV heads (WorkItem::kv_heads), taken in turn at every step.
  const size_t H = static_cast<size_t>(it.kv_heads);
  const ItemSpan span = SpanOf(a, it);
  const int64_t rows = span.rows;
  const size_t NQ = static_cast<size_t>(rows * G);
  // Query slots: whole groups of four, padded with zero queries whose scores are computed and
  // ignored, wherever a group of four costs about what the queries left over cost on their own:
  // when three are left over (on AVX-512 ScoresOfKeys<4, 1, kSplit, true>). The dot path lays
  // its buffers out in groups of four slots too, but scores and sums the real queries only (the
  // padding's probabilities stay zero). GQA 2 in groups of four, against one query at a time, on
  // Emerald Rapids: 0.75-0.86x the time for bf16 and f16, 0.85-0.98x for f32; on AVX2, without
  // the rotated scores, 1.04-1.10x, so not there. Two left over take the pair path instead
  // (Scores2, Values2): GQA 2 decode, 1 x 2,048, one thread, calls alternated in one process, on
  // AVX-512 against the padded group: bf16 0.96x the time (0.76-0.78x in L2), f16 0.88x, f32
  // 0.96-0.97x; on AVX2 (Zen 3 VM, two runs) against one query at a time: f32 0.85x, f16
  // 0.90-0.93x, bf16 1.00-1.01x (contiguous 0.90-1.06x, 32 x 2,048 0.98-1.02x), GQA 6 0.94-1.02x
  // over the three dtypes. Three left over were taken one at a time on AVX2 until a Zen 3 core
  // (BM_DecodeGqa, 1 x 2,048, one thread, four runs of each build, times against GQA 4 and 8 in the
  // same run) gave GQA 3 1.34-1.63x the time of GQA 4 for f32, 1.24-1.30x for bf16 and 1.35-1.76x
  // for f16, and GQA 7 0.93-1.49x that of GQA 8; padded, 0.84-1.16x and 0.88-1.18x.
  const bool pair_rest = !kDot && NQ % kQueryGroup == 2;
  const bool pad = kDot || NQ % kQueryGroup == 3;
  const size_t NS = pad ? (NQ + kQueryGroup - 1) / kQueryGroup * kQueryGroup : NQ;
  // Whole groups of four query slots, then a pair (pair_rest), then the rest one at a time.
  const size_t NQ4 = NS / kQueryGroup * kQueryGroup;
  // Keys per step (see below): up to 256, as long as the step's scores stay within 16 KiB
  // (decode's four queries: 256 keys, 9% faster than 64 in L3; extend's 64: 64 keys), then
  // whole pages when pages are smaller. Rows of scores are padded to whole vectors.
  const size_t step_target = std::clamp<size_t>(4096 / NS / 64 * 64, 64, 256);
  const size_t step_keys = static_cast<size_t>(bs) <= step_target
                               ? step_target / static_cast<size_t>(bs) * static_cast<size_t>(bs)
                               : step_target;
  const size_t t_pad = (step_keys + N - 1) / N * N;
  // The dot path keeps its accumulators in whole 32-dim chunks, in StoreDotValues' order.
  const size_t acc_stride = kDot ? (D + 31) / 32 * 32 : D;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();

  thread_local Scratch scratch;
  Scratch& s = scratch;
  // Per head h: queries, accumulators and softmax state of slots [h * NS, (h + 1) * NS); the
  // step's scores (and probabilities) are shared, each head's used up before the next.
  // Padding slots' queries are zeros; the real ones are written below.
  s.q.resize(H * NS * D);
  for (size_t h = 0; h < H; ++h) {
    std::fill(s.q.begin() + static_cast<ptrdiff_t>((h * NS + NQ) * D),
              s.q.begin() + static_cast<ptrdiff_t>((h + 1) * NS * D), 0.0f);
  }
  s.acc.assign(H * NS * acc_stride, 0.0f);
  s.m.assign(H * NS, kNegInf);
  s.l.assign(H * NS, 0.0f);
  s.scores.resize(NS * t_pad);
  float* HWY_RESTRICT scores_all = s.scores.data();

  // Query j = row * G + g of head h, pre-multiplied by the softmax scale.
  for (size_t h = 0; h < H; ++h) {
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t g = 0; g < G; ++g) {
        const float* src = QueryOf(a, it, r, static_cast<int64_t>(h) * G + g);
        float* dst = s.q.data() + (h * NS + static_cast<size_t>(r * G + g)) * D;
        ReorderDims<kSplit, true>(src, D, a.scale, dst);
      }
    }
  }
  // The groups of four queries as RotateQueries lays them out, each in 4 * D floats, for the
  // four-key scores of 16-bit pages on AVX-512 (Scores4), head h's from h * NQ4 * D; empty
  // elsewhere.
#if HWY_TARGET <= HWY_AVX3
  if constexpr (!kDot && !std::is_same_v<T, float>) {
    s.rotated_q.resize(H * NQ4 * D);
    for (size_t h = 0; h < H; ++h) {
      for (size_t j = 0; j < NQ4; j += kQueryGroup) {
        RotateQueries(s.q.data() + (h * NS + j) * D, D, s.rotated_q.data() + (h * NQ4 + j) * D);
      }
    }
  }
#endif
  const size_t packed_size = kDot ? PackedQuerySize(NS, D) : 0;
  if constexpr (kDot) {
    s.packed_q.resize(H * packed_size);
    for (size_t h = 0; h < H; ++h) {
      PackQueries(s.q.data() + h * NS * D, NQ, D, s.packed_q.data() + h * packed_size);
    }
    // Zeros in the padding slots' rows, which are never written (the real ones are before
    // they are read).
    s.probabilities.resize(NS * t_pad);
    std::fill(s.probabilities.begin() + static_cast<ptrdiff_t>(NQ * t_pad), s.probabilities.end(),
              uint16_t{0});
  }

  const int64_t lo = span.lo, hi = span.hi;
  // The head a step is on, and its slots' queries, accumulators and softmax state.
  int32_t kv_head = it.kv_head;
  const float* HWY_RESTRICT q_all = nullptr;
  const float* HWY_RESTRICT rot_all = nullptr;
  const uint16_t* HWY_RESTRICT packed = nullptr;
  float* HWY_RESTRICT acc_all = nullptr;
  float* HWY_RESTRICT m = nullptr;
  float* HWY_RESTRICT l = nullptr;

  const BlockId* table = view.BlockTable(it.seq);
  const auto neg_inf = hn::Set(df, kNegInf);
  // Keys are taken in steps of step_keys, so the softmax update and the rescaling of the
  // accumulators happen once per step, not once per page.
  const int64_t step = static_cast<int64_t>(step_keys);
  const int64_t last_page = hi > lo ? (hi - 1) / bs : -1;
  // Pages per step: TouchAhead's distance.
  const int64_t ahead = std::max<int64_t>(1, step / bs);
  // Positions the row-for-row prefetch runs ahead of the row being read: kLeadRows, or a whole
  // number of pages when pages are smaller.
  const int64_t lead = bs >= kLeadRows ? kLeadRows : kLeadRows / bs * bs;
  // How many pages on the lead rows of a page's last part lie.
  const int64_t lead_pages = (lead + bs - 1) / bs;
  // Where a KV head's pages of consecutive block ids are adjacent (the cache's layout), a run of
  // them in the block table is read as one page: one segment and one jump instead of one per
  // page. Not with pages shorter than the lead, whose last part's lead rows span several pages.
  const bool join_runs = view.block_stride_bytes == bs * view.row_stride_bytes && bs >= lead;
  // V's lead rows are fetched by the value pass, K's by the scores: the fetches then keep pace
  // with the arithmetic through the step, where fetching V with K asked for twice the bytes per
  // key during the scores and none during the values. Decode on Emerald Rapids, one thread,
  // calls of the two alternated in one process, against fetching V with K: in L3 (context
  // 2,048), GQA 4 bf16 0.78-0.89x the time, f32 0.91-0.95x, f16 0.85-0.88x, GQA 1, 2 and 8
  // 0.84-0.97x; for 128 MiB 0.90-0.92x paged, 0.93-0.99x contiguous; in L2 0.87-1.0x. AVX2
  // forced: f32 paged 0.86-0.90x but contiguous 1.02-1.08x; not where a pass of the value loop
  // reads half a line of each row (16-bit pages in groups of four), which took 1.0-1.2x.
  const size_t pass_bytes = (NQ4 > 0 && HWY_TARGET > HWY_AVX3 ? 2 : 4) * N * sizeof(T);
  const bool values_fetch_v = pass_bytes >= 64;
  // Calls part(b, p0, p1, tb) for the rows [t0, t1) of a step in order: rows [p0, p1) of the
  // run of pages from b (consecutive block ids, read as one page where join_runs; else one page),
  // in up to two parts per run, split where their lead rows move on to the next page named by
  // the block table, so that each part's lead rows lie in one page, tb.
  const auto for_each_part = [&](int64_t t0, int64_t t1, const auto& part) {
    for (int64_t b = t0 / bs, e = b, b1 = (t1 - 1) / bs; b <= b1; b = e + 1) {
      e = b;
      if (join_runs) {
        while (e < b1 && table[e + 1] == table[e] + 1) ++e;
      }
      const int64_t k0 = std::max(t0, b * bs);
      const int64_t k1 = std::min(t1, (e + 1) * bs);
      const int64_t split = std::clamp((e + 1) * bs - lead, k0, k1);
      for (int64_t p0 = k0, p1 = k0; p0 < k1; p0 = p1) {
        p1 = p0 < split ? split : k1;
        part(b, p0, p1, p0 < split ? b : e + lead_pages);
      }
    }
  };
  // Builds the current head's segments of the step [t0, t1), one per part (for_each_part).
  //
  // With each part, its lead rows (rows p0 + lead on, in page tb; none past the item's last page)
  // and the first line of its pages a step ahead, the pages read one head-step later: the next
  // head's page b, or after the item's last head its first head's page a step on (none past the
  // last page). far (PageFetch::kFar): bytes from the part's lead rows to its own rows in the page
  // a step ahead, which PrefetchRows fetches into L2 with them; 0 where there is none. The same
  // for K and V: their pools lie a fixed distance apart (PagedKvView::Page).
  //
  // A part of a run read as one page (join_runs) finds all its rows ahead at that one distance: in
  // the next head's pages, which lie as this head's do, or after the last head in the first
  // head's pages a step on, where those form a run too (not checked page by page: a wrong guess
  // costs a wasted prefetch, never a wrong value). Such parts fetched nothing far before, their
  // lead rows into L1 alone: head-major runs of 8 and 128 pages, 32 x 2,048 and 1 x 32,768 (one
  // run), Zen 4, calls alternated, took 0.57-0.68x that time from DRAM at one thread (all three
  // dtypes) and 0.76-0.77x at two; in L3 (1 x 2,048) bf16 1.10x, f32 1.02-1.03x, f16 1.00x, what
  // the far fetch costs a contiguous cache there too.
  //
  // Addresses are taken from the head's block 0 and the strides, held in locals: read through
  // the view (PageOf per address), they were loaded again after every segment stored. Decode,
  // Zen 4, calls alternated, against PageOf: 1 x 2,048 (L3) bf16 0.99x the time at one thread and
  // 0.96-0.97x at two (two heads an item, all built), f16 0.99x and 0.97x, f32 1.00x; from DRAM
  // 0.99-1.00x.
  using E = std::conditional_t<kDot, uint16_t, T>;
  thread_local std::vector<PageSegment<E>> segments;
  // The item's last head's far_k, far_v and far for each segment, found with its first head's
  // (the last head's pages ahead are the first head's a step on; see the step loop).
  struct LastAhead {
    const E* far_k;
    const E* far_v;
    ptrdiff_t far;
  };
  thread_local std::vector<LastAhead> last_ahead;
  const auto build_segments = [&](int64_t t0, int64_t t1) {
    const char* const base =
        reinterpret_cast<const char*>(PageOf<T>(view, a.layer, false, 0, kv_head));
    const ptrdiff_t v_off = view.pool_stride_bytes;  // From a K page to its V page.
    const ptrdiff_t block_bytes = view.block_stride_bytes;
    const ptrdiff_t row_bytes = static_cast<ptrdiff_t>(D * sizeof(T));
    // Only the item's first head is built (the others are moved: see the step loop). Where it is
    // the item's only head it is also its last, whose pages ahead are its own a step on; else
    // its pages ahead are the next head's, and the last head's fields are found too.
    const bool only_head = it.kv_heads == 1;
    // From this head's rows to the last head's.
    const ptrdiff_t last_bytes = (it.kv_heads - 1) * view.head_stride_bytes;
    const ptrdiff_t head_bytes = view.head_stride_bytes;
    const bool fetch_far = a.fetch_far;
    const auto elems = [](const char* p) { return reinterpret_cast<const E*>(p); };
    segments.clear();
    last_ahead.clear();
    for_each_part(t0, t1, [&](int64_t b, int64_t p0, int64_t p1, int64_t tb) {
      const char* const page = base + table[b] * block_bytes;
      const char* const part_rows = page + (p0 - b * bs) * row_bytes;
      const char* const lead_k =
          tb <= last_page ? base + table[tb] * block_bytes + (p0 + lead - tb * bs) * row_bytes
                          : nullptr;
      // This (the first) head's page a step on (none past the last page).
      const auto step_ahead = [&] {
        return b + ahead <= last_page ? base + table[b + ahead] * block_bytes : nullptr;
      };
      // Bytes from lead_k to the part's rows in `ahead_page`, the page a step ahead; 0: none.
      // `after_last`: a page of the first head a step on.
      const auto far_to = [&](const char* ahead_page, bool after_last) -> ptrdiff_t {
        if (!fetch_far || lead_k == nullptr || ahead_page == nullptr) return 0;
        // A part of a run on more than one page, after the last head: its last page's pages
        // a step ahead must follow on from its first's.
        if (after_last && p1 > (b + 1) * bs) {
          const int64_t lb = (p1 - 1) / bs;
          if (lb + ahead > last_page || table[lb + ahead] != table[b + ahead] + (lb - b)) return 0;
        }
        return ahead_page + (part_rows - page) - lead_k;
      };
      const char* const ahead_page = only_head ? step_ahead() : page + head_bytes;
      const ptrdiff_t far = far_to(ahead_page, only_head);
      // The run's first part touches the pages a step ahead. (Filled in place: a copy of a
      // segment built field by field stalled on store forwarding, 1.04x the time in L3.)
      const bool first = p0 == std::max(t0, b * bs);
      segments.push_back(PageSegment<E>{
          elems(part_rows), elems(part_rows + v_off), static_cast<size_t>(p1 - p0),
          static_cast<size_t>(p0 - t0), elems(lead_k),
          elems(lead_k == nullptr ? nullptr : lead_k + v_off), nullptr,
          elems(first ? ahead_page : nullptr),
          elems(first && ahead_page != nullptr ? ahead_page + v_off : nullptr), far});
      if (!only_head) {
        // This head's page a step on is the last head's page ahead.
        const char* const last_page_ahead = step_ahead();
        const ptrdiff_t last_far = far_to(last_page_ahead, true);
        last_ahead.push_back(LastAhead{
            elems(first ? last_page_ahead : nullptr),
            elems(first && last_page_ahead != nullptr ? last_page_ahead + v_off : nullptr),
            last_far == 0 ? 0 : last_far - last_bytes});
      }
    });
  };
  for (int64_t t0 = lo, t1 = lo; t0 < hi; t0 = t1) {
    t1 = std::min(hi, (t0 / step + 1) * step);
    const size_t n_keys = static_cast<size_t>(t1 - t0);
    for (size_t h = 0; h < H; ++h) {
      kv_head = it.kv_head + static_cast<int32_t>(h);
      q_all = s.q.data() + h * NS * D;
      rot_all = s.rotated_q.empty() ? nullptr : s.rotated_q.data() + h * NQ4 * D;
      packed = kDot ? s.packed_q.data() + h * packed_size : nullptr;
      acc_all = s.acc.data() + h * NS * acc_stride;
      m = s.m.data() + h * NS;
      l = s.l.data() + h * NS;
      // The step's pages: only the first head's are built. A later head's are the head before's,
      // moved on by a head (its pages, and the next head's, which it fetches ahead, lie
      // head_stride_bytes on: PagedKvView::Page), its far offsets the same. The last head's
      // pages ahead are the first head's a step on instead: their fields (last_ahead) were found
      // with the first head's build, at the cost of one more block table entry read per page.
      // Decode, Zen 4, one thread, calls alternated, middle heads moved against building every
      // head's: 1 x 2,048 (L3) bf16 (the vdpbf16ps path) 0.965-0.97x the time, f32 0.98x, f16
      // 0.98x; 32 x 2,048 and 1 x 32,768 (DRAM) 0.97-0.99x, at two threads too; contiguous 1.00x.
      // (Built page by page as they were read, the widening path's took 1.02-1.06x f32's time and
      // 1.06-1.09x f16's in L3: separate runs of the two builds.) The last head moved and patched
      // against built: 1 x 2,048 at two threads (two heads an item) bf16 0.98x, f32 0.99x, f16
      // 0.986-0.988x; 0.99-1.00x elsewhere.
      if (h > 0) {
        MoveSegments(view.head_stride_bytes, segments);
        if (h + 1 == H) {
          for (size_t i = 0; i < segments.size(); ++i) {
            segments[i].far_k = last_ahead[i].far_k;
            segments[i].far_v = last_ahead[i].far_v;
            segments[i].far = last_ahead[i].far;
          }
        }
      } else {
        build_segments(t0, t1);
        // V is fetched for the value pass, not with the keys: the value pass fetches its lead
        // rows, and (vdpbf16ps path) the keys of the step's last part fetch the step's first V
        // rows (instead of the value pass of the step before), as many as that part has. Fetched
        // with the keys, a 256-key step's V left L1 before it was read: 13% slower from DRAM, 3%
        // in L3 (one thread). The widening path splits them too (values_fetch_v).
        if (kDot && segments.size() > 1 && segments.front().n >= segments.back().n) {
          segments.back().first_v = segments.front().values;
          segments.back().lead_v = nullptr;
        }
      }
      // Scores of every page of the step, side by side: column = key - t0.
      if constexpr (kDot) {
        DotScores(packed, NQ, segments.data(), segments.size(), D, scores_all, t_pad);
      } else {
        for (const PageSegment<E>& g : segments) {
          TouchAhead(g.far_k, g.far_v);  // The pages a step ahead.
          const T* keys = g.keys;
          const size_t n_part = g.n;
          const size_t col = g.col;
          const T* lead_k = g.lead_k;
          const ptrdiff_t far_off = g.far;
          const T* lead_v = values_fetch_v ? nullptr : g.lead_v;
          // Only the first query group prefetches: the others read the same rows.
          size_t j = 0;
#if HWY_TARGET <= HWY_AVX3
          if (std::is_same_v<T, hwy::float16_t> && a.scores8) {
            for (; j + 2 * kQueryGroup <= NQ4; j += 2 * kQueryGroup) {
              Scores8<kSplit>(q_all + j * D, rot_all + j * D, keys, n_part, D,
                              scores_all + j * t_pad + col, t_pad, j == 0 ? lead_k : nullptr,
                              lead_v, far_off);
            }
          }
#endif
          for (; j < NQ4; j += kQueryGroup) {
            const float* rot = rot_all == nullptr ? nullptr : rot_all + j * D;
            const T* fetch_k = j == 0 ? lead_k : nullptr;
            if (j + kQueryGroup == NQ4 && NQ == NQ4 + 1) {
              // The last group and the query after it (GQA 5) in one pass, each key chunk widened
              // once for the five: decode 1 x 2,048 and 1 x 256, one thread, on Emerald Rapids,
              // calls alternated in one process, against the group and then the fifth query on
              // its own: bf16 0.86-0.95x the time, f16 0.81-0.94x (f32, which scores a key at a
              // time, and GQA 4 do not come here: 0.95-1.10x as controls). The same with two
              // queries after the group (GQA 6: 24 accumulators) took bf16 1.01-1.14x.
              Scores4<kSplit, 1>(q_all + j * D, rot, keys, n_part, D, scores_all + j * t_pad + col,
                                 t_pad, fetch_k, lead_v, far_off);
              j = NQ;
              break;
            }
            Scores4<kSplit>(q_all + j * D, rot, keys, n_part, D, scores_all + j * t_pad + col,
                            t_pad, fetch_k, lead_v, far_off);
          }
          if (pair_rest && j < NQ) {
            Scores2<kSplit>(q_all + j * D, keys, n_part, D, scores_all + j * t_pad + col, t_pad,
                            j == 0 ? lead_k : nullptr, lead_v, far_off);
            j += 2;
          }
          for (; j < NQ; ++j) {  // From NQ4.
            Scores1<kSplit>(q_all + j * D, keys, n_part, D, scores_all + j * t_pad + col,
                            j == 0 ? lead_k : nullptr, lead_v, far_off);
          }
        }
      }
      for (size_t j = 0; j < NQ; ++j) {
        float* row = scores_all + j * t_pad;
        if (a.soft_cap > 0) SoftCap(a.soft_cap, row, n_keys);
        for (size_t t = n_keys; t < (n_keys + N - 1) / N * N; ++t) row[t] = kNegInf;
      }
      const size_t n_pad = (n_keys + N - 1) / N * N;
      // Causal and sliding-window mask, only where the step crosses a row's bounds.
      ForEachMaskedKey(a, span, t0, t1, [&](int64_t r, int64_t key) {
        for (int64_t g = 0; g < G; ++g) {
          scores_all[static_cast<size_t>(r * G + g) * t_pad + static_cast<size_t>(key - t0)] =
              kNegInf;
        }
      });
      // Online softmax: rescale what was summed so far to the new running maximum.
      for (size_t j = 0; j < NQ; ++j) {
        float* row = scores_all + j * t_pad;
        auto vmax = neg_inf;
        for (size_t t = 0; t < n_pad; t += N) vmax = hn::Max(vmax, hn::LoadU(df, row + t));
        const float step_max = hn::GetLane(hn::MaxOfLanes(df, vmax));
        if (step_max == kNegInf) {
          for (size_t t = 0; t < n_pad; ++t) row[t] = 0.0f;
          if constexpr (kDot) std::fill_n(s.probabilities.data() + j * t_pad, n_pad, uint16_t{0});
          continue;
        }
        const float new_max = std::max(m[j], step_max);
        const float correction = m[j] == kNegInf ? 0.0f : std::exp(m[j] - new_max);
        float step_sum;
        if constexpr (kDot) {
          step_sum = DotSoftmaxRow(row, n_pad, new_max, s.probabilities.data() + j * t_pad);
        } else {
          const auto vnew = hn::Set(df, new_max);
          auto vsum = hn::Zero(df);
          for (size_t t = 0; t < n_pad; t += N) {
            const auto x = hn::LoadU(df, row + t);
            const auto p = ExpBelowMax(df, x, vnew);
            hn::StoreU(p, df, row + t);
            vsum = hn::Add(vsum, p);
          }
          step_sum = hn::GetLane(hn::SumOfLanes(df, vsum));
        }
        l[j] = l[j] * correction + step_sum;
        m[j] = new_max;
        if (correction != 1.0f) {
          float* HWY_RESTRICT acc = acc_all + j * acc_stride;
          const auto vc = hn::Set(df, correction);
          size_t d = 0;
          for (; d + N <= acc_stride; d += N) {
            hn::StoreU(hn::Mul(hn::LoadU(df, acc + d), vc), df, acc + d);
          }
          for (; d < acc_stride; ++d) acc[d] *= correction;
        }
      }
      if constexpr (kDot) {
        DotValues(s.probabilities.data(), t_pad, NQ, segments.data(), segments.size(), D, acc_all,
                  acc_stride);
      } else {
        // The step's pages, summed group by group over all of them (ValuesOf). Only the first
        // query group prefetches: the others read the same rows.
        const PageSegment<T>* const all = segments.data();
        const size_t num_runs = segments.size();
        size_t j = 0;
        const auto fetch = [&] { return values_fetch_v && j == 0; };
#if HWY_TARGET <= HWY_AVX3
        if (D % (2 * N) == 0) {
          for (; j + 2 * kQueryGroup <= NQ4; j += 2 * kQueryGroup) {
            const float* pj = scores_all + j * t_pad;
            // Seven queries padded to eight (GQA 7) sum no values for the padding: decode 1 x 256
            // and 1 x 2,048, one thread, on Emerald Rapids, calls alternated in one process, two
            // runs: bf16 0.95-1.01x the time, f16 0.93-1.00x, f32 0.92-1.03x (GQA 4: 0.98-1.01x).
            if (NQ - j == 2 * kQueryGroup - 1) {
              Values8<kSplit, 2 * kQueryGroup - 1>(pj, t_pad, all, num_runs, D, acc_all + j * D,
                                                   fetch());
            } else {
              Values8<kSplit>(pj, t_pad, all, num_runs, D, acc_all + j * D, fetch());
            }
          }
        }
        // The last group and the one or two queries after it (GQA 5 and 6) in one pass, each V
        // chunk widened once for all: decode 1 x 2,048, one thread, on Emerald Rapids, against a
        // group and then the rest (time relative to GQA 4 in the same run): GQA 5 0.84-0.96x the
        // time, GQA 6 0.81-0.96x, over the three dtypes.
        if (NQ > NQ4 && NQ - NQ4 <= 2 && NQ4 - j == kQueryGroup) {
          const float* pj = scores_all + j * t_pad;
          if (NQ - NQ4 == 1) {
            ValuesOf<kQueryGroup + 1, kSplit>(pj, t_pad, all, num_runs, D, acc_all + j * D,
                                              fetch());
          } else {
            ValuesOf<kQueryGroup + 2, kSplit>(pj, t_pad, all, num_runs, D, acc_all + j * D,
                                              fetch());
          }
          j = NQ;
        }
#endif
        for (; j < NQ4; j += kQueryGroup) {
          ValuesOf<kQueryGroup, kSplit>(scores_all + j * t_pad, t_pad, all, num_runs, D,
                                        acc_all + j * D, fetch());
        }
        if (pair_rest && j < NQ) {
          Values2<kSplit>(scores_all + j * t_pad, t_pad, all, num_runs, D, acc_all + j * D,
                          fetch());
          j += 2;
        }
        for (; j < NQ; ++j) {  // From NQ4.
          for (const PageSegment<T>& run : segments) {
            Values1<kSplit>(scores_all + j * t_pad + run.col, run.values, run.n, D, acc_all + j * D,
                            fetch() ? run.lead_v : nullptr, run.far);
          }
        }
      }
    }
  }

  for (size_t h = 0; h < H; ++h) {
    WriteRows<kDot, kSplit>(a, HeadOf(it, static_cast<int32_t>(h)),
                            s.acc.data() + h * NS * acc_stride, acc_stride, s.m.data() + h * NS,
                            s.l.data() + h * NS);
  }
}

}  // namespace pagedkv::internal::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // PAGEDKV_ATTENTION_KERNEL_INL_H_

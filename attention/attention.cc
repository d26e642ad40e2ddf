// Validation, work planning, threads and the flash-decoding reduction around the per-target
// kernels (attention_kernel-inl.h, tile_kernel-inl.h), and the choice between them per item.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "attention/attention.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
// The kernels come after foreach_target.h, which includes this file once per target; this
// comment keeps include sorting from moving them above it.
#include "attention/attention_kernel-inl.h"
#include "attention/tile_kernel-inl.h"

HWY_BEFORE_NAMESPACE();
namespace pagedkv::internal::HWY_NAMESPACE {

// The kernels are instantiated in translation units of their own, which a build compiles side by
// side (attend_f32.cc, attend_f16.cc, attend_bf16.cc, attend_bf16_dot.cc). All in this file, they
// kept one core of two busy for 9.8 minutes in the fuzz build (clang-14, ASan) and 7.2 in the ASan
// build (GCC) while the other finished everything else; split, those builds took 5.7 and 5.2
// minutes and the whole of .ci/run about 25 minutes instead of 33 (2 vCPUs, Zen 4).
extern template void AttendItemT<float, false>(const KernelArgs&, const WorkItem&);
extern template void AttendTileT<float>(const KernelArgs&, const WorkItem&);
extern template void AttendItemT<hwy::float16_t, false>(const KernelArgs&, const WorkItem&);
extern template void AttendTileT<hwy::float16_t>(const KernelArgs&, const WorkItem&);
extern template void AttendItemT<hwy::bfloat16_t, false, true>(const KernelArgs&, const WorkItem&);
extern template void AttendTileT<hwy::bfloat16_t>(const KernelArgs&, const WorkItem&);
extern template void AttendItemT<hwy::bfloat16_t, true>(const KernelArgs&, const WorkItem&);

// Picks the kernel for one work item: vdpbf16ps for bf16 pages where chosen (bf16_dot-inl.h);
// the tile kernel for items of many queries (tile_kernel-inl.h); else the row kernel. An item of
// several KV heads goes to the row kernel whole under PageFetch::kFar, which interleaves the heads
// step by step (AttendItemT), and head by head otherwise: with kNear forced on Zen 4 the
// interleaved order took 1.01-1.08x the time in L3 (bf16, f16, f32; 0.90-0.98x from DRAM), with
// no pages fetched a step ahead to make up for the jump between heads.
void AttendItem(const KernelArgs& args, const WorkItem& item) {
  const size_t queries = static_cast<size_t>(args.group * (item.row_end - item.row_begin));
  const bool tile = queries >= TileMinQueries();
  if ((tile || !args.fetch_far) && item.kv_heads > 1) {
    for (int32_t h = 0; h < item.kv_heads; ++h) AttendItem(args, HeadOf(item, h));
    return;
  }
  switch (args.view.dtype) {
    case DType::kF32:
      if (tile) return AttendTileT<float>(args, item);
      return AttendItemT<float, false>(args, item);
    case DType::kBF16:
      if constexpr (kHaveBf16Dot) {
        // One query alone (decode without GQA) widens: as fast, and its products are f32.
        if (args.bf16_products && queries >= 2 && args.view.head_dim % 8 == 0) {
          return AttendItemT<hwy::bfloat16_t, true>(args, item);
        }
      }
      if (tile) return AttendTileT<hwy::bfloat16_t>(args, item);
      // Widened by the split over the whole 2N dims, the rest in order (SplitDims). Head dim 80
      // on AVX-512, against PromoteTo for all 80 dims (1 x 2,048, one thread, calls alternated
      // in one process, two runs): GQA 4 0.86-0.97x the time, GQA 8 0.78-0.96x, GQA 1 and 2
      // 0.95-1.05x, f16 and f32 (not changed) 0.98-1.05x.
      return AttendItemT<hwy::bfloat16_t, false, true>(args, item);
    case DType::kF16:
      if (tile) return AttendTileT<hwy::float16_t>(args, item);
      return AttendItemT<hwy::float16_t, false>(args, item);
  }
}

}  // namespace pagedkv::internal::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <numeric>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "attention/kernel_args.h"
#include "attention/shared_prefix.h"
#include "attention/worker_pool.h"
#include "pagedkv/attention.h"

namespace pagedkv {
namespace internal {
HWY_EXPORT(AttendItem);

bool CpuHasBf16Dot() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool has_instruction = __builtin_cpu_supports("avx512bf16");
  return has_instruction;
#else
  return false;
#endif
}

bool CpuPrefersBf16Dot() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool amd = __builtin_cpu_is("amd");
  return amd && CpuHasBf16Dot();
#else
  return false;
#endif
}

bool CpuPrefersFarFetch() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool zen4 = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!__builtin_cpu_is("amd") || !__builtin_cpu_supports("avx512f") ||
        __get_cpuid(1, &eax, &ebx, &ecx, &edx) == 0) {
      return false;
    }
    // Family: the base family (bits 8-11) plus, where it is 0xF, the extended one (20-27).
    const unsigned base = (eax >> 8) & 0xF;
    const unsigned family = base == 0xF ? base + ((eax >> 20) & 0xFF) : base;
    return family == 0x19;
  }();
  return zen4;
#else
  return false;
#endif
}

namespace {
std::atomic<int> scores8_for_test{-1};
}  // namespace

bool UseScores8() {
  const int forced = scores8_for_test.load(std::memory_order_relaxed);
  if (forced >= 0) return forced == 1;
#if defined(__x86_64__) || defined(__i386__)
  static const bool amd = __builtin_cpu_is("amd");
  return !amd;
#else
  return true;
#endif
}

void SetScores8ForTest(int mode) { scores8_for_test.store(mode, std::memory_order_relaxed); }
}  // namespace internal

namespace {

using internal::KernelArgs;
using internal::WorkItem;

// Items of at most this many queries per KV head (decode, short verification) take several KV
// heads (see ExtendAttention).
constexpr int32_t kFewQueriesPerHead = 8;
// Where threads need more items, KV heads are split over items before keys are partitioned into
// pieces shorter than this many minimum partitions: the combine of short partitions costs more
// than items of fewer heads. bf16 decode, 1 x 2,048, two threads, Zen 4: all heads and four
// partitions of 512 keys took 1.10x the time of an item per head, two heads an item 0.99x.
constexpr int64_t kLongPartition = 4;
// min_shared_prefix_tokens under kAutoSharedPrefix (f32 and bf16 pages; see attention.h).
constexpr int32_t kAutoSharedTokens = 1024;

absl::Status Invalid(auto&&... parts) {
  return absl::InvalidArgumentError(absl::StrCat(parts...));
}

bool KnownBf16Products(Bf16Products p) {
  return p == Bf16Products::kAuto || p == Bf16Products::kDot || p == Bf16Products::kWiden;
}

bool KnownPageFetch(PageFetch p) {
  return p == PageFetch::kAuto || p == PageFetch::kNear || p == PageFetch::kFar;
}

absl::Status Validate(const PagedKvView& view, int32_t layer, int32_t num_q_heads,
                      absl::Span<const int32_t> q_offsets, absl::Span<const float> q,
                      absl::Span<float> out, const AttentionOptions& options) {
  if (absl::Status s = CheckView(view); !s.ok()) {
    return Invalid("attention: ", s.message());
  }
  if (layer < 0 || layer >= view.num_layers) {
    return Invalid("attention: layer ", layer, " out of range [0, ", view.num_layers, ")");
  }
  if (num_q_heads < 1 || num_q_heads % view.num_kv_heads != 0) {
    return Invalid("attention: num_q_heads ", num_q_heads, " is not a positive multiple of ",
                   view.num_kv_heads, " kv heads");
  }
  if (q_offsets.size() != static_cast<size_t>(view.num_seqs) + 1 || q_offsets[0] != 0) {
    return Invalid("attention: q_offsets has ", q_offsets.size(), " entries starting at ",
                   q_offsets.empty() ? -1 : q_offsets[0], "; want ", view.num_seqs + 1,
                   " starting at 0");
  }
  for (int32_t s = 0; s < view.num_seqs; ++s) {
    const int64_t n = int64_t{q_offsets[s + 1]} - q_offsets[s];
    if (n < 0 || n > view.seq_lens[s]) {
      return Invalid("attention: sequence ", s, " has ", n, " queries but ", view.seq_lens[s],
                     " cached positions (q_len must be in [0, length])");
    }
  }
  const int64_t expected = int64_t{q_offsets.back()} * num_q_heads * view.head_dim;
  if (static_cast<int64_t>(q.size()) != expected || static_cast<int64_t>(out.size()) != expected) {
    return Invalid("attention: q has ", q.size(), " and out ", out.size(), " floats; want ",
                   expected, " (", q_offsets.back(), " tokens * ", num_q_heads, " heads * ",
                   view.head_dim, " head_dim)");
  }
  // out may be q itself (in place: each work item reads its queries before it writes), but not
  // a shifted view of it, whose rows would be overwritten before they are read.
  const auto q_at = reinterpret_cast<std::uintptr_t>(q.data());
  const auto out_at = reinterpret_cast<std::uintptr_t>(out.data());
  const std::uintptr_t bytes = q.size() * sizeof(float);
  if (bytes > 0 && q_at != out_at && q_at < out_at + bytes && out_at < q_at + bytes) {
    return Invalid("attention: out overlaps q ", (out_at > q_at ? out_at - q_at : q_at - out_at),
                   " bytes away; pass the same buffer for in place, or separate ones");
  }
  // soft_cap * tanh(x / soft_cap) is inf * 0 for an infinite cap: NaN logits.
  if (!std::isfinite(options.scale) || options.scale < 0 || options.sliding_window < 0 ||
      !(options.soft_cap >= 0) || !std::isfinite(options.soft_cap) || options.num_threads < 0 ||
      options.min_partition_tokens < 1 || options.min_shared_prefix_tokens < kAutoSharedPrefix ||
      !KnownBf16Products(options.bf16_products) || !KnownPageFetch(options.page_fetch)) {
    return Invalid("attention: bad options (scale ", options.scale, ", sliding_window ",
                   options.sliding_window, ", soft_cap ", options.soft_cap, ", num_threads ",
                   options.num_threads, ", min_partition_tokens ", options.min_partition_tokens,
                   ", min_shared_prefix_tokens ", options.min_shared_prefix_tokens,
                   ", bf16_products ", static_cast<int>(options.bf16_products), ", page_fetch ",
                   static_cast<int>(options.page_fetch), ")");
  }
  return absl::OkStatus();
}

// The threads a call runs on (and plans its partitions for): as asked, or every hardware thread
// for 0, at most internal::kMaxThreads.
//
// The hardware count is taken once per process, and only for 0: std::thread::hardware_concurrency()
// opens and reads /sys/devices/system/cpu/online on every call (glibc 2.36), 5.8 us in a loop on
// the Zen 4 VM and 9-10 us inside decode calls, where it ran serially before the work items
// whatever num_threads asked for. Decode, calls alternated against a count per call: 1 x 2,048
// 0.92-0.97x the time (bf16, f32, f16, paged and contiguous, one and two threads), 1 x 256 bf16
// 0.79x, from DRAM 0.99x.
int32_t ThreadCount(int32_t requested) {
  if (requested > 0) return std::min(requested, internal::kMaxThreads);
  static const int32_t hardware =
      static_cast<int32_t>(std::max(1u, std::thread::hardware_concurrency()));
  return std::min(hardware, internal::kMaxThreads);
}

}  // namespace

absl::Status ExtendAttention(const PagedKvView& view, int32_t layer, int32_t num_q_heads,
                             absl::Span<const int32_t> q_offsets, absl::Span<const float> q,
                             absl::Span<float> out, const AttentionOptions& options) {
  if (absl::Status s = Validate(view, layer, num_q_heads, q_offsets, q, out, options); !s.ok()) {
    return s;
  }
  KernelArgs args;
  args.view = view;
  args.layer = layer;
  args.num_q_heads = num_q_heads;
  args.group = num_q_heads / view.num_kv_heads;
  args.q_offsets = q_offsets.data();
  args.q = q.data();
  args.out = out.data();
  args.scale = options.scale > 0 ? options.scale
                                 : 1.0f / std::sqrt(static_cast<float>(view.head_dim));
  args.soft_cap = options.soft_cap;
  args.sliding_window = options.sliding_window;
  args.bf16_products = options.bf16_products == Bf16Products::kDot
                           ? internal::CpuHasBf16Dot()
                           : options.bf16_products == Bf16Products::kAuto &&
                                 internal::CpuPrefersBf16Dot();
  args.fetch_far = options.page_fetch == PageFetch::kFar ||
                   (options.page_fetch == PageFetch::kAuto && internal::CpuPrefersFarFetch());
  args.scores8 = internal::UseScores8();
  const int32_t threads = ThreadCount(options.num_threads);

  // Query rows are tiled so that a tile holds about 64 query vectors of one KV head.
  const int32_t rows_per_tile = std::max<int32_t>(1, 64 / args.group);
  const int64_t want = 2 * int64_t{threads};
  const int64_t D = view.head_dim;
  const int64_t G = args.group;

  // Shared prefixes (AttentionOptions::min_shared_prefix_tokens). The queries of each group's
  // sequences are copied, one after another, into a virtual sequence of the group's shared keys:
  // its block table is the group's first member's, and its row r sits at position tokens - 1 + r,
  // so that every row sees every shared key. Its items (shared_args) read each shared page once
  // for all the group's queries; each member's own keys, [tokens, length), are its items of its
  // own. Both write partials, which the combine below merges as it merges partitions.
  const int32_t min_shared = options.min_shared_prefix_tokens != kAutoSharedPrefix
                                 ? options.min_shared_prefix_tokens
                             : view.dtype == DType::kF16 ? 0
                                                         : kAutoSharedTokens;
  std::vector<internal::SharedPrefix> groups;
  if (min_shared > 0 && options.sliding_window == 0) {
    groups = internal::FindSharedPrefixes(view, q_offsets, min_shared, rows_per_tile);
  }
  KernelArgs shared_args = args;
  std::vector<int32_t> shared_offsets = {0};
  std::vector<int32_t> shared_tables;
  std::vector<int64_t> shared_lens;
  std::vector<float> shared_q;
  // Each viewed sequence's group and first row there; group -1: none.
  struct Member {
    int32_t group = -1;
    int32_t row = 0;
  };
  std::vector<Member> member_of(groups.empty() ? 0 : static_cast<size_t>(view.num_seqs));
  const int64_t row_floats = int64_t{num_q_heads} * D;
  for (size_t g = 0; g < groups.size(); ++g) {
    int32_t rows = 0;
    for (int32_t s : groups[g].seqs) {
      member_of[static_cast<size_t>(s)] = Member{static_cast<int32_t>(g), rows};
      shared_q.insert(shared_q.end(), q.begin() + q_offsets[s] * row_floats,
                      q.begin() + q_offsets[s + 1] * row_floats);
      rows += q_offsets[s + 1] - q_offsets[s];
    }
    shared_offsets.push_back(shared_offsets.back() + rows);
    shared_tables.push_back(view.block_offsets[groups[g].seqs[0]]);
    shared_lens.push_back(groups[g].tokens + rows - 1);
  }
  shared_args.view.num_seqs = static_cast<int32_t>(groups.size());
  shared_args.view.block_offsets = shared_tables.data();
  shared_args.view.seq_lens = shared_lens.data();
  shared_args.q_offsets = shared_offsets.data();
  shared_args.q = shared_q.data();
  shared_args.out = nullptr;

  // Query tiles and the keys they attend to, before they are split over KV heads and partitions.
  // `partial`: its results go to the combine (a group's shared keys or a member's own).
  struct Unit {
    const KernelArgs* args;
    int32_t seq, row_begin, row_end;
    int64_t kv_begin, kv_end;
    bool partial;
  };
  std::vector<Unit> units;
  for (int32_t s = 0; s < view.num_seqs; ++s) {
    const int32_t n = q_offsets[s + 1] - q_offsets[s];
    const Member member = member_of.empty() ? Member{} : member_of[static_cast<size_t>(s)];
    if (member.group >= 0) {  // n <= rows_per_tile (FindSharedPrefixes' max_rows).
      const int64_t shared = groups[static_cast<size_t>(member.group)].tokens;
      units.push_back(Unit{&args, s, 0, n, shared, view.seq_lens[s], true});
      continue;
    }
    for (int32_t r = 0; r < n; r += rows_per_tile) {
      units.push_back(
          Unit{&args, s, r, std::min(n, r + rows_per_tile), 0, view.seq_lens[s], false});
    }
  }
  const size_t first_shared_unit = units.size();
  for (size_t g = 0; g < groups.size(); ++g) {
    units.push_back(Unit{&shared_args, static_cast<int32_t>(g), 0,
                         shared_offsets[g + 1] - shared_offsets[g], 0, groups[g].tokens, true});
  }
  // Query tiles, each counted as often as its keys could be partitioned into pieces of
  // kLongPartition minimum partitions.
  int64_t tile_parts = 0;
  for (const Unit& u : units) {
    tile_parts += std::max<int64_t>(
        1, (u.kv_end - u.kv_begin) / (kLongPartition * options.min_partition_tokens));
  }
  // Tiles of a few queries per KV head (decode, short verification) take several KV heads per
  // item: the row kernel then reads a step's pages for one head after another (AttendItemT), so
  // that a sequence's blocks are read for all heads close in time. All heads, or the most (a
  // divisor of them) that still leave every thread two items, long partitions counted.
  int32_t heads_per_item = view.num_kv_heads;
  while (heads_per_item > 1 &&
         (view.num_kv_heads % heads_per_item != 0 ||
          (threads > 1 && tile_parts * (view.num_kv_heads / heads_per_item) < want))) {
    --heads_per_item;
  }
  struct Item {
    WorkItem item;
    size_t unit;
  };
  std::vector<Item> items;
  std::vector<size_t> unit_items;  // Unit i's items: [unit_items[i], unit_items[i + 1]).
  for (size_t i = 0; i < units.size(); ++i) {
    unit_items.push_back(items.size());
    const Unit& u = units[i];
    const int32_t heads =
        (u.row_end - u.row_begin) * args.group <= kFewQueriesPerHead ? heads_per_item : 1;
    for (int32_t h = 0; h < view.num_kv_heads; h += heads) {
      items.push_back(
          Item{WorkItem{u.seq, h, u.row_begin, u.row_end, u.kv_begin, u.kv_end, -1, heads}, i});
    }
  }
  unit_items.push_back(items.size());
  // Flash-decoding: too few items to keep every thread busy, so long key ranges are split into
  // partitions whose partial softmax sums are combined below. Partitions start on a page's first
  // key, or every 64 keys inside larger pages: a contiguous cache (one page per sequence) is
  // split as finely as a paged one. (A group's shared keys end on a page's last.)
  const int64_t granule = std::min<int64_t>(view.block_size, 64);
  std::vector<WorkItem> work;
  std::vector<const KernelArgs*> work_args;
  // Each item's partial slots (among its KernelArgs' slots): head h of part p in slot
  // first_slot + p * kv_heads + h; -1: none.
  std::vector<int32_t> first_slot(items.size(), -1);
  std::vector<int32_t> parts_of(items.size(), 1);
  // The slots of args' items and of shared_args', and the most query rows of an item of each.
  int32_t slots[2] = {0, 0};
  int64_t partial_rows[2] = {0, 0};
  for (size_t i = 0; i < items.size(); ++i) {
    const WorkItem& item = items[i].item;
    const Unit& unit = units[items[i].unit];
    const int64_t keys = item.kv_end - item.kv_begin;
    int64_t parts = 1;
    if (threads > 1 && static_cast<int64_t>(items.size()) < want) {
      parts = std::min<int64_t>((want + static_cast<int64_t>(items.size()) - 1) /
                                    static_cast<int64_t>(items.size()),
                                keys / options.min_partition_tokens);
      parts = std::max<int64_t>(parts, 1);
    }
    if (parts == 1 && !unit.partial) {
      work.push_back(item);
      work_args.push_back(unit.args);
      continue;
    }
    const int k = unit.args == &shared_args ? 1 : 0;
    first_slot[i] = slots[k];
    parts_of[i] = static_cast<int32_t>(parts);
    partial_rows[k] = std::max<int64_t>(partial_rows[k], item.row_end - item.row_begin);
    const int64_t granules = (keys + granule - 1) / granule;
    for (int64_t p = 0; p < parts; ++p) {
      WorkItem piece = item;
      piece.kv_begin = item.kv_begin + granules * p / parts * granule;
      piece.kv_end = std::min(item.kv_end, item.kv_begin + granules * (p + 1) / parts * granule);
      piece.partial = slots[k];
      slots[k] += item.kv_heads;
      work.push_back(piece);
      work_args.push_back(unit.args);
    }
  }
  // Each piece writes all of its slot's queries (m, l and the unnormalized sums) before the
  // combine reads them, so the slots start uninitialized: sized for the partial items' rows, a
  // decode's partials are (group) x (head_dim + 2) floats a slot, not a query tile's, and a
  // group's shared items' (all its queries) lie apart from its members' own.
  std::unique_ptr<float[]> partials;
  const int64_t total_slots = int64_t{slots[0]} + slots[1];
  if (total_slots > 0) {
    args.partial_stride = partial_rows[0] * G * (D + 2);
    shared_args.partial_stride = partial_rows[1] * G * (D + 2);
    partials.reset(new float[static_cast<size_t>(slots[0] * args.partial_stride +
                                                 slots[1] * shared_args.partial_stride)]);
    args.partials = partials.get();
    shared_args.partials = args.partials + slots[0] * args.partial_stride;
  }
  internal::ParallelFor(static_cast<int64_t>(work.size()), threads, [&](int64_t i) {
    const auto k = static_cast<size_t>(i);
    HWY_DYNAMIC_DISPATCH(internal::AttendItem)(*work_args[k], work[k]);
  });
  if (total_slots == 0) return absl::OkStatus();

  // What the combine writes: the rows of one viewed sequence's item and one of its KV heads, from
  // the partials of its first query in each of its slots (sources[first_source, + sources)).
  struct Output {
    int32_t seq, row_begin, rows, kv_head;
    size_t first_source, sources;
  };
  std::vector<const float*> sources;
  std::vector<Output> outputs;
  // Appends head kv_head's slots of item i, the output's query j at `query` + j there.
  const auto add_sources = [&](size_t i, int32_t kv_head, int64_t query) {
    const WorkItem& item = items[i].item;
    const KernelArgs& a = *units[items[i].unit].args;
    for (int32_t p = 0; p < parts_of[i]; ++p) {
      const int64_t slot = first_slot[i] + p * item.kv_heads + (kv_head - item.kv_head);
      sources.push_back(a.partials + slot * a.partial_stride + query * (D + 2));
    }
  };
  for (size_t i = 0; i < items.size(); ++i) {
    const WorkItem& item = items[i].item;
    if (first_slot[i] < 0 || units[items[i].unit].args != &args) continue;
    const Member member = member_of.empty() ? Member{} : member_of[static_cast<size_t>(item.seq)];
    for (int32_t h = item.kv_head; h < item.kv_head + item.kv_heads; ++h) {
      Output o{item.seq, item.row_begin, item.row_end - item.row_begin, h, sources.size(), 0};
      add_sources(i, h, 0);
      if (member.group >= 0) {
        // The group's shared item of this head.
        const size_t unit = first_shared_unit + static_cast<size_t>(member.group);
        for (size_t k = unit_items[unit]; k < unit_items[unit + 1]; ++k) {
          const WorkItem& shared = items[k].item;
          if (shared.kv_head <= h && h < shared.kv_head + shared.kv_heads) {
            add_sources(k, h, int64_t{member.row} * G);
          }
        }
      }
      o.sources = sources.size() - o.first_source;
      outputs.push_back(o);
    }
  }
  // Combine: out = sum_p exp(m_p - M) acc_p / sum_p exp(m_p - M) l_p over an output's sources.
  internal::ParallelFor(static_cast<int64_t>(outputs.size()), threads, [&](int64_t k) {
    const Output& o = outputs[static_cast<size_t>(k)];
    const float* const* src = sources.data() + o.first_source;
    thread_local std::vector<float> acc;
    acc.resize(static_cast<size_t>(D));
    for (int64_t j = 0; j < o.rows * G; ++j) {
      const auto part_of = [&](size_t i) { return src[i] + j * (D + 2); };
      float max = -std::numeric_limits<float>::infinity();
      for (size_t i = 0; i < o.sources; ++i) max = std::max(max, part_of(i)[0]);
      float sum = 0;
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (size_t i = 0; i < o.sources; ++i) {
        const float* part = part_of(i);
        if (part[0] == -std::numeric_limits<float>::infinity()) continue;
        const float w = std::exp(part[0] - max);
        sum += w * part[1];
        for (int64_t d = 0; d < D; ++d) acc[static_cast<size_t>(d)] += w * part[2 + d];
      }
      float* dst =
          out.data() +
          ((q_offsets[o.seq] + o.row_begin + j / G) * num_q_heads + o.kv_head * G + j % G) * D;
      for (int64_t d = 0; d < D; ++d) dst[d] = sum > 0 ? acc[static_cast<size_t>(d)] / sum : 0.0f;
    }
  });
  return absl::OkStatus();
}

absl::Status DecodeAttention(const PagedKvView& view, int32_t layer, int32_t num_q_heads,
                             absl::Span<const float> q, absl::Span<float> out,
                             const AttentionOptions& options) {
  std::vector<int32_t> q_offsets(static_cast<size_t>(view.num_seqs) + 1);
  std::iota(q_offsets.begin(), q_offsets.end(), 0);
  return ExtendAttention(view, layer, num_q_heads, q_offsets, q, out, options);
}

}  // namespace pagedkv
#endif  // HWY_ONCE

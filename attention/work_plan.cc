#include "attention/work_plan.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "absl/types/span.h"
#include "attention/worker_pool.h"

namespace pagedkv::internal {
namespace {

// Items of at most this many queries per KV head (decode, short verification) take several KV
// heads (see the constructor).
constexpr int32_t kFewQueriesPerHead = 8;
// Where threads need more items, KV heads are split over items before keys are partitioned into
// pieces shorter than this many minimum partitions: the combine of short partitions costs more
// than items of fewer heads. bf16 decode, 1 x 2,048, two threads, Zen 4: all heads and four
// partitions of 512 keys took 1.10x the time of an item per head, two heads an item 0.99x.
constexpr int64_t kLongPartition = 4;
// min_shared_prefix_tokens under kAutoSharedPrefix (f32 and bf16 pages; see attention.h).
constexpr int32_t kAutoSharedTokens = 1024;

}  // namespace

WorkPlan::WorkPlan(KernelArgs& args, const AttentionOptions& options, int32_t threads)
    : args_(args) {
  const PagedKvView& view = args.view;
  const int32_t num_q_heads = args.num_q_heads;
  const int32_t* const q_offsets = args.q_offsets;
  const float* const q = args.q;
  // Query rows are tiled so that a tile holds about 64 query vectors of one KV head.
  const int32_t rows_per_tile = std::max<int32_t>(1, 64 / args.group);
  const int64_t want = 2 * int64_t{threads};
  const int64_t D = view.head_dim;
  const int64_t G = args.group;

  // Shared prefixes (AttentionOptions::min_shared_prefix_tokens). The queries of each group's
  // sequences are copied, one after another, into a virtual sequence of the group's shared keys:
  // its block table is the group's first member's, and its row r sits at position tokens - 1 + r,
  // so that every row sees every shared key. Its items (shared_args_) read each shared page once
  // for all the group's queries; each member's own keys, [tokens, length), are its items of its
  // own. Both write partials, which Combine merges as it merges partitions.
  const int32_t min_shared = options.min_shared_prefix_tokens != kAutoSharedPrefix
                                 ? options.min_shared_prefix_tokens
                             : view.dtype == DType::kF16 ? 0
                                                         : kAutoSharedTokens;
  if (min_shared > 0 && options.sliding_window == 0) {
    groups_ = FindSharedPrefixes(
        view, absl::MakeConstSpan(q_offsets, static_cast<size_t>(view.num_seqs) + 1), min_shared,
        rows_per_tile);
  }
  shared_args_ = args;
  // Each viewed sequence's group and first row there; group -1: none.
  struct Member {
    int32_t group = -1;
    int32_t row = 0;
  };
  std::vector<Member> member_of(groups_.empty() ? 0 : static_cast<size_t>(view.num_seqs));
  const int64_t row_floats = int64_t{num_q_heads} * D;
  for (size_t g = 0; g < groups_.size(); ++g) {
    int32_t rows = 0;
    for (int32_t s : groups_[g].seqs) {
      member_of[static_cast<size_t>(s)] = Member{static_cast<int32_t>(g), rows};
      shared_q_.insert(shared_q_.end(), q + q_offsets[s] * row_floats,
                       q + q_offsets[s + 1] * row_floats);
      rows += q_offsets[s + 1] - q_offsets[s];
    }
    shared_offsets_.push_back(shared_offsets_.back() + rows);
    shared_tables_.push_back(view.block_offsets[groups_[g].seqs[0]]);
    shared_lens_.push_back(groups_[g].tokens + rows - 1);
  }
  shared_args_.view.num_seqs = static_cast<int32_t>(groups_.size());
  shared_args_.view.block_offsets = shared_tables_.data();
  shared_args_.view.seq_lens = shared_lens_.data();
  shared_args_.q_offsets = shared_offsets_.data();
  shared_args_.q = shared_q_.data();
  shared_args_.out = nullptr;

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
      const int64_t shared = groups_[static_cast<size_t>(member.group)].tokens;
      units.push_back(Unit{&args, s, 0, n, shared, view.seq_lens[s], true});
      continue;
    }
    for (int32_t r = 0; r < n; r += rows_per_tile) {
      units.push_back(
          Unit{&args, s, r, std::min(n, r + rows_per_tile), 0, view.seq_lens[s], false});
    }
  }
  const size_t first_shared_unit = units.size();
  for (size_t g = 0; g < groups_.size(); ++g) {
    units.push_back(Unit{&shared_args_, static_cast<int32_t>(g), 0,
                         shared_offsets_[g + 1] - shared_offsets_[g], 0, groups_[g].tokens, true});
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
  // partitions whose partial softmax sums Combine merges. Partitions start on a page's first
  // key, or every 64 keys inside larger pages: a contiguous cache (one page per sequence) is
  // split as finely as a paged one. (A group's shared keys end on a page's last.)
  const int64_t granule = std::min<int64_t>(view.block_size, 64);
  // Each item's partial slots (among its KernelArgs' slots): head h of part p in slot
  // first_slot + p * kv_heads + h; -1: none.
  std::vector<int32_t> first_slot(items.size(), -1);
  std::vector<int32_t> parts_of(items.size(), 1);
  // The slots of args' items and of shared_args_'s, and the most query rows of an item of each.
  int32_t slots[2] = {0, 0};
  int64_t partial_rows[2] = {0, 0};
  for (size_t i = 0; i < items.size(); ++i) {
    const WorkItem& item = items[i].item;
    const Unit& unit = units[items[i].unit];
    const int64_t keys = item.kv_end - item.kv_begin;
    int64_t parts = 1;
    if (threads > 1 && static_cast<int64_t>(items.size()) < want) {
      parts = std::min<int64_t>(
          (want + static_cast<int64_t>(items.size()) - 1) / static_cast<int64_t>(items.size()),
          keys / options.min_partition_tokens);
      parts = std::max<int64_t>(parts, 1);
    }
    if (parts == 1 && !unit.partial) {
      work_.push_back(item);
      work_args_.push_back(unit.args);
      continue;
    }
    const int k = unit.args == &shared_args_ ? 1 : 0;
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
      work_.push_back(piece);
      work_args_.push_back(unit.args);
    }
  }
  // Each piece writes all of its slot's queries (m, l and the unnormalized sums) before the
  // combine reads them, so the slots start uninitialized: sized for the partial items' rows, a
  // decode's partials are (group) x (head_dim + 2) floats a slot, not a query tile's, and a
  // group's shared items' (all its queries) lie apart from its members' own.
  const int64_t total_slots = int64_t{slots[0]} + slots[1];
  if (total_slots > 0) {
    args.partial_stride = partial_rows[0] * G * (D + 2);
    shared_args_.partial_stride = partial_rows[1] * G * (D + 2);
    partials_.reset(new float[static_cast<size_t>(slots[0] * args.partial_stride +
                                                  slots[1] * shared_args_.partial_stride)]);
    args.partials = partials_.get();
    shared_args_.partials = args.partials + slots[0] * args.partial_stride;
  }

  // What Combine writes: an Output for each KV head of each item of a viewed sequence that wrote
  // partials. add_sources appends head kv_head's slots of item i, the output's query j at
  // `query` + j there.
  const auto add_sources = [&](size_t i, int32_t kv_head, int64_t query) {
    const WorkItem& item = items[i].item;
    const KernelArgs& a = *units[items[i].unit].args;
    for (int32_t p = 0; p < parts_of[i]; ++p) {
      const int64_t slot = first_slot[i] + p * item.kv_heads + (kv_head - item.kv_head);
      sources_.push_back(a.partials + slot * a.partial_stride + query * (D + 2));
    }
  };
  for (size_t i = 0; i < items.size(); ++i) {
    const WorkItem& item = items[i].item;
    if (first_slot[i] < 0 || units[items[i].unit].args != &args) continue;
    const Member member = member_of.empty() ? Member{} : member_of[static_cast<size_t>(item.seq)];
    for (int32_t h = item.kv_head; h < item.kv_head + item.kv_heads; ++h) {
      Output o{item.seq, item.row_begin, item.row_end - item.row_begin, h, sources_.size(), 0};
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
      o.sources = sources_.size() - o.first_source;
      outputs_.push_back(o);
    }
  }
}

void WorkPlan::Combine(int32_t threads) const {
  const int64_t D = args_.view.head_dim;
  const int64_t G = args_.group;
  // out = sum_p exp(m_p - M) acc_p / sum_p exp(m_p - M) l_p over an output's sources p.
  ParallelFor(static_cast<int64_t>(outputs_.size()), threads, [&](int64_t k) {
    const Output& o = outputs_[static_cast<size_t>(k)];
    const float* const* src = sources_.data() + o.first_source;
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
      float* dst = args_.out + ((args_.q_offsets[o.seq] + o.row_begin + j / G) * args_.num_q_heads +
                                o.kv_head * G + j % G) *
                                   D;
      for (int64_t d = 0; d < D; ++d) dst[d] = sum > 0 ? acc[static_cast<size_t>(d)] / sum : 0.0f;
    }
  });
}

}  // namespace pagedkv::internal

#include "attention/shared_prefix.h"

#include <algorithm>
#include <cstdint>
#include <vector>

namespace pagedkv::internal {

std::vector<SharedPrefix> FindSharedPrefixes(const PagedKvView& view,
                                             absl::Span<const int32_t> q_offsets,
                                             int64_t min_tokens, int32_t max_rows) {
  const int64_t bs = view.block_size;
  const int64_t min_blocks = std::max<int64_t>(1, (min_tokens + bs - 1) / bs);
  const auto queries = [&](int32_t s) { return int64_t{q_offsets[s + 1]} - q_offsets[s]; };
  // Blocks each sequence could share: those wholly before its first query's position.
  const auto cap = [&](int32_t s) { return (view.seq_lens[s] - queries(s)) / bs; };
  std::vector<int32_t> candidates;
  for (int32_t s = 0; s < view.num_seqs; ++s) {
    if (queries(s) >= 1 && queries(s) <= max_rows && cap(s) >= min_blocks) {
      candidates.push_back(s);
    }
  }
  std::stable_sort(candidates.begin(), candidates.end(), [&](int32_t a, int32_t b) {
    return view.BlockTable(a)[0] < view.BlockTable(b)[0];
  });
  std::vector<SharedPrefix> groups;
  SharedPrefix group;
  int64_t blocks = 0;  // The group's blocks in common.
  int64_t rows = 0;
  const auto close = [&] {
    if (group.seqs.size() >= 2) {
      group.tokens = blocks * bs;
      groups.push_back(std::move(group));
    }
    group = SharedPrefix{};
  };
  for (int32_t s : candidates) {
    const BlockId* table = view.BlockTable(s);
    if (!group.seqs.empty()) {
      const BlockId* first = view.BlockTable(group.seqs[0]);
      const int64_t limit = std::min(blocks, cap(s));
      int64_t common = 0;
      while (common < limit && table[common] == first[common]) ++common;
      if (common >= min_blocks && rows + queries(s) <= max_rows) {
        group.seqs.push_back(s);
        blocks = common;
        rows += queries(s);
        continue;
      }
      close();
    }
    group.seqs.push_back(s);
    blocks = cap(s);
    rows = queries(s);
  }
  close();
  return groups;
}

}  // namespace pagedkv::internal

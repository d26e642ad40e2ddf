// Sequences of one attention call whose block tables start with the same blocks: forks for beam
// search and parallel sampling, prompts shared through the prefix cache. Their queries can be
// attended to those pages together, so that each page is read once for all of them.
#ifndef PAGEDKV_ATTENTION_SHARED_PREFIX_H_
#define PAGEDKV_ATTENTION_SHARED_PREFIX_H_

#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "pagedkv/view.h"

namespace pagedkv::internal {

// Viewed sequences (at least two, in view order) whose keys [0, tokens) lie in the same pages.
struct SharedPrefix {
  std::vector<int32_t> seqs;
  int64_t tokens = 0;  // Whole blocks.
};

// The groups of sequences that share at least `min_tokens` keys, each of at most `max_rows`
// queries in all. For a sequence of length L with n queries (q_offsets, as ExtendAttention takes
// them; n >= 1) the shared keys are at most L - n: every query sees all of them, and at least one
// key of the sequence (its newest) is its own. Sequences with the same first block are taken in
// view order, each joining the group being built while the group keeps min_tokens in common and
// fits max_rows, else starting a new one; a sequence left alone belongs to no group. Linear in the
// sequences and the table entries compared, after sorting by first block.
std::vector<SharedPrefix> FindSharedPrefixes(const PagedKvView& view,
                                             absl::Span<const int32_t> q_offsets,
                                             int64_t min_tokens, int32_t max_rows);

}  // namespace pagedkv::internal

#endif  // PAGEDKV_ATTENTION_SHARED_PREFIX_H_

// How one attention call's work is cut into items that run in parallel, and the combine of the
// partial results some of them write: flash-decoding partitions of long key ranges, and the
// shared prefixes of forked sequences, read once for all of a group's queries.
#ifndef PAGEDKV_ATTENTION_WORK_PLAN_H_
#define PAGEDKV_ATTENTION_WORK_PLAN_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "attention/kernel_args.h"
#include "attention/shared_prefix.h"
#include "pagedkv/attention.h"

namespace pagedkv::internal {

class WorkPlan {
 public:
  // Plans the call `args` describes (its view, queries and output; validated) on `threads`
  // threads, and sets args.partials and partial_stride to the plan's partials. args must outlive
  // the plan, and the plan must not move: its items point at args and at its own copy of them.
  WorkPlan(KernelArgs& args, const AttentionOptions& options, int32_t threads);
  WorkPlan(const WorkPlan&) = delete;
  WorkPlan& operator=(const WorkPlan&) = delete;

  // The items, each run once, in any order, with the arguments it reads: the call's, or for a
  // group's shared keys a virtual sequence of the group's queries (see the constructor).
  size_t size() const { return work_.size(); }
  const WorkItem& item(size_t i) const { return work_[i]; }
  const KernelArgs& args_of(size_t i) const { return *work_args_[i]; }
  // The groups whose shared keys are read once for all their queries.
  const std::vector<SharedPrefix>& groups() const { return groups_; }

  // Once every item has run: writes the outputs of the items that wrote partials, on `threads`
  // threads.
  void Combine(int32_t threads) const;

 private:
  // The rows of one viewed sequence's item and one of its KV heads, from the partials of their
  // first query in each of the slots sources_[first_source, first_source + sources).
  struct Output {
    int32_t seq, row_begin, rows, kv_head;
    size_t first_source, sources;
  };

  const KernelArgs& args_;
  std::vector<SharedPrefix> groups_;
  // The groups' virtual sequences: the call's arguments but for these.
  KernelArgs shared_args_;
  std::vector<int32_t> shared_offsets_ = {0};
  std::vector<int32_t> shared_tables_;
  std::vector<int64_t> shared_lens_;
  std::vector<float> shared_q_;
  std::vector<WorkItem> work_;
  std::vector<const KernelArgs*> work_args_;
  std::unique_ptr<float[]> partials_;
  std::vector<Output> outputs_;
  std::vector<const float*> sources_;
};

}  // namespace pagedkv::internal

#endif  // PAGEDKV_ATTENTION_WORK_PLAN_H_

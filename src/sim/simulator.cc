#include "src/sim/simulator.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <deque>
#include <memory>
#include <random>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace pagedkv::sim {
namespace {

using Clock = std::chrono::steady_clock;

// One admitted request: its beams (or samples), all at the same length.
struct Group {
  int64_t request = 0;
  std::vector<SimSeq> seqs;
  int64_t generated = 0;
  bool beam_search = false;
  std::mt19937_64 rng;
};

struct Pending {
  int64_t request = 0;
  bool first_admission = true;
  std::vector<int32_t> prompt;  // Made on the first admission attempt.
};

int32_t DecodeToken(int64_t request, size_t seq, int64_t position) {
  uint64_t x = (static_cast<uint64_t>(request) << 24) ^ (static_cast<uint64_t>(seq) << 48) ^
               static_cast<uint64_t>(position);
  x = (x ^ (x >> 31)) * 0x9e3779b97f4a7c15ull;
  return static_cast<int32_t>((x >> 33) % 128000);
}

class Run {
 public:
  Run(const Workload& workload, const SimOptions& options, int64_t max_seq_len,
      int64_t budget_tokens, int64_t bytes_per_token, Backend& backend)
      : requests_(workload.requests),
        options_(options),
        max_seq_len_(max_seq_len),
        budget_tokens_(budget_tokens),
        bytes_per_token_(bytes_per_token),
        backend_(backend) {}

  absl::StatusOr<PolicyResult> Go() {
    const Clock::time_point wall_start = Clock::now();
    result_.policy = backend_.name();
    const int64_t n = static_cast<int64_t>(requests_.size());
    int64_t reported = -1;
    while (finished_ < n) {
      const double now = static_cast<double>(step_) * options_.step_seconds;
      while (next_ < n && Arrival(next_) <= now) waiting_.push_back(Pending{next_++, true, {}});
      if (running_.empty() && waiting_.empty()) {
        // Idle: jump to the next arrival.
        step_ = std::max<int64_t>(step_ + 1, static_cast<int64_t>(std::ceil(
                                                 Arrival(next_) / options_.step_seconds)));
        continue;
      }
      const Clock::time_point t0 = Clock::now();
      Admit();
      for (size_t i = 0; i < running_.size(); ++i) {
        if (!StepGroup(i)) break;  // The group preempted itself: it was the newest.
      }
      manager_ns_ += std::chrono::duration<double, std::nano>(Clock::now() - t0).count();
      attention_ns_ += Attend();
      Complete();
      if (absl::Status s = CheckStep(); !s.ok()) return s;
      Sample();
      ++step_;
      ++active_steps_;
      if (options_.progress && finished_ * 100 / std::max<int64_t>(n, 1) != reported) {
        reported = finished_ * 100 / std::max<int64_t>(n, 1);
        options_.progress(static_cast<double>(finished_) / static_cast<double>(n));
      }
    }
    const Usage end = backend_.usage();
    if (end.slots_reserved != 0 || end.tokens_stored != 0) {
      return absl::InternalError(absl::StrCat(result_.policy, ": ", end.slots_reserved,
                                              " slots and ", end.tokens_stored,
                                              " tokens still held after every request finished"));
    }
    Finish(std::chrono::duration<double>(Clock::now() - wall_start).count());
    return result_;
  }

 private:
  double Arrival(int64_t i) const {
    return requests_[static_cast<size_t>(i)].arrival_seconds / options_.time_scale;
  }
  int32_t Width(const Request& r) const {
    const int32_t beams = options_.beam_width > 0 ? options_.beam_width : r.beam_width;
    const int32_t samples = options_.samples > 0 ? options_.samples : r.samples;
    return std::max({beams, samples, 1});
  }
  bool IsBeamSearch(const Request& r) const {
    return (options_.beam_width > 0 ? options_.beam_width : r.beam_width) > 1;
  }

  void Reject() {
    ++result_.rejected;
    ++finished_;
    waiting_.pop_front();
  }

  // First come, first served; the head of the queue waits for room (no overtaking).
  void Admit() {
    const int64_t watermark =
        static_cast<int64_t>(options_.watermark * static_cast<double>(budget_tokens_));
    while (!waiting_.empty()) {
      Pending& p = waiting_.front();
      const Request& r = requests_[static_cast<size_t>(p.request)];
      if (r.prompt_tokens + r.output_tokens > max_seq_len_) {
        Reject();
        continue;
      }
      if (p.prompt.empty()) {
        Request shaped = r;
        if (options_.shared_prefix > 0) {
          shaped.system_prompt = 1 << 20;
          shaped.shared_prefix = std::min(options_.shared_prefix, r.prompt_tokens);
        }
        p.prompt = PromptTokens(shaped, p.request, options_.seed);
      }
      int64_t cached = 0;
      std::optional<SimSeq> seq = backend_.Admit(p.prompt, watermark, &cached);
      auto group = std::make_unique<Group>();
      bool admitted = seq.has_value();
      if (admitted) {
        group->seqs.push_back(*seq);
        for (int32_t k = 1; k < Width(r) && admitted; ++k) {
          std::optional<SimSeq> child = backend_.Fork(group->seqs[0]);
          if (child) {
            group->seqs.push_back(*child);
          } else {
            admitted = false;
          }
        }
        if (!admitted) {
          for (SimSeq& s : group->seqs) backend_.Free(s);
        }
      }
      if (!admitted) {
        // Nothing running will ever free room for it: it can never fit.
        if (running_.empty()) {
          Reject();
          continue;
        }
        return;
      }
      if (p.first_admission) {
        prompt_tokens_ += r.prompt_tokens;
        cached_tokens_ += cached;
      }
      group->request = p.request;
      group->beam_search = IsBeamSearch(r);
      group->rng.seed(options_.seed * 1000003 + static_cast<uint64_t>(p.request));
      running_.push_back(std::move(group));
      waiting_.pop_front();
    }
  }

  // Recompute preemption of the most recently admitted group: its blocks are freed and it goes
  // back to the front of the queue, to be prefilled again. Returns false when that group is
  // `current` itself.
  bool PreemptNewest(size_t current) {
    const size_t victim = running_.size() - 1;
    Group& g = *running_[victim];
    for (SimSeq& s : g.seqs) backend_.Free(s);
    waiting_.push_front(Pending{g.request, /*first_admission=*/false, {}});
    running_.pop_back();
    ++result_.preemptions;
    return victim != current;
  }

  // One decode step of group i. Beam search: each beam dies with probability 1/4 (one always
  // survives) and survivors fork to keep the width; then every sequence gains one token.
  bool StepGroup(size_t i) {
    Group& g = *running_[i];
    if (g.beam_search && g.generated > 0 && g.seqs.size() > 1) {
      std::vector<bool> dies(g.seqs.size());
      for (size_t k = 0; k < dies.size(); ++k) dies[k] = g.rng() % 4 == 0;
      if (std::all_of(dies.begin(), dies.end(), [](bool d) { return d; })) dies[0] = false;
      std::vector<SimSeq> survivors;
      size_t dead = 0;
      for (size_t k = 0; k < dies.size(); ++k) {
        if (dies[k]) {
          backend_.Free(g.seqs[k]);
          ++dead;
        } else {
          survivors.push_back(g.seqs[k]);
        }
      }
      g.seqs = std::move(survivors);
      for (size_t d = 0; d < dead; ++d) {
        const SimSeq parent = g.seqs[g.rng() % g.seqs.size()];
        std::optional<SimSeq> child;
        while (!(child = backend_.Fork(parent))) {
          if (!PreemptNewest(i)) return false;
        }
        g.seqs.push_back(*child);
      }
    }
    for (size_t k = 0; k < g.seqs.size(); ++k) {
      const int32_t token = DecodeToken(g.request, k, g.seqs[k].length);
      while (!backend_.Append(g.seqs[k], token)) {
        if (!PreemptNewest(i)) return false;
      }
    }
    decode_tokens_ += static_cast<int64_t>(g.seqs.size());
    ++g.generated;
    return true;
  }

  // Attention over every running sequence's new token, when the backend holds K/V.
  double Attend() {
    step_seqs_.clear();
    for (const auto& g : running_) step_seqs_.insert(step_seqs_.end(), g->seqs.begin(), g->seqs.end());
    return backend_.DecodeAttentionStep(step_seqs_);
  }

  void Complete() {
    size_t kept = 0;
    for (size_t i = 0; i < running_.size(); ++i) {
      Group& g = *running_[i];
      if (g.generated >= requests_[static_cast<size_t>(g.request)].output_tokens) {
        for (SimSeq& s : g.seqs) backend_.Free(s);
        ++result_.completed;
        ++finished_;
      } else {
        running_[kept++] = std::move(running_[i]);
      }
    }
    running_.resize(kept);
  }

  absl::Status CheckStep() {
    const int64_t in_use = backend_.slots_in_use();
    if (in_use > budget_tokens_) {
      return absl::InternalError(absl::StrCat(result_.policy, ": step ", step_, " holds ", in_use,
                                              " token slots, over the budget of ",
                                              budget_tokens_));
    }
    if (options_.check_invariants) return backend_.CheckInvariants();
    return absl::OkStatus();
  }

  void Sample() {
    int64_t live = 0;
    int64_t live_tokens = 0;
    for (const auto& g : running_) {
      live += static_cast<int64_t>(g->seqs.size());
      for (const SimSeq& s : g->seqs) live_tokens += s.length;
    }
    result_.peak_sequences = std::max(result_.peak_sequences, live);
    sum_sequences_ += static_cast<double>(live);
    const double memory = static_cast<double>(backend_.slots_in_use() * bytes_per_token_);
    result_.peak_memory_bytes = std::max(result_.peak_memory_bytes, memory);
    sum_memory_ += memory;
    if (active_steps_ % options_.sample_every != 0) return;
    const Usage u = backend_.usage();
    ++samples_;
    if (u.slots_reserved > 0) {
      sum_utilization_ += static_cast<double>(u.tokens_stored) / static_cast<double>(u.slots_reserved);
      ++utilization_samples_;
    }
    sum_waste_ += static_cast<double>(u.tail_waste);
    sum_saved_ += static_cast<double>(u.shared_saved);
    sum_entries_ += static_cast<double>(u.shared_entries);
    sum_runs_ += static_cast<double>(u.runs);
    sum_run_slots_ += static_cast<double>(u.run_slots);
    result_.series_seconds.push_back(static_cast<double>(step_) * options_.step_seconds);
    result_.series_memory_bytes.push_back(memory);
    result_.series_live_tokens.push_back(static_cast<double>(live_tokens));
  }

  void Finish(double wall_seconds) {
    const double steps = static_cast<double>(std::max<int64_t>(active_steps_, 1));
    const double samples = static_cast<double>(std::max<int64_t>(samples_, 1));
    result_.steps = active_steps_;
    result_.utilization_mean =
        utilization_samples_ > 0 ? sum_utilization_ / static_cast<double>(utilization_samples_) : 0;
    result_.mean_sequences = sum_sequences_ / steps;
    result_.mean_memory_bytes = sum_memory_ / steps;
    result_.tail_waste_tokens_mean = sum_waste_ / samples;
    result_.shared_blocks_saved_mean = sum_saved_ / samples;
    result_.sharing_saved_fraction = sum_entries_ > 0 ? sum_saved_ / sum_entries_ : 0;
    result_.run_tokens_mean = sum_runs_ > 0 ? sum_run_slots_ / sum_runs_ : 0;
    result_.prefix_hit_rate = prompt_tokens_ > 0 ? static_cast<double>(cached_tokens_) /
                                                       static_cast<double>(prompt_tokens_)
                                                 : 0;
    result_.tokens_per_step = static_cast<double>(decode_tokens_) / steps;
    result_.manager_ns_per_step = manager_ns_ / steps;
    result_.attention_ns_per_step = attention_ns_ / steps;
    result_.copied_tokens = backend_.copied_tokens();
    result_.wall_seconds = wall_seconds;
  }

  const std::vector<Request>& requests_;
  const SimOptions& options_;
  const int64_t max_seq_len_;
  const int64_t budget_tokens_;
  const int64_t bytes_per_token_;
  Backend& backend_;

  PolicyResult result_;
  std::deque<Pending> waiting_;
  std::vector<std::unique_ptr<Group>> running_;  // In admission order: newest last.
  int64_t next_ = 0;
  int64_t finished_ = 0;
  int64_t step_ = 0;
  int64_t active_steps_ = 0;
  int64_t samples_ = 0;
  int64_t utilization_samples_ = 0;
  int64_t decode_tokens_ = 0;
  int64_t prompt_tokens_ = 0;
  int64_t cached_tokens_ = 0;
  double manager_ns_ = 0;
  double attention_ns_ = 0;
  std::vector<SimSeq> step_seqs_;
  double sum_sequences_ = 0, sum_memory_ = 0, sum_utilization_ = 0, sum_waste_ = 0;
  double sum_saved_ = 0, sum_entries_ = 0, sum_runs_ = 0, sum_run_slots_ = 0;
};

}  // namespace

absl::StatusOr<PolicyResult> Simulate(const Workload& workload, const SimOptions& options,
                                      int64_t max_seq_len, int64_t budget_tokens,
                                      int64_t bytes_per_token, Backend& backend) {
  if (options.step_seconds <= 0 || options.time_scale <= 0 || options.sample_every < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "step_seconds ", options.step_seconds, ", time_scale ", options.time_scale,
        " and sample_every ", options.sample_every, " must be positive"));
  }
  Run run(workload, options, max_seq_len, budget_tokens, bytes_per_token, backend);
  return run.Go();
}

}  // namespace pagedkv::sim

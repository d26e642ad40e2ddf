// Validation, the kernels' arguments and threads around the per-target kernels
// (attention_kernel-inl.h, tile_kernel-inl.h), and the choice between them per item; the work
// plan and its combine are in work_plan.h.
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
#include <numeric>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "attention/kernel_args.h"
#include "attention/work_plan.h"
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

  internal::WorkPlan plan(args, options, threads);
  internal::ParallelFor(static_cast<int64_t>(plan.size()), threads, [&](int64_t i) {
    const auto k = static_cast<size_t>(i);
    HWY_DYNAMIC_DISPATCH(internal::AttendItem)(plan.args_of(k), plan.item(k));
  });
  plan.Combine(threads);
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

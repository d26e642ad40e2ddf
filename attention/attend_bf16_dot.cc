// The vdpbf16ps kernel for bf16 pages (bf16_dot-inl.h), for the Highway targets that have it
// (see attention.cc's AttendItem).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "attention/attend_bf16_dot.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
// After foreach_target.h, which includes this file once per target.
#include "attention/attention_kernel-inl.h"

HWY_BEFORE_NAMESPACE();
namespace pagedkv::internal::HWY_NAMESPACE {
#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL  // kHaveBf16Dot
template void AttendItemT<hwy::bfloat16_t, true>(const KernelArgs&, const WorkItem&);
#endif
}  // namespace pagedkv::internal::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

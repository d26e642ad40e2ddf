// The kernels for bf16 pages widened to f32, once per Highway target (see attention.cc's
// AttendItem; the vdpbf16ps kernel is attend_bf16_dot.cc's).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "attention/attend_bf16.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
// After foreach_target.h, which includes this file once per target.
#include "attention/attention_kernel-inl.h"
#include "attention/tile_kernel-inl.h"

HWY_BEFORE_NAMESPACE();
namespace pagedkv::internal::HWY_NAMESPACE {
template void AttendItemT<hwy::bfloat16_t, false, true>(const KernelArgs&, const WorkItem&);
template void AttendTileT<hwy::bfloat16_t>(const KernelArgs&, const WorkItem&);
}  // namespace pagedkv::internal::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

// The kernels for f32 pages, once per Highway target (see attention.cc's AttendItem).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "attention/attend_f32.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
// After foreach_target.h, which includes this file once per target.
#include "attention/attention_kernel-inl.h"
#include "attention/tile_kernel-inl.h"

HWY_BEFORE_NAMESPACE();
namespace pagedkv::internal::HWY_NAMESPACE {
template void AttendItemT<float, false>(const KernelArgs&, const WorkItem&);
template void AttendTileT<float>(const KernelArgs&, const WorkItem&);
}  // namespace pagedkv::internal::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

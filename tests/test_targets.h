// The Highway targets the kernel tests run, shared by the tests that force each in turn.
#ifndef PAGEDKV_TESTS_TEST_TARGETS_H_
#define PAGEDKV_TESTS_TEST_TARGETS_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "hwy/targets.h"
#include "test_util.h"

namespace pagedkv::test {

// The Highway targets this binary has and this CPU runs, best first: all of them, or only the
// best PAGEDKV_TEST_TARGETS of them when that is set above 0 (CI's TSan run takes one: what TSan
// checks, the threads around the kernels, is the same code on every target).
inline std::vector<int64_t> TestTargets() {
  std::vector<int64_t> targets = hwy::SupportedAndGeneratedTargets();
  const int64_t keep = EnvOr("PAGEDKV_TEST_TARGETS", 0);
  if (keep > 0 && static_cast<size_t>(keep) < targets.size()) {
    targets.resize(static_cast<size_t>(keep));
  }
  return targets;
}

}  // namespace pagedkv::test

#endif  // PAGEDKV_TESTS_TEST_TARGETS_H_

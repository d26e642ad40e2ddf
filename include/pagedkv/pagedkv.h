// Everything a user of pagedkv includes.
#ifndef PAGEDKV_PAGEDKV_H_
#define PAGEDKV_PAGEDKV_H_

#include "pagedkv/attention.h"       // IWYU pragma: export
#include "pagedkv/block_pool.h"      // IWYU pragma: export
#include "pagedkv/config.h"          // IWYU pragma: export
#include "pagedkv/dtype.h"           // IWYU pragma: export
#include "pagedkv/paged_kv_cache.h"  // IWYU pragma: export
#include "pagedkv/stats.h"           // IWYU pragma: export
#include "pagedkv/view.h"            // IWYU pragma: export

#endif  // PAGEDKV_PAGEDKV_H_

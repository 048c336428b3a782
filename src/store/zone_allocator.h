// The zone's bytes, as the store takes them for its records. What the store's logic (History,
// history.h) asks of an allocator, this one or t/unit/history's malloc with a byte budget; every
// call is made with the zone's lock held (ZoneLock, zone_helpers.h), which is also the slab
// pool's mutex:
//   void* allocate(std::size_t size)               nullptr when there is no room
//   void deallocate(void* p, std::size_t size)     `size` as it was allocated
//   bool could_fit(std::size_t size, std::size_t reclaimable)
//                                                  whether `size` more bytes could be had once
//                                                  `reclaimable` of those allocated were freed
#pragma once

extern "C" {
#include <ngx_config.h>
#include <ngx_core.h>
}

#include <cstddef>

#include "fault_injection.h"

namespace sse {

// nginx's slab allocator in the zone (ngx_slab_alloc_locked, ngx_slab_free_locked), counting
// what the store holds in `used` (StoreHeader::bytes_used, sse_stats' bytes_used). Inline: it
// costs what calling the slab allocator directly does.
class SlabAllocator {
public:
    // `reserved`: bytes the zone gave out before, outside `used` (the store's header).
    SlabAllocator(ngx_slab_pool_t* pool, std::size_t* used, std::size_t reserved) noexcept
        : pool_(pool), used_(used), reserved_(reserved) {}

    void* allocate(std::size_t size) noexcept {
        if (fault::allocation_fails()) return nullptr;
        void* p = ngx_slab_alloc_locked(pool_, size);
        if (p != nullptr) *used_ += size;
        return p;
    }

    void deallocate(void* p, std::size_t size) noexcept {
        ngx_slab_free_locked(pool_, p);
        *used_ -= size;
    }

    // What was given out before (`reserved`) and the slab's rounding of a large allocation to
    // whole pages count too.
    bool could_fit(std::size_t size, std::size_t reclaimable) const noexcept {
        std::size_t capacity = std::size_t(pool_->end - pool_->start) - ngx_align(reserved_, ngx_pagesize);
        std::size_t need = size >= ngx_pagesize / 2 ? ngx_align(size, ngx_pagesize) : size;
        return *used_ - reclaimable + need <= capacity;
    }

private:
    ngx_slab_pool_t* pool_;
    std::size_t* used_;
    std::size_t reserved_;
};

}  // namespace sse

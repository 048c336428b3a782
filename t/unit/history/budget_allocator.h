// The zone's bytes for History without nginx (what an allocator is asked: zone_allocator.h):
// malloc within a byte budget, counted exactly as asked (no slab rounding), so that a test fills
// the zone to the byte and drives its full-zone paths. It checks the contract as it goes, and a
// breach fails the test: every call with the zone's lock held, every free of a live allocation
// with the size it was allocated with.
#pragma once

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <new>

namespace sse::test {

class BudgetAllocator {
public:
    explicit BudgetAllocator(std::size_t budget = SIZE_MAX) : budget_(budget) {}
    ~BudgetAllocator() {
        for (auto& [p, size] : live_) std::free(p);
    }
    BudgetAllocator(const BudgetAllocator&) = delete;
    BudgetAllocator& operator=(const BudgetAllocator&) = delete;

    void* allocate(std::size_t size) {
        EXPECT_TRUE(locked_) << "allocate(" << size << ") without the zone's lock";
        if (used_ > budget_ || size > budget_ - used_) {
            refused_++;
            return nullptr;
        }
        void* p = std::malloc(size);
        if (p == nullptr) throw std::bad_alloc();
        live_[p] = size;
        used_ += size;
        return p;
    }

    void deallocate(void* p, std::size_t size) {
        EXPECT_TRUE(locked_) << "deallocate(" << size << ") without the zone's lock";
        auto it = live_.find(p);
        if (it == live_.end()) {
            ADD_FAILURE() << "deallocate(" << p << ", " << size << "): not allocated (a double or wild free)";
            return;
        }
        EXPECT_EQ(it->second, size) << "deallocate() with another size than allocated";
        used_ -= it->second;
        live_.erase(it);
        std::free(p);
    }

    bool could_fit(std::size_t size, std::size_t reclaimable) const {
        EXPECT_TRUE(locked_) << "could_fit(" << size << ") without the zone's lock";
        EXPECT_LE(reclaimable, used_);
        return used_ - reclaimable + size <= budget_;
    }

    // The zone's lock, as ZoneLock takes it.
    void lock() {
        EXPECT_FALSE(locked_) << "the zone's lock taken twice (a deadlock in nginx)";
        locked_ = true;
    }
    void unlock() { locked_ = false; }

    std::size_t used() const { return used_; }
    std::size_t allocations() const { return live_.size(); }
    std::size_t refused() const { return refused_; }  // allocations refused for want of room
    std::size_t budget() const { return budget_; }
    void set_budget(std::size_t budget) { budget_ = budget; }

private:
    std::size_t budget_;
    std::size_t used_ = 0;
    std::size_t refused_ = 0;
    bool locked_ = false;
    std::map<void*, std::size_t> live_;
};

}  // namespace sse::test

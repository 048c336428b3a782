// The intrusive doubly-linked list the zone's records are chained in: circular through its head,
// which is also its end, exactly as nginx's ngx_queue_t (src/core/ngx_queue.h). In the module a
// link is an ngx_queue_t (ZoneLink, zone_records.h), so these calls and nginx's ngx_queue_*
// macros work on the same lists; built without nginx it is ListLink, the same two pointers.
// Everything is inline: a call costs what the macro did. Nothing here needs nginx.
#pragma once

#include <cstddef>

namespace sse::zone {

// A link, and a list's head: ngx_queue_t's two pointers, in its order.
struct ListLink {
    ListLink* prev;
    ListLink* next;
};

// The list's operations, on links of type Link (anything with `prev` and `next` as above).
// Walking it: from first(head) by ->next (or from last(head) by ->prev) until back at the head.
template <typename Link>
struct List {
    static void init(Link* head) noexcept {
        head->prev = head;
        head->next = head;
    }

    static bool empty(const Link* head) noexcept { return head == head->prev; }

    // The first and the last link; the head itself when the list is empty.
    static Link* first(Link* head) noexcept { return head->next; }
    static Link* last(Link* head) noexcept { return head->prev; }

    // Puts `link` right after `at`: first in the list when `at` is its head.
    static void insert_after(Link* at, Link* link) noexcept {
        link->next = at->next;
        link->next->prev = link;
        link->prev = at;
        at->next = link;
    }

    static void insert_tail(Link* head, Link* link) noexcept { insert_after(head->prev, link); }

    static void remove(Link* link) noexcept {
        link->next->prev = link->prev;
        link->prev->next = link->next;
    }
};

}  // namespace sse::zone

// The record whose `member` the link is (ngx_queue_data).
#define SSE_LIST_DATA(link, type, member) \
    (reinterpret_cast<type*>(reinterpret_cast<char*>(link) - offsetof(type, member)))

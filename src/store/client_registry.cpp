// sse_clients: the streams of every worker, as the zone records them, listed by client id or
// marked to be disconnected by their workers.
#include <algorithm>

#include "store/event_store.h"
#include "store/zone_helpers.h"

namespace sse {

using namespace zone;

namespace {

bool matches(const ShmSubscriber* sub, const ClientQuery& q) {
    if (q.id != 0 && sub->client_id != q.id) return false;
    if (!q.user.empty() && sub->user() != q.user) return false;
    if (!q.channel.empty()) {
        bool on = false;
        for (std::uint32_t i = 0; i < sub->nchannels && !on; i++) on = sub->channels[i]->name_view() == q.channel;
        if (!on) return false;
    }
    return true;
}

// Channels a request names cannot hold '#': those that do are the stream's client and user channels.
bool asked_for(std::string_view channel) {
    return channel.empty() || channel.front() != '#';
}

}  // namespace

std::string Store::clients_page_json(const ClientQuery& q) {
    std::size_t total = 0;
    bool more = false;
    std::vector<ClientInfo> found = list_clients(q, total, more);
    std::vector<ClientReport> reports;
    reports.reserve(found.size());
    for (ClientInfo& c : found) {
        ClientReport& rep = reports.emplace_back();
        rep.client_id = c.client_id;
        rep.pid = long(c.pid);
        rep.channels = std::move(c.channels);
        rep.user = std::move(c.user);
        rep.remote_addr = std::move(c.remote_addr);
        rep.connected_at = static_cast<long long>(c.connected_at);
        rep.events_sent = c.events_sent;
        rep.bytes_sent = c.bytes_sent;
    }
    // The next request starts after this page's last client.
    std::uint64_t next = more ? reports.back().client_id : 0;
    return clients_json(reports, total, next);
}

std::vector<ClientInfo> Store::list_clients(const ClientQuery& q, std::size_t& total, bool& more) {
    std::vector<const ShmSubscriber*> found;
    std::vector<ClientInfo> out;
    total = 0;
    ZoneLock lock(pool_, &deferred_);
    for (ngx_uint_t s = 0; s < hdr_->slot_high; s++) {
        ngx_queue_t* list = &hdr_->slots[s].subscribers_list;
        if (hdr_->slots[s].pid == 0) continue;
        for (ngx_queue_t* l = ngx_queue_head(list); l != ngx_queue_sentinel(list); l = ngx_queue_next(l)) {
            auto* sub = ngx_queue_data(l, ShmSubscriber, link);
            if (!matches(sub, q)) continue;
            total++;
            if (sub->client_id > q.after) found.push_back(sub);
        }
    }
    std::sort(found.begin(), found.end(), [](auto* a, auto* b) { return a->client_id < b->client_id; });
    more = found.size() > q.limit;
    if (more) found.resize(q.limit);
    out.reserve(found.size());
    for (const ShmSubscriber* sub : found) {
        ClientInfo c;
        c.client_id = sub->client_id;
        c.pid = hdr_->slots[sub->slot].pid;
        for (std::uint32_t i = 0; i < sub->nchannels; i++) {
            std::string_view name = sub->channels[i]->name_view();
            if (asked_for(name)) c.channels.emplace_back(name);
        }
        c.user = std::string(sub->user());
        c.remote_addr = std::string(sub->remote_addr());
        c.connected_at = sub->connected_at;
        c.events_sent = __atomic_load_n(&sub->events_sent, __ATOMIC_RELAXED);
        c.bytes_sent = __atomic_load_n(&sub->bytes_sent, __ATOMIC_RELAXED);
        out.push_back(std::move(c));
    }
    return out;
}

std::uint32_t Store::disconnect_clients(const ClientQuery& q, std::uint64_t wake[2]) {
    std::uint32_t n = 0;
    wake[0] = wake[1] = 0;
    ZoneLock lock(pool_, &deferred_);
    for (ngx_uint_t s = 0; s < hdr_->slot_high; s++) {
        ngx_queue_t* list = &hdr_->slots[s].subscribers_list;
        if (hdr_->slots[s].pid == 0) continue;
        bool any = false;
        for (ngx_queue_t* l = ngx_queue_head(list); l != ngx_queue_sentinel(list); l = ngx_queue_next(l)) {
            auto* sub = ngx_queue_data(l, ShmSubscriber, link);
            if (sub->kicked || !matches(sub, q)) continue;
            sub->kicked = true;
            any = true;
            n++;
        }
        if (any) {
            ngx_atomic_fetch_add(&hdr_->slots[s].kicks, 1);
            set_bit(wake, s);
        }
    }
    return n;
}

}  // namespace sse

// sse_stats: the zone's figures as JSON, for monitoring and for the tests' baseline checks.
#include <string>

#include "nginx/sse_module.h"

namespace sse {

ngx_int_t stats_handler(ngx_http_request_t* r) {
    try {
        WorkerContext* w = worker_context();
        if (w == nullptr || w->slot < 0)
            return send_text(r, NGX_HTTP_SERVICE_UNAVAILABLE, "no event zone in this worker");
        if (!(r->method & (NGX_HTTP_GET | NGX_HTTP_HEAD)))
            return send_text(r, NGX_HTTP_NOT_ALLOWED, "stats are read with GET");
        // A worker killed outright leaves its slot behind; reap before counting.
        w->store.reap_dead_slots(r->connection->log);
        StoreStats st = w->store.stats();
        const StoreCounters& c = w->store.header()->counters;
        std::string json =
            "{\"subscribers\":" + std::to_string(st.subscribers) + ",\"channels\":" + std::to_string(st.channels) +
            ",\"events_published\":" + std::to_string(c.events_published) +
            ",\"events_delivered\":" + std::to_string(c.events_delivered) +
            ",\"events_stored\":" + std::to_string(st.events_stored) +
            ",\"events_retained\":" + std::to_string(st.events_retained) +
            ",\"events_replayed\":" + std::to_string(c.events_replayed) +
            ",\"resets\":" + std::to_string(c.resets) +
            ",\"history_evictions\":" + std::to_string(c.history_evictions) +
            ",\"slow_disconnects\":" + std::to_string(c.slow_disconnects) +
            ",\"publishes_refused\":" + std::to_string(c.publishes_refused) +
            ",\"workers_reaped\":" + std::to_string(c.workers_reaped) +
            ",\"zone_bytes_used\":" + std::to_string(st.bytes_used) +
            ",\"zone_bytes_total\":" + std::to_string(st.bytes_total) +
            ",\"uptime\":" + std::to_string(ngx_time() - w->store.header()->created_at) + ",\"workers\":[";
        for (size_t i = 0; i < st.per_worker.size(); i++) {
            if (i) json += ",";
            json += "{\"pid\":" + std::to_string(st.per_worker[i].first) +
                    ",\"subscribers\":" + std::to_string(st.per_worker[i].second) + "}";
        }
        json += "]}\n";
        return send_json(r, NGX_HTTP_OK, json);
    } catch (...) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "sse: unexpected exception in stats");
    }
    return NGX_HTTP_INTERNAL_SERVER_ERROR;
}

}  // namespace sse

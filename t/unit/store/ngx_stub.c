// See ngx_stub.h. Stands in for the nginx process around the store; nothing here is nginx's code.
#include "ngx_stub.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

ngx_pid_t ngx_pid;
ngx_uint_t ngx_pagesize;
ngx_uint_t ngx_pagesize_shift;
ngx_uint_t ngx_cacheline_size = NGX_CPU_CACHE_LINE;
ngx_int_t ngx_ncpu = 1;

volatile ngx_msec_t ngx_current_msec;
static ngx_time_t stub_time;
volatile ngx_time_t *ngx_cached_time = &stub_time;

static ngx_log_t stub_log;
static ngx_cycle_t stub_cycle;
volatile ngx_cycle_t *ngx_cycle = &stub_cycle;

static ngx_stub_log_hook_pt log_hook;
static int locks_held;

void ngx_stub_init(void) {
    ngx_pid = getpid();
    ngx_pagesize = (ngx_uint_t)getpagesize();
    for (ngx_uint_t n = ngx_pagesize; n >>= 1; ngx_pagesize_shift++) {
    }
    ngx_slab_sizes_init();
    stub_log.log_level = NGX_LOG_DEBUG;
    stub_cycle.log = &stub_log;
    ngx_stub_set_clock(1000000, 1700000000);
}

void ngx_stub_set_log_hook(ngx_stub_log_hook_pt hook) {
    log_hook = hook;
}

void ngx_stub_set_clock(ngx_msec_t msec, time_t sec) {
    ngx_current_msec = msec;
    stub_time.sec = sec;
    stub_time.msec = msec % 1000;
}

void ngx_stub_advance_ms(ngx_msec_t ms) {
    ngx_msec_t now = ngx_current_msec + ms;
    time_t sec = stub_time.sec + (time_t)((stub_time.msec + ms) / 1000);
    ngx_current_msec = now;
    stub_time.sec = sec;
    stub_time.msec = (stub_time.msec + ms) % 1000;
}

int ngx_stub_locks_held(void) {
    return locks_held;
}

void ngx_log_error_core(ngx_uint_t level, ngx_log_t *log, ngx_err_t err, const char *fmt, ...) {
    (void)log;
    u_char line[NGX_MAX_ERROR_STR];
    va_list args;
    va_start(args, fmt);
    u_char *p = ngx_vslprintf(line, line + sizeof(line), fmt, args);
    va_end(args);
    if (err) p = ngx_slprintf(p, line + sizeof(line), " (%d)", err);
    if (log_hook != NULL) log_hook(level, (const char *)line, (size_t)(p - line), locks_held > 0);
}

// The zone lock. The tests run in one thread: a lock already held is a lock taken twice, which
// nginx's spinlock would wait on forever, so it stops the test instead.
ngx_int_t ngx_shmtx_create(ngx_shmtx_t *mtx, ngx_shmtx_sh_t *addr, u_char *name) {
    (void)name;
    mtx->lock = &addr->lock;
    mtx->spin = (ngx_uint_t)-1;
    *mtx->lock = 0;
    return NGX_OK;
}

void ngx_shmtx_destroy(ngx_shmtx_t *mtx) {
    (void)mtx;
}

ngx_uint_t ngx_shmtx_trylock(ngx_shmtx_t *mtx) {
    if (*mtx->lock != 0) return 0;
    *mtx->lock = (ngx_atomic_uint_t)ngx_pid;
    locks_held++;
    return 1;
}

void ngx_shmtx_lock(ngx_shmtx_t *mtx) {
    if (!ngx_shmtx_trylock(mtx)) {
        fprintf(stderr, "ngx_stub: zone lock taken while held by %ld (a deadlock in nginx)\n", (long)*mtx->lock);
        abort();
    }
}

void ngx_shmtx_unlock(ngx_shmtx_t *mtx) {
    if (*mtx->lock != (ngx_atomic_uint_t)ngx_pid) {
        fprintf(stderr, "ngx_stub: zone lock released while not held\n");
        abort();
    }
    *mtx->lock = 0;
    locks_held--;
}

ngx_uint_t ngx_shmtx_force_unlock(ngx_shmtx_t *mtx, ngx_pid_t pid) {
    if (*mtx->lock != (ngx_atomic_uint_t)pid) return 0;
    *mtx->lock = 0;
    locks_held--;
    return 1;
}

// nginx's slab allocator calls this when it finds the zone corrupted (a double or wild free).
void ngx_debug_point(void) {
    fprintf(stderr, "ngx_stub: ngx_debug_point(): nginx found the zone corrupted\n");
    abort();
}

// Referenced by nginx's files, unused by the store (which allocates only in its zone).
void *ngx_alloc(size_t size, ngx_log_t *log) {
    (void)log;
    return malloc(size);
}

void *ngx_pnalloc(ngx_pool_t *pool, size_t size) {
    (void)pool;
    (void)size;
    fprintf(stderr, "ngx_stub: ngx_pnalloc() is not expected in the store\n");
    abort();
}

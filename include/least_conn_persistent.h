/*
 * C ABI of ngx-least-conn-persistent, for balancers written in Lua
 * (OpenResty, Apache APISIX, Kong) through LuaJIT's FFI:
 * lib/resty/least_conn_persistent.lua feeds the declarations between the
 * LCP_CDEF markers to ffi.cdef, and the module's .so exports them (nginx
 * loads modules with RTLD_GLOBAL, so they are ffi.C.lcp_*).
 *
 * Every function runs in a worker, in any Lua phase, never blocks on
 * anything but the zone's lock for a declaration, validates its arguments
 * and answers an error code (< 0) instead of failing; none keeps a pointer
 * it was given. Upstream handles and tokens are this worker's: they mean
 * nothing in another worker or after a reload's new workers start.
 */
#ifndef LEAST_CONN_PERSISTENT_H
#define LEAST_CONN_PERSISTENT_H

#include <stddef.h>
#include <stdint.h>

#define LCP_ABI_VERSION 3

/* LCP_CDEF_BEGIN */
enum {
    LCP_OK = 0,
    LCP_ERR_ARG = -1,        /* a NULL pointer, an empty or over-long string, a bad number
                              * or address */
    LCP_ERR_NO_ZONE = -2,    /* no least_conn_persistent_zone in this nginx */
    LCP_ERR_UNKNOWN = -3,    /* no upstream with that handle in this worker */
    LCP_ERR_ZONE_FULL = -4,  /* the zone has no room for the upstream's keys */
    LCP_ERR_NO_PEER = -5,    /* every server is skipped, down or at max_conns */
    LCP_ERR_TOKEN = -6,      /* not a token of this worker */
    LCP_ERR_TOO_MANY_PICKS = -7, /* lcp_pick: 1,048,575 picks of this worker are not
                              * released (tokens hold 20 bits of index) */
    LCP_ALREADY = 1          /* lcp_release: that token was released already */
};

/* lcp_health's answers (ABI 3): what the health checks a server follows
 * found. */
enum {
    LCP_HEALTH_UNCHECKED = 0, /* follows no checks, or none ran yet */
    LCP_HEALTH_CHECKING = 1,  /* checked, no verdict yet (picked as up) */
    LCP_HEALTH_UP = 2,
    LCP_HEALTH_DOWN = 3,      /* not picked */
    LCP_HEALTH_DRAIN = 4      /* its capacity answer drains it: not picked */
};

typedef struct {
    const char *addr;        /* "host:port" or "[IPv6]:port", port 1..65535, no '#' in the
                              * host: the key is conn_count:<id>:<addr> */
    size_t      addr_len;    /* 1..255 */
    uint32_t    weight;      /* 1..1000000 */
    uint32_t    max_conns;   /* 0: no limit */
} lcp_server_t;

/* LCP_ABI_VERSION of the loaded module. */
int lcp_abi_version(void);

/* Declares upstream `id` (1..128 bytes, no ':') with `n` servers (1..1024,
 * addresses distinct), or declares it again: servers kept keep their
 * counts, servers gone drain and then go. Returns a handle (>= 0) for this
 * worker, the same for the same id, or an error. */
int lcp_declare(const char *id, size_t id_len, const lcp_server_t *servers, size_t n);

/* lcp_declare with slow start (ABI 2): servers a declaration adds to an id
 * declared before, or brings back, ramp up over `slow_start` seconds (0:
 * none; at most 429496729) instead of taking every new connection at
 * once. The ramp lives in the zone: the same for every worker. */
int lcp_declare_slow_start(const char *id, size_t id_len, const lcp_server_t *servers,
                           size_t n, uint32_t slow_start);

/* Picks the least loaded server of upstream `handle` (connections per
 * weight; ties by smooth weighted round-robin; max_conns across all
 * workers), skipping server i when bit i of skip[] is set (skip may be NULL
 * when skip_words is 0), counts one connection on it and writes a token
 * for lcp_release. Returns the server's index (0-based, in declaration
 * order) or an error (nothing is counted then). */
int lcp_pick(int handle, const uint64_t *skip, size_t skip_words, uint64_t *token);

/* Gives back what the pick that wrote `token` took: LCP_OK, LCP_ALREADY
 * for a token released before, or LCP_ERR_TOKEN. Tokens are below 2^52, so
 * a Lua number holds one exactly: 20 bits of index, 32 of generation (a
 * token stays released through 2^32 reuses of its index). */
int lcp_release(uint64_t token);

/* The connections counted on server `index` of upstream `handle`, across
 * all workers, or an error. */
int64_t lcp_count(int handle, size_t index);

/* Makes upstream `handle` follow the health checks of nginx upstream
 * `upstream` (`len` bytes, 1..1024; ABI 3): an `upstream {}` block of this
 * configuration with least_conn_persistent and
 * least_conn_persistent_check. Each server is linked to that upstream's
 * server of the same address ("host:port" as nginx lists it); a server
 * with none stays unchecked. From then on lcp_pick skips a server its
 * checks mark down or draining (as a `down` server; all out:
 * LCP_ERR_NO_PEER) and compares a server with a capacity answer by its
 * weight= and maxconn= and the load the backend reported, as nginx's
 * picks do. The addresses are looked up once, now; a later lcp_declare*
 * of the same id links its new servers again by address. Returns LCP_OK,
 * LCP_ERR_UNKNOWN (no upstream `handle`, or no least_conn_persistent
 * upstream named `upstream`), LCP_ERR_ARG (a bad name, or that upstream
 * has no least_conn_persistent_check) or LCP_ERR_NO_ZONE. */
int lcp_follow_checks(int handle, const char *upstream, size_t len);

/* What the checks server `index` of upstream `handle` follows found: an
 * LCP_HEALTH_* (down wins over drain), or LCP_ERR_UNKNOWN, LCP_ERR_ARG (no
 * such index) (ABI 3). */
int lcp_health(int handle, size_t index);
/* LCP_CDEF_END */

#endif

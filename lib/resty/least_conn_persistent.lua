-- Persistent least-connections for Lua balancers (OpenResty, Apache APISIX,
-- Kong), on the shared counters of ngx-least-conn-persistent: the module's
-- C ABI (include/least_conn_persistent.h) through LuaJIT's FFI, in the
-- style of lua-resty-core. The module must be loaded (`load_module`) and
-- `least_conn_persistent_zone` configured.
--
--   local lcp = require "resty.least_conn_persistent"
--   local up = assert(lcp.declare("backend", {
--       { addr = "10.0.0.1:8080", weight = 2 },
--       { addr = "10.0.0.2:8080", max_conns = 100 },
--   }))
--   local server, token = up:pick(tried)    -- tried: { [index] = true } or nil
--   ...balancer.set_current_peer(server.host, server.port)...
--   lcp.release(token)                      -- in log_by_lua*, and before a retry
--   assert(up:follow_checks("backend_http")) -- optional: an nginx upstream's checks
--   up:health(0)                            -- "up", "down", "drain", ...
--
-- A token is released once: releasing it again returns nil, "already
-- released". Declarations are cached by id: declaring again with the same
-- servers table costs a table lookup (with an equal list, a comparison);
-- declaring with other servers drains the servers it no longer lists. A
-- servers table must not be changed in place after it was declared: pass a
-- new table for a new list.

local ffi = require "ffi"
local bit = require "bit"

local C = ffi.C
local ffi_new = ffi.new
local tonumber = tonumber
local tostring = tostring
local type = type
local pairs = pairs
local ipairs = ipairs
local concat = table.concat
local sort = table.sort
local error = error
local pcall = pcall
local lshift = bit.lshift
local bor = bit.bor
local floor = math.floor

-- The declarations between LCP_CDEF_BEGIN and LCP_CDEF_END of
-- include/least_conn_persistent.h (t/lua.t checks that they are the same).
ffi.cdef[[
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
]]

local ABI_VERSION = 3
local MAX_SERVERS = 1024

local _M = { _VERSION = "0.1.0", ABI_VERSION = ABI_VERSION }

local ok, abi = pcall(function() return C.lcp_abi_version() end)
if not ok then
    error("resty.least_conn_persistent: the least_conn_persistent module is not loaded "
          .. "(load_module .../libngx_http_least_conn_persistent_module.so)", 2)
end
if abi ~= ABI_VERSION then
    error("resty.least_conn_persistent: the loaded module speaks ABI " .. tostring(abi)
          .. ", this library " .. ABI_VERSION, 2)
end

local errors = {
    [tonumber(C.LCP_ERR_ARG)] = "bad argument",
    [tonumber(C.LCP_ERR_NO_ZONE)] = "no least_conn_persistent_zone is configured",
    [tonumber(C.LCP_ERR_UNKNOWN)] = "unknown upstream",
    [tonumber(C.LCP_ERR_ZONE_FULL)] = "least_conn_persistent_zone is full",
    [tonumber(C.LCP_ERR_NO_PEER)] = "no server can take the connection",
    [tonumber(C.LCP_ERR_TOKEN)] = "invalid token",
    [tonumber(C.LCP_ERR_TOO_MANY_PICKS)] = "too many unreleased picks in this worker",
}

local function failure(rc)
    return errors[tonumber(rc)] or ("error " .. tostring(rc))
end

-- "host:port" or "[IPv6]:port" into host and port, or nil and what is
-- wrong. The module refuses the same addresses (src/core/address.rs): a
-- port must be 1..65535 without leading zeros, and a host has no '#' (the
-- keys of a server listed twice in an nginx upstream end in "#2"), no ':'
-- outside brackets, no spaces, control or non-ASCII bytes.
local function split_addr(addr)
    local host, port
    if addr:sub(1, 1) == "[" then
        local v6, rest = addr:match("^%[([^%]]*)%](.*)$")
        if not v6 or not v6:find(":", 1, true) or v6:find("[^%x:.]") then
            return nil, "host must be a name or an IPv4 address, or an IPv6 address in "
                        .. "brackets (no '#', spaces or control characters)"
        end
        host, port = v6, rest:match("^:(.*)$")
    else
        host, port = addr:match("^(.*):(.-)$")
        if host and (host == "" or host:find("[^!-~]") or host:find("[#:%[%]]")) then
            return nil, "host must be a name or an IPv4 address, or an IPv6 address in "
                        .. "brackets (no '#', spaces or control characters)"
        end
    end
    if not port or port == "" then
        return nil, "addr must be host:port or [IPv6]:port"
    end
    if not port:match("^[1-9]%d?%d?%d?%d?$") or tonumber(port) > 65535 then
        return nil, "port must be a number in 1..65535"
    end
    return host, tonumber(port)
end

-- The servers as a list of { addr, weight, max_conns }, in a stable order:
-- a list stays as given, a map { [addr] = weight } (APISIX's up_nodes) is
-- sorted by address.
local function normalize(servers)
    if type(servers) ~= "table" then
        return nil, "servers must be a table"
    end
    local list = {}
    if #servers > 0 then
        for i, s in ipairs(servers) do
            if type(s) ~= "table" or type(s.addr) ~= "string" then
                return nil, "server " .. i .. " has no addr"
            end
            list[i] = { addr = s.addr, weight = s.weight or 1, max_conns = s.max_conns or 0 }
        end
    else
        for addr, weight in pairs(servers) do
            if type(addr) ~= "string" or type(weight) ~= "number" then
                return nil, "servers must be a list or a map of address to weight"
            end
            list[#list + 1] = { addr = addr, weight = weight, max_conns = 0 }
        end
        sort(list, function(a, b) return a.addr < b.addr end)
    end
    if #list == 0 then
        return nil, "no servers"
    end
    if #list > MAX_SERVERS then
        return nil, "more than " .. MAX_SERVERS .. " servers"
    end
    for i, s in ipairs(list) do
        if type(s.weight) ~= "number" or s.weight < 1 or s.weight > 1000000
           or s.weight ~= floor(s.weight) then
            return nil, "server " .. s.addr .. ": weight must be a whole number in 1..1000000"
        end
        if type(s.max_conns) ~= "number" or s.max_conns < 0 or s.max_conns > 4294967295
           or s.max_conns ~= floor(s.max_conns) then
            return nil, "server " .. s.addr .. ": max_conns must be a whole number in 0..4294967295"
        end
        s.index = i - 1
        local host, port_or_err = split_addr(s.addr)
        if not host then
            return nil, "server " .. s.addr .. ": " .. port_or_err
        end
        s.host, s.port = host, port_or_err
    end
    return list
end

local function signature(list)
    local parts = {}
    for i, s in ipairs(list) do
        parts[i] = s.addr .. "/" .. s.weight .. "/" .. s.max_conns
    end
    return concat(parts, ",")
end

local upstream = {}
upstream.__index = upstream

local declared = {}   -- id => upstream object, this worker's
local skip = ffi_new("uint64_t[?]", MAX_SERVERS / 64)
local token_out = ffi_new("uint64_t[1]")

-- Declares upstream `id` with `servers`, or returns the same object when
-- it is already declared with the same servers. `opts` (optional):
-- { slow_start = <seconds> }: servers a later declaration adds, or brings
-- back, ramp up over that many seconds. Returns the upstream, or nil and
-- an error.
function _M.declare(id, servers, opts)
    -- The same servers table as last time: nothing to check again (a
    -- balancer can declare on every request at the cost of this lookup).
    local up = declared[id]
    if up and up.source == servers then
        return up
    end
    if type(id) ~= "string" or id == "" then
        return nil, "id must be a non-empty string"
    end
    local list, err = normalize(servers)
    if not list then
        return nil, err
    end
    local slow_start = 0
    if opts ~= nil then
        if type(opts) ~= "table" then
            return nil, "options must be a table"
        end
        slow_start = opts.slow_start or 0
        if type(slow_start) ~= "number" or slow_start ~= math.floor(slow_start)
            or slow_start < 0 or slow_start > 429496729
        then
            return nil, "slow_start must be a whole number of seconds, 0..429496729"
        end
    end
    local sig = signature(list) .. ";" .. slow_start
    if up and up.signature == sig then
        up.source = servers
        return up
    end
    local arr = ffi_new("lcp_server_t[?]", #list)
    for i, s in ipairs(list) do
        local e = arr[i - 1]
        e.addr = s.addr
        e.addr_len = #s.addr
        e.weight = s.weight
        e.max_conns = s.max_conns
    end
    local rc = C.lcp_declare_slow_start(id, #id, arr, #list, slow_start)
    if rc < 0 then
        return nil, failure(rc)
    end
    up = setmetatable({ id = id, handle = rc, servers = list, n = #list, signature = sig,
                        source = servers }, upstream)
    declared[id] = up
    return up
end

-- Picks and counts a server, skipping the servers in `tried` (a set of
-- indexes, { [index] = true }, or nil). Returns the server ({ addr, host,
-- port, index, weight, max_conns }) and the token to release, or nil and
-- an error.
function upstream:pick(tried)
    local words = 0
    if tried then
        for i = 0, (self.n - 1) / 64 do
            skip[i] = 0
        end
        for index in pairs(tried) do
            if type(index) == "number" and index >= 0 and index < self.n then
                local w = floor(index / 64)
                skip[w] = bor(skip[w], lshift(1ULL, index % 64))
                if w + 1 > words then
                    words = w + 1
                end
            end
        end
    end
    local rc = C.lcp_pick(self.handle, skip, words, token_out)
    if rc < 0 then
        return nil, failure(rc)
    end
    -- Tokens stay below 2^52: a plain number, exact, no cdata to allocate.
    return self.servers[rc + 1], tonumber(token_out[0])
end

-- The index of a server given by index or addr, or nil.
local function index_of(self, which)
    local index = which
    if type(which) == "string" then
        for _, s in ipairs(self.servers) do
            if s.addr == which then
                index = s.index
            end
        end
    end
    if type(index) ~= "number" or index < 0 or index >= self.n or index ~= floor(index) then
        return nil
    end
    return index
end

-- The connections counted on a server (its index or addr), across workers.
function upstream:count(which)
    local index = index_of(self, which)
    if not index then
        return nil, "no such server"
    end
    local n = C.lcp_count(self.handle, index)
    if n < 0 then
        return nil, failure(n)
    end
    return tonumber(n)
end

-- Follows the health checks of nginx upstream `name` (an `upstream {}`
-- block with least_conn_persistent and least_conn_persistent_check): each
-- server, the server of that upstream with the same address. Picks then
-- skip the servers its checks mark down or draining, and weigh a
-- capacity answer's weight=, maxconn= and reported load. Declaring the id
-- again with other servers links them again. True, or nil and an error.
function upstream:follow_checks(name)
    if type(name) ~= "string" or name == "" then
        return nil, "upstream name must be a non-empty string"
    end
    local rc = C.lcp_follow_checks(self.handle, name, #name)
    if rc == 0 then
        return true
    end
    if rc == C.LCP_ERR_UNKNOWN then
        return nil, "no least_conn_persistent upstream \"" .. name .. "\""
    end
    if rc == C.LCP_ERR_ARG then
        return nil, "upstream \"" .. name .. "\" has no least_conn_persistent_check"
    end
    return nil, failure(rc)
end

local health_names = {
    [tonumber(C.LCP_HEALTH_UNCHECKED)] = "unchecked",
    [tonumber(C.LCP_HEALTH_CHECKING)] = "checking",
    [tonumber(C.LCP_HEALTH_UP)] = "up",
    [tonumber(C.LCP_HEALTH_DOWN)] = "down",
    [tonumber(C.LCP_HEALTH_DRAIN)] = "drain",
}

-- What the checks a server (its index or addr) follows found: "unchecked"
-- (it follows none, or none ran yet), "checking", "up", "down" or "drain";
-- or nil and an error.
function upstream:health(which)
    local index = index_of(self, which)
    if not index then
        return nil, "no such server"
    end
    local rc = C.lcp_health(self.handle, index)
    if rc < 0 then
        return nil, failure(rc)
    end
    return health_names[rc] or ("health " .. tostring(rc))
end

-- Gives back what the pick that returned `token` took. True, or nil and
-- "already released" (safe to call twice), or nil and "invalid token".
function _M.release(token)
    local t = type(token)
    if t ~= "number" and t ~= "cdata" then
        return nil, "invalid token"
    end
    if t == "number" and (token < 0 or token >= 4503599627370496 or token ~= floor(token)) then
        return nil, "invalid token"
    end
    local rc = C.lcp_release(token)
    if rc == 0 then
        return true
    end
    if rc == C.LCP_ALREADY then
        return nil, "already released"
    end
    return nil, failure(rc)
end

return _M

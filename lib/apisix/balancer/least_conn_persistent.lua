-- An Apache APISIX balancer ("picker") on persistent least-connections:
-- drop this file into apisix/balancer/ next to least_conn.lua and set an
-- upstream's `type` to "least_conn_persistent" (APISIX must also load the
-- module and configure `least_conn_persistent_zone` in its nginx template).
--
-- It follows the picker interface of APISIX 3.x (apisix/balancer/*.lua, as
-- called by apisix/balancer.lua): new(up_nodes, upstream) returning a table
-- with get(ctx), after_balance(ctx, before_retry) and
-- before_retry_next_priority(ctx). Unlike APISIX's own least_conn (counts in
-- a Lua table, per worker, lost on reload), the counts are shared by all
-- workers and survive reloads and crashed workers.

local lcp = require("resty.least_conn_persistent")

local ipairs = ipairs
local tostring = tostring

local _M = {}

-- A stable id for APISIX's upstream object: its etcd key, or its id.
local function upstream_id(upstream)
    local id = upstream.key or upstream.id
        or (upstream.parent and upstream.parent.value and upstream.parent.value.id)
        or upstream.resource_key
    if not id then
        return nil
    end
    -- Keys are conn_count:<id>:<server>: no ':' in the id.
    return "apisix" .. (tostring(id):gsub(":", "_"))
end

-- up_nodes: { ["host:port"] = weight }, as APISIX builds it.
function _M.new(up_nodes, upstream)
    local id = upstream_id(upstream)
    if not id then
        return nil, "least_conn_persistent: the upstream has no id"
    end
    local up, err = lcp.declare(id, up_nodes)
    if not up then
        return nil, "least_conn_persistent: " .. err
    end
    local index_of = {}
    for _, s in ipairs(up.servers) do
        index_of[s.addr] = s.index
    end

    return {
        upstream = upstream,

        -- The server to try now, as "host:port".
        get = function(ctx)
            local server, token = up:pick(ctx.lcp_tried)
            if not server then
                return nil, token
            end
            ctx.lcp_token = token
            return server.addr
        end,

        -- After each try: before a retry (before_retry true) and at the end
        -- of the request (log phase). Releases exactly what get took.
        after_balance = function(ctx, before_retry)
            if ctx.lcp_token then
                lcp.release(ctx.lcp_token)
                ctx.lcp_token = nil
            end
            if not before_retry then
                ctx.lcp_tried = nil
                return
            end
            local tried = ctx.lcp_tried or {}
            local index = index_of[ctx.balancer_server]
            if index then
                tried[index] = true
            end
            ctx.lcp_tried = tried
        end,

        before_retry_next_priority = function(ctx)
            ctx.lcp_tried = nil
        end,
    }
end

return _M

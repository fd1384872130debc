-- cdlib's dynamic upstreams for nginx's Lua module (loaded once per configuration load, by
-- init_by_lua_block, as the global table cdlib_upstreams).
--
-- The servers of each service live in the shared dictionary cdlib_upstreams, one key per service:
--   "s:<service>"  = "<color> <release> <address:port> <address:port> ..."
--   "services"     = the services of the configuration file, space separated
--   "rr:<service>" = the round-robin counter
--   "f:<address>"  = the server failed to connect recently (expires after FAIL_SECONDS)
--   "n:<address>"  = requests in flight to that server (cdlib waits for 0 before it stops a color)
-- load() puts the configuration file's own table in (at every start and reload); balance() picks
-- a server for a request; admin() is the local admin endpoint cdlib reads and replaces them with.
local M = {}
local balancer = require "ngx.balancer"
local dict = ngx.shared.cdlib_upstreams
local FAIL_SECONDS = 5
local ADDRESS = "^%[?[%w%.:%-]+%]?:%d+$"
local NAME = "^[%w][%w%.%-_]*$"

local function words(text)
    local out = {}
    for w in (text or ""):gmatch("%S+") do
        out[#out + 1] = w
    end
    return out
end

-- "<color> <release> <address:port> ..." -> the servers, nil when the entry is malformed
local function servers_of(entry)
    local w = words(entry)
    if #w < 3 then
        return nil
    end
    local out = {}
    for i = 3, #w do
        if not w[i]:match(ADDRESS) then
            return nil
        end
        out[#out + 1] = w[i]
    end
    return out
end

function M.load(services)
    local names = {}
    for name, entry in pairs(services) do
        dict:set("s:" .. name, entry)
        names[#names + 1] = name
    end
    for _, old in ipairs(words(dict:get("services"))) do
        if services[old] == nil then
            dict:delete("s:" .. old)
        end
    end
    table.sort(names)
    dict:set("services", table.concat(names, " "))
end

function M.color(service)
    return words(dict:get("s:" .. service))[1] or ""
end

function M.balance(service)
    local ctx = ngx.ctx
    local servers = ctx.cdlib_servers
    local i
    if servers == nil then
        servers = servers_of(dict:get("s:" .. service))
        if servers == nil then
            ngx.log(ngx.ERR, "cdlib: no servers for service ", service)
            return ngx.exit(ngx.ERROR)
        end
        ctx.cdlib_servers = servers
        ctx.cdlib_picked = {}
        i = dict:incr("rr:" .. service, 1, 0)
        if #servers > 1 then
            -- the upstream block holds one placeholder server: allow a retry on each other server
            balancer.set_more_tries(#servers - 1)
        end
    else
        -- a retry: the previous server failed
        if balancer.get_last_failure() == "failed" then
            dict:set("f:" .. ctx.cdlib_last, true, FAIL_SECONDS)
        end
        i = ctx.cdlib_i + 1
    end
    local n = #servers
    local pick = nil
    for k = 0, n - 1 do
        local candidate = servers[((i + k) % n) + 1]
        if not dict:get("f:" .. candidate) then
            pick, i = candidate, i + k
            break
        end
    end
    if pick == nil then
        pick = servers[(i % n) + 1] -- every server failed recently: try them anyway
    end
    ctx.cdlib_i, ctx.cdlib_last = i, pick
    local host, port = pick:match("^(.*):(%d+)$")
    local ok, err = balancer.set_current_peer(host, tonumber(port))
    if not ok then
        ngx.log(ngx.ERR, "cdlib: cannot use server ", pick, ": ", err)
        return ngx.exit(ngx.ERROR)
    end
    dict:incr("n:" .. pick, 1, 0)
    local picked = ctx.cdlib_picked
    picked[#picked + 1] = pick
end

-- log phase: the request no longer uses the servers it was sent to; a server whose attempt ended
-- in an error, a time-out or 502/503 (what proxy_next_upstream counts) is kept out for FAIL_SECONDS,
-- as max_fails=1 fail_timeout=5s does for a static upstream (a POST is not retried, so the
-- balancer never hears of its failure otherwise)
local FAILED = { ["502"] = true, ["503"] = true, ["504"] = true }

function M.done()
    local picked = ngx.ctx.cdlib_picked
    if picked then
        local statuses = {}
        for status in (ngx.var.upstream_status or ""):gmatch("[^%s,:]+") do
            statuses[#statuses + 1] = status
        end
        for i, address in ipairs(picked) do
            dict:incr("n:" .. address, -1, 0)
            if FAILED[statuses[i]] then
                dict:set("f:" .. address, true, FAIL_SECONDS)
            end
        end
    end
end

-- GET: "service <name> <color> <release> <address:port> ..." per service, then
--      "inflight <address:port> <count>" per server with requests in flight.
-- POST: lines "<name> <color> <release> <address:port> ..."; every line is checked before any
--      is applied, and only services of the configuration file can change (a new one needs a reload).
function M.admin()
    local method = ngx.req.get_method()
    if method == "GET" then
        local out = {}
        for _, name in ipairs(words(dict:get("services"))) do
            out[#out + 1] = "service " .. name .. " " .. (dict:get("s:" .. name) or "")
        end
        local keys = dict:get_keys(0)
        table.sort(keys)
        for _, key in ipairs(keys) do
            local count = key:sub(1, 2) == "n:" and dict:get(key) or 0
            if count > 0 then
                out[#out + 1] = "inflight " .. key:sub(3) .. " " .. count
            end
        end
        out[#out + 1] = ""
        ngx.header["Content-Type"] = "text/plain"
        ngx.print(table.concat(out, "\n"))
        return
    end
    if method ~= "POST" then
        ngx.status = 405
        return
    end
    ngx.req.read_body()
    local known = {}
    for _, name in ipairs(words(dict:get("services"))) do
        known[name] = true
    end
    local updates = {}
    for line in (ngx.req.get_body_data() or ""):gmatch("[^\n]+") do
        local name, entry = line:match("^(%S+) (.*)$")
        if name == nil or not name:match(NAME) or not known[name] or servers_of(entry) == nil then
            ngx.status = 400
            ngx.say("refused: ", (name and name:match(NAME)) and name or "a malformed line")
            return
        end
        updates[#updates + 1] = { name, entry }
    end
    for _, u in ipairs(updates) do
        local ok, err = dict:set("s:" .. u[1], u[2])
        if not ok then
            ngx.status = 500
            ngx.say("cannot store the servers of ", u[1], ": ", err)
            return
        end
    end
    ngx.say("ok ", #updates)
end

return M

-- register.render.services: what the shipped renderers (register watch)
-- read from etcd, as a list of services and their servers.
--
--   local services = require "register.render.services"
--   for _, s in ipairs(services.collect(kv, ctx, opts)) do
--     -- s.name: "example::web:80"; s.servers: { {id, ip, port, address,
--     --   key, container}, ... }
--   end
--
-- Two layouts (opts.layout):
--
--   "registered" (the default schema)
--     key   .../<host ip>/<image, '/' -> '::'>/<container id>
--     value [{"container":"<id>","image":"<image>","ip":"<HostIp>",
--             "public_port":"<HostPort>","private_port":"<port>",
--             "port_type":"tcp"}, ...]
--     one service per image and private TCP port, named
--     "<image>:<private port>" ("example::web:80"); a server per binding,
--     id "<short id>_<public port>".  UDP and other protocols are left
--     out; so is the "::" twin of an all-interfaces binding that has an
--     IPv4 one (0.0.0.0 or ""), as register.bindings does.
--
--   "registrator" (gliderlabs/registrator, lua/examples/registrator.lua)
--     key   .../<service name>/<service id>
--     value "<ip>:<port>", an IPv6 address in brackets ("[fd00::5]:80")
--     one service per name; a server per key, id = the service id.  Ids
--     with ":udp" (registrator's UDP services: "host:name:53:udp", and
--     "host:name:53:udp:127.0.0.1" from lua/examples/registrator.lua when a
--     port has several bindings) are left out.
--
-- A wildcard address (0.0.0.0, :: or "") becomes opts.wildcard_ip when it
-- is set; else, in the "registered" layout, the host address in the key
-- (the host that published the port); else ctx.host.ip.  Addresses must
-- be IP literals and ports 1-65535: a key whose value is not what the
-- layout says, or a binding that is not, is left out with a warning
-- (register.log.warn), and the rest is rendered.  Services are sorted by
-- name, servers by id then address, and a server address that a service
-- already has is given once: the result never depends on pairs() order.
--
-- opts.service = function(b) -> name | nil: the service a binding belongs
-- to (nil or false: left out).  b has key, ip, port, address and, for
-- "registered", host, image, container, private_port, port_type; for
-- "registrator", name and id.  The default is "<image>:<private_port>",
-- or the registrator name.
local register = require "register"

local M = {}

local LOG_LINES = 20 -- warnings per render, then one line with the rest

-- ---- addresses ----

function M.is_ipv4(s)
  if type(s) ~= "string" then return false end
  local a, b, c, d = s:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  if not a then return false end
  for _, o in ipairs { a, b, c, d } do
    if #o > 3 or (#o > 1 and o:sub(1, 1) == "0") or tonumber(o) > 255 then
      return false
    end
  end
  return true
end

local function groups(part)
  if part == "" then return 0 end
  local n = 0
  for g in (part .. ":"):gmatch("([^:]*):") do
    if #g < 1 or #g > 4 then return nil end
    n = n + 1
  end
  return n
end

-- an IPv6 literal, without brackets or zone: "fd00::5", "::ffff:1.2.3.4"
function M.is_ipv6(s)
  if type(s) ~= "string" or #s < 2 or #s > 45 or not s:find(":", 1, true)
      or s:find("[^%x:%.]") or s:find(":::", 1, true) then
    return false
  end
  local head, v4 = s:match("^(.*:)(%d+%.%d+%.%d+%.%d+)$")
  if head then
    if not M.is_ipv4(v4) then return false end
    s = head .. "0:0" -- the IPv4 tail counts as two groups
  end
  if s:find(".", 1, true) then return false end
  local a, b = s:match("^(.-)::(.*)$")
  if a then
    if b:find("::", 1, true) then return false end
    local na, nb = groups(a), groups(b)
    return na ~= nil and nb ~= nil and na + nb <= 7
  end
  return groups(s) == 8
end

function M.is_ip(s)
  return M.is_ipv4(s) or M.is_ipv6(s)
end

-- "ip:port", an IPv6 address in brackets
function M.hostport(ip, port)
  if ip:find(":", 1, true) then return "[" .. ip .. "]:" .. port end
  return ip .. ":" .. port
end

-- a port number as a string ("80"), or nil
function M.port(v)
  if math.type(v) == "integer" then v = tostring(v) end
  if type(v) ~= "string" or not v:match("^[1-9]%d?%d?%d?%d?$") then return nil end
  if tonumber(v) > 65535 then return nil end
  return v
end

-- ---- names ----

-- s with every run of characters outside `class` (a Lua pattern class
-- such as "%w_.:%-") replaced by one "_"; never empty
function M.sanitize(s, class)
  s = tostring(s):gsub("[^" .. class .. "]+", "_")
  if s == "" then s = "_" end
  return s
end

-- Distinct names for items in order: name_of(item) gives the wanted name;
-- a name already given gets "_2", "_3", ... (the first keeps it).
-- Returns a list of names parallel to items.
function M.unique(items, name_of)
  local used, out = {}, {}
  for i, item in ipairs(items) do
    local base = name_of(item)
    local name, n = base, 1
    while used[name] do
      n = n + 1
      name = base .. "_" .. n
    end
    used[name] = true
    out[i] = name
  end
  return out
end

-- text safe for a one-line comment: no control characters; with max, cut
-- to max bytes and "..." (a reader that limits its words: nginx)
function M.comment(s, max)
  s = tostring(s):gsub("%c", "?")
  if max and #s > max then s = s:sub(1, max) .. "..." end
  return s
end

-- 8 hex digits of s (FNV-1a, 32 bits): a short stand-in for a long text
function M.hash(s)
  local h = 2166136261
  for i = 1, #s do
    h = ((h ~ s:byte(i)) * 16777619) & 0xffffffff
  end
  return string.format("%08x", h)
end

-- name when it has at most max bytes; else its first bytes, "_" and the
-- hash of the whole name, max bytes in all (names that differ after the
-- cut stay apart), and true
function M.cap(name, max)
  if #name <= max then return name, false end
  return name:sub(1, max - 9) .. "_" .. M.hash(name), true
end

-- ---- reading etcd ----

local function sorted_keys(kv)
  local keys = {}
  for k, v in pairs(kv) do
    if type(k) == "string" then keys[#keys + 1] = k end
  end
  table.sort(keys)
  return keys
end
M.sorted_keys = sorted_keys

local function segments(key)
  local out = {}
  for s in key:gmatch("[^/]+") do out[#out + 1] = s end
  return out
end

local function short(s, n)
  n = n or 120
  if #s > n then return s:sub(1, n) .. "..." end
  return s
end

local function wildcard(ip)
  return ip == "" or ip == "0.0.0.0" or ip == "::"
end

-- one binding of the "registered" layout, or nil and why
local function registered_binding(key, host, image, cid, b, resolve)
  if type(b) ~= "table" then return nil, "a binding is not an object" end
  local ptype = b.port_type
  if ptype ~= "tcp" then
    if type(ptype) == "string" then return nil end -- udp, sctp: not ours
    return nil, "a binding has no port_type"
  end
  local pub, priv = M.port(b.public_port), M.port(b.private_port)
  if not pub then return nil, "public_port " .. short(tostring(b.public_port), 40) .. " is not a port" end
  if not priv then return nil, "private_port " .. short(tostring(b.private_port), 40) .. " is not a port" end
  if type(b.ip) ~= "string" then return nil, "a binding has no ip" end
  local ip, err = resolve(b.ip, host)
  if not ip then return nil, err end
  local container = type(b.container) == "string" and b.container ~= "" and b.container or cid
  local img = type(b.image) == "string" and b.image ~= "" and b.image or image
  return {
    key = key, host = host, image = img, container = container,
    private_port = priv, port_type = "tcp", ip = ip, port = pub,
    address = M.hostport(ip, pub),
    id = M.sanitize(container, "%w"):sub(1, 12) .. "_" .. pub,
  }
end

-- bindings of one key of the "registered" layout: a list, or nil and why
local function registered(key, value, resolve)
  local seg = segments(key)
  if #seg < 3 then return nil, "the key is not .../<host>/<image>/<container id>" end
  local host, image, cid = seg[#seg - 2], seg[#seg - 1], seg[#seg]
  if type(value) ~= "string" then return nil, "the value is not a string" end
  local arr, err = register.json.decode(value)
  if arr == nil then return nil, "the value is not JSON (" .. short(tostring(err), 80) .. ")" end
  if type(arr) ~= "table" or (next(arr) ~= nil and arr[1] == nil) then
    return nil, "the value is not a JSON array"
  end
  -- the :: twin of an IPv4 all-interfaces binding
  local v4 = {}
  for _, b in ipairs(arr) do
    if type(b) == "table" and (b.ip == "0.0.0.0" or b.ip == "") then
      v4[tostring(b.private_port) .. "/" .. tostring(b.port_type)] = true
    end
  end
  local out, bad = {}, nil
  for _, b in ipairs(arr) do
    if not (type(b) == "table" and b.ip == "::"
          and v4[tostring(b.private_port) .. "/" .. tostring(b.port_type)]) then
      local r, why = registered_binding(key, host, image, cid, b, resolve)
      if r then
        out[#out + 1] = r
      elseif why then
        bad = bad or why
      end
    end
  end
  return out, bad
end

-- the one server of a key of the "registrator" layout, or nil and why
local function registrator(key, value, resolve)
  local seg = segments(key)
  if #seg < 2 then return nil, "the key is not .../<service name>/<service id>" end
  local name, id = seg[#seg - 1], seg[#seg]
  -- registrator's UDP ids end in ":udp"; register's registrator.lua adds
  -- the address after it when a port has several bindings
  if (id .. ":"):find(":udp:", 1, true) then return {} end
  if type(value) ~= "string" then return nil, "the value is not a string" end
  local ip, port = value:match("^%[([^%]]*)%]:(%d+)$")
  if ip and not M.is_ipv6(ip) then ip = nil end
  if not ip then
    ip, port = value:match("^([^:%[%]]*):(%d+)$")
  end
  if not ip then return nil, "the value " .. short(value, 60) .. " is not ip:port ([ipv6]:port)" end
  if not M.port(port) then return nil, "the port of " .. short(value, 60) .. " is not a port" end
  local r, err = resolve(ip)
  if not r then return nil, err end
  return { {
    key = key, name = name, id = id, ip = r, port = port,
    address = M.hostport(r, port),
  } }
end

local layouts = { registered = registered, registrator = registrator }

local function default_service(b)
  if b.name then return b.name end
  return b.image .. ":" .. b.private_port
end

-- The services under kv: a list sorted by name of
--   { name = "...", servers = { {id, ip, port, address, key, ...}, ... } }
-- opts: layout, wildcard_ip, service (see the top); opts.always: names of
-- services to list even when they have no server.
function M.collect(kv, ctx, opts)
  opts = opts or {}
  ctx = ctx or {}
  local parse = layouts[opts.layout or "registered"]
  if not parse then error("register.render: unknown layout " .. tostring(opts.layout), 2) end
  local host_ip = type(ctx.host) == "table" and ctx.host.ip or nil
  if host_ip == "" then host_ip = nil end
  local wildcard_ip = opts.wildcard_ip
  local function resolve(ip, key_host)
    if wildcard(ip) then
      local to = wildcard_ip
      if not to and key_host and M.is_ip(key_host) then to = key_host end
      to = to or host_ip
      if not to then return nil, "a wildcard address and no host address to put in its place" end
      if not M.is_ip(to) then
        return nil, "wildcard address replaced by " .. short(tostring(to), 60) .. ", not an IP address"
      end
      return to
    end
    if not M.is_ip(ip) then return nil, "the address " .. short(ip, 60) .. " is not an IP address" end
    return ip
  end
  local pick = opts.service or default_service

  local by_name, names, warned, skipped = {}, {}, 0, 0
  local function warn(key, why)
    skipped = skipped + 1
    if warned < LOG_LINES then
      warned = warned + 1
      register.log.warn("render: %s: %s; left out", short(key, 200), why)
    end
  end
  local function service(name)
    local s = by_name[name]
    if not s then
      s = { name = name, servers = {}, seen = {} }
      by_name[name] = s
      names[#names + 1] = name
    end
    return s
  end
  for _, name in ipairs(opts.always or {}) do service(name) end

  for _, key in ipairs(sorted_keys(kv)) do
    local list, why = parse(key, kv[key], resolve)
    if why then warn(key, why) end
    for _, b in ipairs(list or {}) do
      local name = pick(b)
      if name then
        local s = service(tostring(name))
        s.servers[#s.servers + 1] = b
      end
    end
  end
  if skipped > warned then
    register.log.warn("render: %d more keys or bindings left out", skipped - warned)
  end

  table.sort(names)
  local out = {}
  for i, name in ipairs(names) do
    local s = by_name[name]
    table.sort(s.servers, function(a, b)
      if a.id ~= b.id then return a.id < b.id end
      if a.address ~= b.address then return a.address < b.address end
      return a.key < b.key
    end)
    local servers = {}
    for _, b in ipairs(s.servers) do
      if not s.seen[b.address] then
        s.seen[b.address] = true
        servers[#servers + 1] = b
      end
    end
    out[i] = { name = name, servers = servers }
  end
  return out
end

-- Options: a table whose keys are all in `known` (a set), else an error
-- naming the first unknown one (sorted).
function M.check_options(opts, known, who)
  if opts == nil then return {} end
  if type(opts) ~= "table" then error(who .. ": options must be a table", 0) end
  local unknown = {}
  for k in pairs(opts) do
    if not known[k] then unknown[#unknown + 1] = tostring(k) end
  end
  if #unknown > 0 then
    table.sort(unknown)
    error(who .. ": unknown option " .. unknown[1], 0)
  end
  return opts
end

-- lines of a string ("a\nb") or a list ({"a", "b"}), or {} for nil
function M.lines(v, what)
  if v == nil or v == false then return {} end
  if type(v) == "string" then
    local out = {}
    for line in (v .. "\n"):gmatch("([^\n]*)\n") do out[#out + 1] = line end
    if out[#out] == "" then out[#out] = nil end
    return out
  end
  if type(v) == "table" then
    for i, line in ipairs(v) do
      if type(line) ~= "string" then error("register.render: " .. what .. "[" .. i .. "] is not a string", 0) end
    end
    return v
  end
  error("register.render: " .. what .. " must be a string or a list of strings", 0)
end

return M

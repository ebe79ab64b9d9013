-- register: helpers for policy authors.   local register = require "register"
--
-- Everything here is documented in docs/policy.md.  In short:
--
--   register.json.encode(value [, key_order])  JSON as Ruby's to_json writes
--       it (no whitespace, '/' not escaped); objects list the keys named in
--       key_order first, in that order, then the rest sorted by bytes
--   register.json.decode(text)         value, or nil and an error
--   register.json.array([t])           t encodes as a JSON array, even empty
--   register.null                      JSON null (the same as cjson.null)
--   register.log.error/warn/info/debug(fmt, ...)
--   register.image(ref)                {registry, repository, name, basename,
--                                        tag, digest, id}
--   register.meta(c [, port])          SERVICE_* metadata from labels and env
--   register.services(c)               one registrator-style service per
--                                        published binding (0.0.0.0 and ::
--                                        twins folded into the IPv4 one)
--   register.wildcard(ip)              true for 0.0.0.0, ::, and "" (podman)
--   register.host_network(c)           true for --network host containers
--   register.http.request(opts)        from the event/changed hooks only
--   register.etcd.get(key), register.etcd.list(prefix)   (hooks only)
local core = require "register.core"

local register = {}

register.null = core.null

register.json = {
  encode = core.json_encode,
  decode = core.json_decode,
  array = function(t)
    return setmetatable(t or {}, core.array_mt)
  end,
}

register.log = {}
for _, level in ipairs { "error", "warn", "info", "debug" } do
  register.log[level] = function(fmt, ...)
    if select("#", ...) > 0 then
      core.log(level, string.format(fmt, ...))
    else
      core.log(level, tostring(fmt))
    end
  end
end

-- Image references, as Docker reads them:
--   [registry/]repository[:tag][@digest]
-- The first path component is a registry when it has a '.' or a ':' or is
-- "localhost".  An image given by id ("sha256:<64 hex>") has only `id`.
function register.image(ref)
  assert(type(ref) == "string", "register.image: a string is needed")
  local out = { ref = ref }
  if ref:match("^sha256:%x+$") then
    out.id = ref
    return out
  end
  local rest = ref
  local at = rest:find("@", 1, true)
  if at then
    out.digest = rest:sub(at + 1)
    rest = rest:sub(1, at - 1)
  end
  local first, after = rest:match("^([^/]+)/(.+)$")
  if first and (first:find("[.:]") or first == "localhost") then
    out.registry = first
    rest = after
  end
  local repo, tag = rest:match("^(.*):([^:/]+)$")
  if repo then
    out.repository, out.tag = repo, tag
  else
    out.repository = rest
  end
  out.name = out.registry and (out.registry .. "/" .. out.repository) or out.repository
  out.basename = out.repository:match("([^/]+)$")
  return out
end

-- SERVICE_<KEY> metadata from Config.Env and labels (labels win), keys
-- lower-cased: SERVICE_NAME -> name.  With `port` ("80" or "80/tcp"),
-- SERVICE_<port>_<KEY> overrides SERVICE_<KEY>; the second result tells
-- which keys came from the port-specific form.
function register.meta(c, port)
  local pnum = port and tostring(port):match("^(%d+)")
  local meta, from_port = {}, {}
  -- generic keys (env, then labels), then port-specific ones: later wins
  for pass = 1, 2 do
    for _, src in ipairs { c.env or {}, c.labels or {} } do
      for k, v in pairs(src) do
        local key = k:match("^SERVICE_(.+)$")
        local p, pkey = (key or ""):match("^(%d+)_(.+)$")
        if key and pass == 1 and not p then
          meta[key:lower()] = v
        elseif key and pass == 2 and p and p == pnum then
          meta[pkey:lower()] = v
          from_port[pkey:lower()] = true
        end
      end
    end
  end
  return meta, from_port
end

local function truthy(v)
  return v ~= nil and v ~= "" and v ~= "0" and v:lower() ~= "false"
end

-- An all-interfaces binding: Docker says 0.0.0.0 (and :: for IPv6), podman
-- says "".
function register.wildcard(ip)
  return ip == nil or ip == "" or ip == "0.0.0.0" or ip == "::"
end

local function v4_wildcard(ip)
  return ip == nil or ip == "" or ip == "0.0.0.0"
end

-- Docker >= 20.10.6 lists an all-interfaces binding twice, 0.0.0.0 and ::,
-- and Docker 26 sometimes gives the two different host ports.  These are
-- the bindings of c.ports without the :: twin of a port/protocol that has
-- an IPv4 (0.0.0.0 or "") binding: the IPv4 one is preferred.  Bindings to
-- a named address (127.0.0.1, ::1, fd00::1) are all kept.
function register.bindings(c)
  local v4 = {}
  for _, p in ipairs(c.ports) do
    if v4_wildcard(p.host_ip) then v4[p.private_port .. "/" .. p.proto] = true end
  end
  local out = {}
  for _, p in ipairs(c.ports) do
    if not (p.host_ip == "::" and v4[p.private_port .. "/" .. p.proto]) then out[#out + 1] = p end
  end
  return out
end

-- true for a container in the host's network namespace (--network host):
-- it has no bindings; its exposed ports are the host's.
function register.host_network(c)
  local ok, mode = pcall(function() return c.inspect.HostConfig.NetworkMode end)
  return ok and mode == "host"
end

-- One service per published binding, named as registrator names them:
-- SERVICE_<port>_NAME, else SERVICE_NAME, else the Compose service name
-- (label com.docker.compose.service), else the image's basename; a
-- container publishing several ports gets "-<port>" appended to names that
-- did not come from SERVICE_<port>_NAME.  SERVICE_IGNORE (or
-- SERVICE_<port>_IGNORE) drops a service.  The :: twin of an all-interfaces
-- binding is left out (register.bindings).  Fields: name, id
-- (hostname:container:port[:udp]), port (private, string), proto,
-- host_ip, host_port, ip (host_ip, or host.ip for wildcard bindings:
-- 0.0.0.0, :: and ""), tags (list), meta (all SERVICE_* keys).
function register.services(c, host)
  local out = {}
  local bindings = register.bindings(c)
  local published = {}
  for _, p in ipairs(bindings) do
    published[p.private_port .. "/" .. p.proto] = true
  end
  local count = 0
  for _ in pairs(published) do count = count + 1 end
  local img = register.image(c.image)
  local default = (c.labels or {})["com.docker.compose.service"]
  if default == "" then default = nil end
  default = default or img.basename or (c.image:match("([^/]+)$") or c.image):match("^[^:@]+")
  for _, p in ipairs(bindings) do
    local meta, from_port = register.meta(c, p.private_port)
    if not truthy(meta.ignore) then
      local name = meta.name or default
      if count > 1 and not from_port.name then
        name = name .. "-" .. p.private_port
      end
      local tags = {}
      for t in (meta.tags or ""):gmatch("[^,%s]+") do tags[#tags + 1] = t end
      local hostname = host and host.hostname or c.hostname
      local id = hostname .. ":" .. c.name .. ":" .. p.private_port
      if p.proto == "udp" then id = id .. ":udp" end
      out[#out + 1] = {
        name = name,
        id = id,
        port = p.private_port,
        proto = p.proto,
        host_ip = p.host_ip,
        host_port = p.host_port,
        ip = (register.wildcard(p.host_ip) and host) and host.ip or p.host_ip,
        tags = tags,
        meta = meta,
      }
    end
  end
  return out
end

-- register.checks(c): the health checks a container asks for with
-- registrator's names, in labels or env (labels win), for the policy's
-- checks(container, host) to return:
--
--   SERVICE_CHECK_HTTP=/path     an HTTP check of that path
--   SERVICE_CHECK_TCP=true       a TCP connect check
--   SERVICE_CHECK_INTERVAL=5s    between runs (default 5s)
--   SERVICE_CHECK_TIMEOUT=2s     per run (default 2s, at most the interval)
--   SERVICE_CHECK_RISE=2         successes in a row to pass (default 1)
--   SERVICE_CHECK_FALL=3         failures in a row to fail (default 1)
-- and, not in registrator:
--   SERVICE_CHECK_METHOD=GET     HTTP method (default GET)
--   SERVICE_CHECK_STATUS=200-299 passing statuses, "N" or "N-M" (200-399)
--   SERVICE_CHECK_HOST=name      Host header (default: the target)
--   SERVICE_CHECK_ADDRESS=net    check the container's IP on network `net`
--                                (or a literal IP) on the private port,
--                                e.g. for ports that are not published
--
-- The generic form applies to every published TCP port; the per-port form
-- SERVICE_<port>_CHECK_* wins over it (as in register.meta), and
-- SERVICE_<port>_CHECK_HTTP / _TCP choose that port's kind of check
-- whatever the generic form says (SERVICE_<port>_CHECK_TCP=false turns
-- checks off for that port).  Exposed ports that are not published are
-- checked only when they have an address.  Durations are "500ms", "5s",
-- "1m", "1m30s" or a number of seconds.  A malformed value raises an error
-- naming the variable.
--
-- Returns a list (ports in Docker's order) of check tables:
--   { port = "80/tcp", type = "http" | "tcp",
--     path = "/health", method = "GET", status = { 200, 399 },
--     host = nil | "name",                          -- http only
--     interval = 5, timeout = 2,                     -- seconds (numbers)
--     rise = 1, fall = 1, address = nil | "bridge" }
-- An empty list when the container asks for no check.
local duration_units = { ms = 0.001, s = 1, m = 60, h = 3600 }

local function check_duration(v, what)
  local n = tonumber(v)
  if n then
    if n <= 0 then error(("%s: %q is not a positive duration"):format(what, v), 0) end
    return n
  end
  local total, rest = 0, v
  if rest == "" then error(("%s: empty duration"):format(what), 0) end
  while rest ~= "" do
    local num, unit, tail = rest:match("^(%d+%.?%d*)(%a+)(.*)$")
    if not num or not duration_units[unit] then
      error(("%s: %q is not a duration (like 500ms, 5s, 1m)"):format(what, v), 0)
    end
    total = total + tonumber(num) * duration_units[unit]
    rest = tail
  end
  if total <= 0 then error(("%s: %q is not a positive duration"):format(what, v), 0) end
  return total
end

local function check_count(v, what)
  local n = tonumber(v)
  if not n or n < 1 or n ~= math.floor(n) then
    error(("%s: %q is not a whole number >= 1"):format(what, v), 0)
  end
  return math.tointeger(n)
end

function register.checks(c)
  local out = {}
  local ports, seen = {}, {}
  for _, p in ipairs(c.ports or {}) do
    local key = p.private_port .. "/" .. p.proto
    if p.proto == "tcp" and not seen[key] then
      seen[key] = true
      ports[#ports + 1] = { key = key, num = p.private_port, published = true }
    end
  end
  for _, p in ipairs(c.exposed or {}) do
    local key = p.private_port .. "/" .. p.proto
    if p.proto == "tcp" and not seen[key] then
      seen[key] = true
      ports[#ports + 1] = { key = key, num = p.private_port }
    end
  end
  for _, p in ipairs(ports) do
    local meta, from_port = register.meta(c, p.num)
    local function name(k)
      return "SERVICE_" .. (from_port[k] and (p.num .. "_") or "") .. k:upper()
    end
    local kind
    if from_port.check_http then
      kind = meta.check_http ~= "" and "http" or nil
    elseif from_port.check_tcp then
      kind = truthy(meta.check_tcp) and "tcp" or nil
    elseif meta.check_http and meta.check_http ~= "" then
      kind = "http"
    elseif truthy(meta.check_tcp) then
      kind = "tcp"
    end
    local address = meta.check_address ~= "" and meta.check_address or nil
    if kind and (p.published or address) then
      local interval = meta.check_interval and
          check_duration(meta.check_interval, name("check_interval")) or 5
      local timeout = meta.check_timeout and
          check_duration(meta.check_timeout, name("check_timeout")) or math.min(2, interval)
      if timeout > interval then
        error(("%s (%s) is longer than the interval (%ss)"):format(
          name("check_timeout"), meta.check_timeout, interval), 0)
      end
      local check = {
        port = p.key,
        type = kind,
        interval = interval,
        timeout = timeout,
        rise = meta.check_rise and check_count(meta.check_rise, name("check_rise")) or 1,
        fall = meta.check_fall and check_count(meta.check_fall, name("check_fall")) or 1,
        address = address,
      }
      if kind == "http" then
        check.path = meta.check_http
        if check.path:sub(1, 1) ~= "/" then
          error(("%s: %q does not start with /"):format(name("check_http"), check.path), 0)
        end
        check.method = (meta.check_method or "GET"):upper()
        check.host = meta.check_host ~= "" and meta.check_host or nil
        local status = meta.check_status or "200-399"
        local lo, hi = status:match("^%s*(%d%d%d)%s*%-%s*(%d%d%d)%s*$")
        if not lo then
          lo = status:match("^%s*(%d%d%d)%s*$")
          hi = lo
        end
        if not lo or tonumber(lo) > tonumber(hi) then
          error(("%s: %q is not a status or a range like 200-399"):format(
            name("check_status"), status), 0)
        end
        check.status = { math.tointeger(tonumber(lo)), math.tointeger(tonumber(hi)) }
      end
      out[#out + 1] = check
    end
  end
  return out
end

-- Runtime I/O, for the event and changed hooks (never for records): each
-- call suspends the hook's coroutine until the answer is in, so a slow
-- endpoint never holds up registration.
register.http = {
  -- opts: url (required), method ("GET"), headers ({name = value}), body,
  -- timeout (seconds, default 10).  Returns {status, body, headers} or
  -- nil and an error.
  -- (The C functions themselves, so that an error names the caller's line.)
  request = core.http_request,
}

register.etcd = {
  -- the value of key, or nil (and an error when etcd could not answer)
  get = core.etcd_get,
  -- {key = value} for every key under prefix, or nil and an error
  list = core.etcd_list,
}

return register

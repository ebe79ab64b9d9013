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

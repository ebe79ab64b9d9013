-- register.render.haproxy: a complete haproxy configuration from the
-- default /registered schema, for `register watch`:
--
--   register watch /registered --render haproxy.lua --out /etc/haproxy/haproxy.cfg ...
--
-- with haproxy.lua (or the module itself, with its defaults):
--
--   return require("register.render.haproxy").new{
--     frontends = { ["example::web:80"] = "*:8080" },   -- service -> bind
--     check = true,
--   }
--
-- One backend per service: an image and a private TCP port,
-- "example::web:80" (UDP bindings are left out); a server per published
-- binding of each of its containers, named "<short id>_<public port>".
-- Options (all optional; docs/policy.md, "Renderers: register watch"):
--
--   layout        "registered" (default) or "registrator" (/services/<name>/<id>
--                 = "ip:port"; register.render.registrator_haproxy)
--   wildcard_ip   the address for wildcard bindings (0.0.0.0, ::, ""); default:
--                 the host address in the key, else ctx.host.ip
--   service       function(binding) -> service name, or nil to leave it out
--   mode          "http" (default) or "tcp": the defaults section's mode
--   timeouts      { connect = "5s", client = "30s", server = "30s", ... }: merged
--                 over these; false drops one
--   retries       0 (default): haproxy does not retry a failed connection ...
--   redispatch    false (default): ... nor send it to another server
--   balance       an algorithm for every backend (haproxy's default: roundrobin)
--   check         true, or server options such as "check inter 2s fall 2":
--                 health checks on every server (default: none)
--   server_options  more options on every server line ("maxconn 100")
--   global        lines in the global section (a string or a list)
--   system_ca     true: haproxy's own HTTP client (Lua's core.httpclient)
--                 verifies with the system's CA store, which haproxy then
--                 loads at every start and reload (30-40 ms of CPU each, on
--                 a reload that carries a change).  Default false: the global
--                 section says "httpclient.ssl.verify none", as nothing in
--                 this configuration uses that client; ignored when the
--                 global lines set httpclient.ssl.* themselves
--   defaults      lines added at the end of the defaults section
--   stats         the bind address of a stats page, "127.0.0.1:8404" (default);
--                 false for none (haproxy needs at least one listener)
--   frontends     { [service] = bind or {binds} } and/or a list of
--                 { name, bind, mode, default_backend, use_backend = {{service,
--                 condition}, ...}, options }
--   services      { [service] = { name, mode, balance, check, server_options,
--                 options } }: per-backend settings; these backends are there
--                 even without a server (as are those frontends use)
--   fragment      true: frontends and backends only (no global, defaults,
--                 stats), for `haproxy -f main.cfg -f this.cfg`
--   extra         lines at the end (listen sections, ...)
local services = require "register.render.services"

local M = {}

local WHO = "register.render.haproxy"
local NAME_CLASS = "%w_.:%-"

local function set(list)
  local s = {}
  for _, v in ipairs(list) do s[v] = true end
  return s
end

local KNOWN = set { "layout", "wildcard_ip", "service", "mode", "timeouts", "retries",
  "redispatch", "balance", "check", "server_options", "global", "defaults", "stats",
  "frontends", "services", "fragment", "extra", "system_ca" }
local SERVICE_KNOWN = set { "name", "mode", "balance", "check", "server_options", "options" }
local FRONTEND_KNOWN = set { "name", "bind", "mode", "default_backend", "use_backend", "options" }
local TIMEOUT_ORDER = { "connect", "client", "server" }

local function sorted_string_keys(t)
  local keys = {}
  for k in pairs(t) do
    if type(k) == "string" then keys[#keys + 1] = k end
  end
  table.sort(keys)
  return keys
end

local function one_line(v, what)
  if type(v) ~= "string" or v:find("[\r\n]") then
    error(WHO .. ": " .. what .. " must be a string of one line", 0)
  end
  return v
end

local function check_option(v, what)
  if v == nil or v == false then return nil end
  if v == true then return "check" end
  return one_line(v, what)
end

local function mode_option(v, what)
  if v == nil then return nil end
  if v ~= "http" and v ~= "tcp" then
    error(WHO .. ": " .. what .. " must be \"http\" or \"tcp\"", 0)
  end
  return v
end

-- the options, checked once, in the shape render uses
local function prepare(opts)
  opts = services.check_options(opts, KNOWN, WHO)
  local p = {
    layout = opts.layout or "registered",
    wildcard_ip = opts.wildcard_ip,
    service = opts.service,
    mode = mode_option(opts.mode, "mode") or "http",
    retries = opts.retries == nil and 0 or opts.retries,
    redispatch = opts.redispatch == true,
    balance = opts.balance and one_line(opts.balance, "balance"),
    check = check_option(opts.check, "check"),
    server_options = opts.server_options and one_line(opts.server_options, "server_options"),
    global = services.lines(opts.global, "global"),
    system_ca = opts.system_ca == true,
    defaults = services.lines(opts.defaults, "defaults"),
    extra = services.lines(opts.extra, "extra"),
    fragment = opts.fragment == true,
    services = {},
    frontends = {},
    always = {},
  }
  if p.layout ~= "registered" and p.layout ~= "registrator" then
    error(WHO .. ": layout must be \"registered\" or \"registrator\"", 0)
  end
  if p.service ~= nil and type(p.service) ~= "function" then
    error(WHO .. ": service must be a function", 0)
  end
  if p.wildcard_ip ~= nil and not services.is_ip(p.wildcard_ip) then
    error(WHO .. ": wildcard_ip must be an IP address", 0)
  end
  if math.type(p.retries) ~= "integer" or p.retries < 0 then
    error(WHO .. ": retries must be a whole number >= 0", 0)
  end
  if opts.system_ca ~= nil and type(opts.system_ca) ~= "boolean" then
    error(WHO .. ": system_ca must be true or false", 0)
  end
  for _, line in ipairs(p.global) do
    if line:match("^%s*httpclient%.ssl%.") then p.sets_httpclient_ssl = true end
  end
  if opts.stats == nil then
    p.stats = not p.fragment and "127.0.0.1:8404" or nil
  elseif opts.stats then
    p.stats = one_line(opts.stats, "stats")
  end

  -- timeouts: the defaults, merged with the option's
  local t = { connect = "5s", client = "30s", server = "30s" }
  if opts.timeouts ~= nil then
    if type(opts.timeouts) ~= "table" then error(WHO .. ": timeouts must be a table", 0) end
    for k, v in pairs(opts.timeouts) do
      if type(k) ~= "string" or not k:match("^[%w%-]+$") then
        error(WHO .. ": timeouts: " .. tostring(k) .. " is not a timeout name", 0)
      end
      if v == false then
        t[k] = nil
      elseif math.type(v) == "integer" then
        t[k] = tostring(v)
      else
        t[k] = one_line(v, "timeouts." .. k)
      end
    end
  end
  p.timeouts = {}
  local rest = sorted_string_keys(t)
  for _, k in ipairs(TIMEOUT_ORDER) do
    if t[k] then p.timeouts[#p.timeouts + 1] = { k, t[k] } end
  end
  for _, k in ipairs(rest) do
    if k ~= "connect" and k ~= "client" and k ~= "server" then
      p.timeouts[#p.timeouts + 1] = { k, t[k] }
    end
  end

  -- per-service settings
  if opts.services ~= nil then
    if type(opts.services) ~= "table" then error(WHO .. ": services must be a table", 0) end
    for _, name in ipairs(sorted_string_keys(opts.services)) do
      local s = opts.services[name]
      if type(s) ~= "table" then error(WHO .. ": services[" .. name .. "] must be a table", 0) end
      services.check_options(s, SERVICE_KNOWN, WHO .. " services[" .. name .. "]")
      local what = "services[" .. name .. "]."
      p.services[name] = {
        name = s.name and one_line(s.name, what .. "name"),
        mode = mode_option(s.mode, what .. "mode"),
        balance = s.balance and one_line(s.balance, what .. "balance"),
        check = s.check,  -- nil: the general option; false: none
        server_options = s.server_options and one_line(s.server_options, what .. "server_options"),
        options = services.lines(s.options, what .. "options"),
      }
      if s.check ~= nil then p.services[name].check = check_option(s.check, what .. "check") or false end
      p.always[#p.always + 1] = name
    end
  end

  -- frontends: { [service] = bind(s) } and { {name=..., ...}, ... }
  if opts.frontends ~= nil then
    if type(opts.frontends) ~= "table" then error(WHO .. ": frontends must be a table", 0) end
    local function binds(v, what)
      if type(v) == "string" then return { one_line(v, what) } end
      if type(v) ~= "table" or #v == 0 then
        error(WHO .. ": " .. what .. " must be a bind address or a list of them", 0)
      end
      local out = {}
      for i, b in ipairs(v) do out[i] = one_line(b, what .. "[" .. i .. "]") end
      return out
    end
    for _, name in ipairs(sorted_string_keys(opts.frontends)) do
      p.frontends[#p.frontends + 1] = {
        name = "fe_" .. name,
        binds = binds(opts.frontends[name], "frontends[" .. name .. "]"),
        default_backend = name,
        use_backend = {},
        options = {},
      }
      p.always[#p.always + 1] = name
    end
    for i, f in ipairs(opts.frontends) do
      local what = "frontends[" .. i .. "]"
      if type(f) ~= "table" then error(WHO .. ": " .. what .. " must be a table", 0) end
      services.check_options(f, FRONTEND_KNOWN, WHO .. " " .. what)
      local fe = {
        name = f.name and one_line(f.name, what .. ".name") or ("fe_" .. i),
        binds = binds(f.bind, what .. ".bind"),
        mode = mode_option(f.mode, what .. ".mode"),
        default_backend = f.default_backend and one_line(f.default_backend, what .. ".default_backend"),
        use_backend = {},
        options = services.lines(f.options, what .. ".options"),
      }
      if fe.default_backend then p.always[#p.always + 1] = fe.default_backend end
      if f.use_backend ~= nil then
        if type(f.use_backend) ~= "table" then error(WHO .. ": " .. what .. ".use_backend must be a list", 0) end
        for j, u in ipairs(f.use_backend) do
          local uw = what .. ".use_backend[" .. j .. "]"
          if type(u) ~= "table" then error(WHO .. ": " .. uw .. " must be {service, condition}", 0) end
          fe.use_backend[j] = { one_line(u[1], uw .. "[1]"), one_line(u[2], uw .. "[2]") }
          p.always[#p.always + 1] = u[1]
        end
      end
      p.frontends[#p.frontends + 1] = fe
    end
  end
  return p
end

local function indent(out, lines)
  for _, l in ipairs(lines) do out[#out + 1] = "    " .. l end
end

local function render(p, kv, ctx)
  ctx = ctx or {}
  local list = services.collect(kv, ctx, {
    layout = p.layout, wildcard_ip = p.wildcard_ip, service = p.service, always = p.always })
  -- backend names: sanitized, distinct
  local backend, mode = {}, {}
  local names = services.unique(list, function(s)
    local o = p.services[s.name]
    return services.sanitize(o and o.name or s.name, NAME_CLASS)
  end)
  for i, s in ipairs(list) do
    backend[s.name] = names[i]
    local o = p.services[s.name]
    mode[s.name] = o and o.mode or p.mode
  end

  local out = {}
  out[#out + 1] = "# Generated by register watch (" .. WHO .. ") from "
      .. services.comment(ctx.prefix or "?") .. ": do not edit."
  if not p.fragment then
    out[#out + 1] = ""
    out[#out + 1] = "global"
    if not p.system_ca and not p.sets_httpclient_ssl then
      -- haproxy loads the system's CA store for this client at every start
      -- and reload otherwise (30-40 ms of CPU, each reload that carries a
      -- change waits for it); nothing here uses the client
      out[#out + 1] = "    httpclient.ssl.verify none"
    end
    indent(out, p.global)
    out[#out + 1] = ""
    out[#out + 1] = "defaults"
    out[#out + 1] = "    mode " .. p.mode
    for _, t in ipairs(p.timeouts) do
      out[#out + 1] = "    timeout " .. t[1] .. " " .. t[2]
    end
    out[#out + 1] = "    retries " .. p.retries
    if p.redispatch then out[#out + 1] = "    option redispatch" end
    if p.balance then out[#out + 1] = "    balance " .. p.balance end
    indent(out, p.defaults)
  end

  if p.stats then
    out[#out + 1] = ""
    out[#out + 1] = "frontend stats"
    out[#out + 1] = "    mode http"
    out[#out + 1] = "    bind " .. p.stats
    out[#out + 1] = "    stats enable"
    out[#out + 1] = "    stats uri /"
  end

  local fe_names = services.unique(p.frontends, function(f)
    local n = services.sanitize(f.name, NAME_CLASS)
    if n == "stats" and p.stats then n = "fe_stats" end
    return n
  end)
  for i, f in ipairs(p.frontends) do
    -- the frontend's mode is its backends' (haproxy refuses a mix)
    local m = f.mode
    local function use(svc)
      if m and mode[svc] ~= m then
        error(("%s: frontend %s is mode %s and backend %s mode %s"):format(
          WHO, fe_names[i], m, backend[svc], mode[svc]), 0)
      end
      m = mode[svc]
    end
    if f.default_backend then use(f.default_backend) end
    for _, u in ipairs(f.use_backend) do use(u[1]) end
    m = m or p.mode
    out[#out + 1] = ""
    out[#out + 1] = "frontend " .. fe_names[i]
    if m ~= p.mode or p.fragment then out[#out + 1] = "    mode " .. m end
    for _, b in ipairs(f.binds) do out[#out + 1] = "    bind " .. b end
    indent(out, f.options)
    for _, u in ipairs(f.use_backend) do
      out[#out + 1] = "    use_backend " .. backend[u[1]] .. " " .. u[2]
    end
    if f.default_backend then
      out[#out + 1] = "    default_backend " .. backend[f.default_backend]
    end
  end

  for i, s in ipairs(list) do
    local o = p.services[s.name] or {}
    out[#out + 1] = ""
    out[#out + 1] = "backend " .. names[i]
    out[#out + 1] = "    # " .. services.comment(s.name) .. ": " .. #s.servers
        .. (#s.servers == 1 and " server" or " servers")
    if (o.mode and o.mode ~= p.mode) or p.fragment then
      out[#out + 1] = "    mode " .. mode[s.name]
    end
    if o.balance then out[#out + 1] = "    balance " .. o.balance end
    indent(out, o.options or {})
    local check = o.check
    if check == nil then check = p.check end
    local tail = ""
    if check then tail = tail .. " " .. check end
    local so = o.server_options or p.server_options
    if so then tail = tail .. " " .. so end
    local snames = services.unique(s.servers, function(b)
      return services.sanitize(b.id, NAME_CLASS)
    end)
    for j, b in ipairs(s.servers) do
      out[#out + 1] = "    server " .. snames[j] .. " " .. b.address .. tail
    end
  end

  if #p.extra > 0 then
    out[#out + 1] = ""
    for _, l in ipairs(p.extra) do out[#out + 1] = l end
  end
  out[#out + 1] = ""
  return table.concat(out, "\n")
end

-- A renderer with these options: { render = function(kv, ctx) }.
function M.new(opts)
  local p = prepare(opts)
  return {
    render = function(kv, ctx) return render(p, kv, ctx) end,
  }
end

-- The defaults.
M.render = M.new().render

return M

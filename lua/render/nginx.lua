-- register.render.nginx: an nginx `upstream` block per service, for
-- `register watch`, to include in nginx's http {} context:
--
--   register watch /registered --render nginx.lua --out /etc/nginx/conf.d/upstreams.conf ...
--
-- From the default /registered schema, a service is an image and a
-- private TCP port ("example::web:80"), its upstream is named by the
-- service in lower case with every run of characters other than letters,
-- digits, '_', '.' and '-' made one '_' ("example_web_80"; a name taken
-- already gets "_2", ...), and each published binding of its containers
-- is a `server ip:port;`.  A name longer than 200 bytes is cut, with a
-- hash of the whole name after it, and said (nginx refuses a word of
-- about 4 KB: one such key would keep every change out).  With layout =
-- "registrator", services are registrator's (/services/<name>/<id> =
-- "ip:port").
--
--   return require("register.render.nginx").new{
--     upstream_options = { "least_conn;", "keepalive 16;" },
--     server_options = "max_fails=2 fail_timeout=5s",
--     services = { ["example::web:80"] = { name = "web" } },
--   }
--
-- nginx refuses an upstream without a server, so an upstream with none
-- (a service named in `services` whose containers are all gone) gets
-- `server 127.0.0.1:1 down;` (`placeholder`), and requests to it fail
-- with 502 instead of the configuration failing.
--
-- Options (all optional; docs/policy.md, "Renderers: register watch"):
--   layout, wildcard_ip, service   as register.render.haproxy
--   upstream_options   lines in every upstream block ("least_conn;")
--   server_options     after the address of every server ("max_fails=2")
--   services           { [service] = { name, upstream_options, server_options } };
--                      these upstreams are there even without a server
--   placeholder        the address of an empty upstream's down server
--                      ("127.0.0.1:1")
--   extra              lines at the end (server blocks that use the upstreams)
local services = require "register.render.services"

local M = {}

local register = require "register"

local WHO = "register.render.nginx"
local NAME_CLASS = "%w_.%-"
-- nginx refuses a word (or a comment) of about 4 KB, "too long
-- parameter", and with it the whole file: an upstream name longer than
-- this is cut, with the hash of the whole name to keep it apart (a
-- warning each, LOG_LINES at most, then one with the rest), and comments
-- are cut to COMMENT_MAX
local NAME_MAX = 200
local COMMENT_MAX = 200
local LOG_LINES = 20

local function set(list)
  local s = {}
  for _, v in ipairs(list) do s[v] = true end
  return s
end

local KNOWN = set { "layout", "wildcard_ip", "service", "upstream_options",
  "server_options", "services", "placeholder", "extra" }
local SERVICE_KNOWN = set { "name", "upstream_options", "server_options" }

local function one_line(v, what)
  if type(v) ~= "string" or v:find("[\r\n]") then
    error(WHO .. ": " .. what .. " must be a string of one line", 0)
  end
  return v
end

local function prepare(opts)
  opts = services.check_options(opts, KNOWN, WHO)
  local p = {
    layout = opts.layout or "registered",
    wildcard_ip = opts.wildcard_ip,
    service = opts.service,
    upstream_options = services.lines(opts.upstream_options, "upstream_options"),
    server_options = opts.server_options and one_line(opts.server_options, "server_options"),
    placeholder = opts.placeholder and one_line(opts.placeholder, "placeholder") or "127.0.0.1:1",
    extra = services.lines(opts.extra, "extra"),
    services = {},
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
  if opts.services ~= nil then
    if type(opts.services) ~= "table" then error(WHO .. ": services must be a table", 0) end
    local names = {}
    for k in pairs(opts.services) do
      if type(k) ~= "string" then error(WHO .. ": services: keys are service names", 0) end
      names[#names + 1] = k
    end
    table.sort(names)
    for _, name in ipairs(names) do
      local s = opts.services[name]
      if type(s) ~= "table" then error(WHO .. ": services[" .. name .. "] must be a table", 0) end
      services.check_options(s, SERVICE_KNOWN, WHO .. " services[" .. name .. "]")
      local what = "services[" .. name .. "]."
      p.services[name] = {
        name = s.name and one_line(s.name, what .. "name"),
        upstream_options = s.upstream_options and
            services.lines(s.upstream_options, what .. "upstream_options"),
        server_options = s.server_options and one_line(s.server_options, what .. "server_options"),
      }
      p.always[#p.always + 1] = name
    end
  end
  return p
end

local function render(p, kv, ctx)
  ctx = ctx or {}
  local list = services.collect(kv, ctx, {
    layout = p.layout, wildcard_ip = p.wildcard_ip, service = p.service, always = p.always })
  local cut = 0
  local names = services.unique(list, function(s)
    local o = p.services[s.name]
    local name = services.sanitize((o and o.name or s.name):lower(), NAME_CLASS)
    local capped, was = services.cap(name, NAME_MAX)
    if was then
      cut = cut + 1
      if cut <= LOG_LINES then
        local key = s.servers[1] and s.servers[1].key or s.name
        register.log.warn("render: %s: the upstream name of %d bytes is cut to %s (nginx refuses "
          .. "a word of about 4 KB)", services.comment(key, 120), #name, capped)
      end
    end
    return capped
  end)
  if cut > LOG_LINES then
    register.log.warn("render: %d more upstream names cut", cut - LOG_LINES)
  end
  local out = {}
  out[#out + 1] = "# Generated by register watch (" .. WHO .. ") from "
      .. services.comment(ctx.prefix or "?", COMMENT_MAX) .. ": do not edit."
  for i, s in ipairs(list) do
    local o = p.services[s.name] or {}
    out[#out + 1] = ""
    out[#out + 1] = "upstream " .. names[i] .. " {"
    out[#out + 1] = "    # " .. services.comment(s.name, COMMENT_MAX) .. ": " .. #s.servers
        .. (#s.servers == 1 and " server" or " servers")
    for _, l in ipairs(o.upstream_options or p.upstream_options) do
      out[#out + 1] = "    " .. l
    end
    local so = o.server_options or p.server_options
    so = so and (" " .. so) or ""
    for _, b in ipairs(s.servers) do
      out[#out + 1] = "    server " .. b.address .. so .. ";  # " .. services.comment(b.id, COMMENT_MAX)
    end
    if #s.servers == 0 then
      out[#out + 1] = "    # nginx refuses an upstream without servers: a placeholder, marked down"
      out[#out + 1] = "    server " .. p.placeholder .. " down;"
    end
    out[#out + 1] = "}"
  end
  if #p.extra > 0 then
    out[#out + 1] = ""
    for _, l in ipairs(p.extra) do out[#out + 1] = l end
  end
  out[#out + 1] = ""
  return table.concat(out, "\n")
end

function M.new(opts)
  local p = prepare(opts)
  return {
    render = function(kv, ctx) return render(p, kv, ctx) end,
  }
end

M.render = M.new().render

return M

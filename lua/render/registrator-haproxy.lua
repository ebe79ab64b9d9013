-- register.render.registrator_haproxy: the haproxy configuration of
-- register.render.haproxy, from registrator's etcd layout
-- (gliderlabs/registrator, lua/examples/registrator.lua):
--
--   <prefix>/<service name>/<service id>  =  "<ip>:<port>"   ("[fd00::5]:80")
--
--   register watch /services --render registrator-haproxy.lua --out haproxy.cfg ...
--
-- One backend per service name, a server per key, named after the service
-- id (sanitized); UDP ids (with ":udp") are left out, as are values that
-- are not "ip:port" with an IP literal (a warning each).  A wildcard
-- address (0.0.0.0, ::) becomes opts.wildcard_ip, else ctx.host.ip.
--
--   return require("register.render.registrator_haproxy").new{
--     frontends = { web = "*:80" },
--   }
--
-- new(opts) takes every option of register.render.haproxy; layout is
-- "registrator" unless opts say otherwise.
local haproxy = require "register.render.haproxy"

local M = {}

function M.new(opts)
  if opts ~= nil and type(opts) ~= "table" then return haproxy.new(opts) end
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  if o.layout == nil then o.layout = "registrator" end
  return haproxy.new(o)
end

M.render = M.new().render

return M

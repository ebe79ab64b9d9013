-- registrator-style: one key per published port, as gliderlabs/registrator
-- writes them to etcd:
--
--   /services/<service name>/<hostname>:<container name>:<port>[:udp]
--     -> "<ip>:<public port>"
--
-- The service name is SERVICE_<port>_NAME, else SERVICE_NAME, else the
-- image's basename (with "-<port>" when a container publishes several
-- ports); labels win over environment variables.  SERVICE_IGNORE (or
-- SERVICE_<port>_IGNORE) leaves a service out.  <ip> is the binding's
-- address, or this host's for wildcard bindings (0.0.0.0, ::).
local register = require "register"

local ROOT = "/services"

local policy = {}

-- Keys live under /services/<name>/, which other hosts share: there is no
-- subtree of our own, so no prefix().  The runtime still deletes exactly
-- what it wrote when a container goes.

function policy.records(c, host)
  local out = {}
  for _, s in ipairs(register.services(c, host)) do
    out[ROOT .. "/" .. s.name .. "/" .. s.id] = s.ip .. ":" .. s.host_port
  end
  return out
end

return policy

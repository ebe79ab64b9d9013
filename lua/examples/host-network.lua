-- registrator-style keys (see registrator.lua), and host-network
-- containers too: a container run with --network host publishes nothing
-- (it has no bindings, its ports are the host's), so its exposed ports are
-- registered with this host's address:
--
--   /services/<service name>/<hostname>:<container name>:<port>[:udp]
--     -> "<host.ip>:<port>"
--
-- Other containers get one key per published binding, as registrator.lua.
local register = require "register"

local ROOT = "/services"

local policy = {}

function policy.records(c, host)
  local out = {}
  if register.host_network(c) then
    local default = c.labels["com.docker.compose.service"] or register.image(c.image).basename
        or c.image
    for _, e in ipairs(c.exposed) do
      local meta, from_port = register.meta(c, e.private_port)
      local name = meta.name or default
      if #c.exposed > 1 and not from_port.name then name = name .. "-" .. e.private_port end
      local id = host.hostname .. ":" .. c.name .. ":" .. e.private_port
      if e.proto == "udp" then id = id .. ":udp" end
      out[ROOT .. "/" .. name .. "/" .. id] = host.ip .. ":" .. e.private_port
    end
    return out
  end
  for _, s in ipairs(register.services(c, host)) do
    out[ROOT .. "/" .. s.name .. "/" .. s.id] = s.ip .. ":" .. s.host_port
  end
  return out
end

return policy

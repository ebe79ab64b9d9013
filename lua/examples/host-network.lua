-- registrator-style keys (see registrator.lua), and host-network
-- containers too: a container run with --network host publishes nothing
-- (it has no bindings, its ports are the host's), so its exposed ports are
-- registered with this host's address:
--
--   /services/<service name>/<hostname>:<container name>:<port>[:udp]
--     -> "<host.ip>:<port>"
--
-- Other containers get one key per published binding, as registrator.lua
-- (ids of a port with several bindings end in the binding's address).  An
-- IPv6 address is written in brackets: "[fd00::5]:8080".
local register = require "register"

local ROOT = "/services"

-- "<ip>:<port>", an IPv6 address in brackets (as Go's net.JoinHostPort)
local function hostport(ip, port)
  if ip:find(":", 1, true) then return "[" .. ip .. "]:" .. port end
  return ip .. ":" .. port
end

-- register.services' ids are one per port: those of a port with several
-- bindings get the binding's address appended, or its "<address>:<public
-- port>" where two bindings of the port share an address (registrator.lua)
local function distinct_ids(services)
  local per_id, per_ip = {}, {}
  for _, s in ipairs(services) do
    per_id[s.id] = (per_id[s.id] or 0) + 1
    per_ip[s.id .. " " .. s.ip] = (per_ip[s.id .. " " .. s.ip] or 0) + 1
  end
  for _, s in ipairs(services) do
    if per_id[s.id] > 1 then
      if per_ip[s.id .. " " .. s.ip] > 1 then
        s.id = s.id .. ":" .. hostport(s.ip, s.host_port)
      else
        s.id = s.id .. ":" .. (s.ip:find(":", 1, true) and "[" .. s.ip .. "]" or s.ip)
      end
    end
  end
  return services
end

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
      out[ROOT .. "/" .. name .. "/" .. id] = hostport(host.ip, e.private_port)
    end
    return out
  end
  for _, s in ipairs(distinct_ids(register.services(c, host))) do
    out[ROOT .. "/" .. s.name .. "/" .. s.id] = hostport(s.ip, s.host_port)
  end
  return out
end

return policy

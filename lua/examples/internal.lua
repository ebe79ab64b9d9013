-- registrator's -internal: each container's own address on one network,
-- with the private (exposed) ports, for clients on that network:
--
--   /internal/<service name>/<hostname>:<container name>:<port>[:udp]
--     -> "<container address on the network>:<private port>"
--
-- The network is the one the label register.network names (a user-defined
-- network, say "backend"); without the label, the container's only network.
-- A container that is not on that network (yet) has no records: a network
-- connect or disconnect re-evaluates it.  Names as register.services names
-- them: SERVICE_<port>_NAME, SERVICE_NAME, the Compose service, the image.
local register = require "register"

local ROOT = "/internal"

-- "<ip>:<port>", an IPv6 address in brackets (as Go's net.JoinHostPort)
local function hostport(ip, port)
  if ip:find(":", 1, true) then return "[" .. ip .. "]:" .. port end
  return ip .. ":" .. port
end

local policy = {}

local function network_of(c)
  local want = c.labels["register.network"]
  if want and want ~= "" then return c.networks[want] end
  local only, n = nil, 0
  for _, net in pairs(c.networks) do only, n = net, n + 1 end
  return n == 1 and only or nil
end

function policy.records(c, host)
  local net = network_of(c)
  if not net or not net.ip or net.ip == "" then return nil end
  local default = c.labels["com.docker.compose.service"] or register.image(c.image).basename
      or c.image
  local out = {}
  for _, e in ipairs(c.exposed) do
    local meta, from_port = register.meta(c, e.private_port)
    local ignore = meta.ignore and meta.ignore ~= "" and meta.ignore ~= "0" and meta.ignore:lower() ~= "false"
    if not ignore then
      local name = meta.name or default
      if #c.exposed > 1 and not from_port.name then name = name .. "-" .. e.private_port end
      local id = host.hostname .. ":" .. c.name .. ":" .. e.private_port
      if e.proto == "udp" then id = id .. ":udp" end
      out[ROOT .. "/" .. name .. "/" .. id] = hostport(net.ip, e.private_port)
    end
  end
  return out
end

return policy

-- One key per port, under the default layout:
--
--   /registered/<host ip>/<image>/<container id>/<private port>/<proto>
--     -> "<ip>:<public port>"
--
-- <ip> is the binding's address, or the host's for wildcard bindings; an
-- IPv6 address is written in brackets ("[::1]:18091").  A port bound twice
-- (two host addresses) keeps the first binding.
local register = require "register"

local policy = {}

-- "<ip>:<port>", an IPv6 address in brackets (as Go's net.JoinHostPort)
local function hostport(ip, port)
  if ip:find(":", 1, true) then return "[" .. ip .. "]:" .. port end
  return ip .. ":" .. port
end

function policy.prefix(host)
  return "/registered/" .. host.ip
end

function policy.records(c, host)
  local image = c.image:gsub("/", "::")
  local base = policy.prefix(host) .. "/" .. image .. "/" .. c.id
  local out = {}
  for _, p in ipairs(c.ports) do
    local key = base .. "/" .. p.private_port .. "/" .. p.proto
    if not out[key] then
      local ip = register.wildcard(p.host_ip) and host.ip or p.host_ip
      out[key] = hostport(ip, p.host_port)
    end
  end
  return out
end

return policy

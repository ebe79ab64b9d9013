-- One key per port, under the default layout:
--
--   /registered/<host ip>/<image>/<container id>/<private port>/<proto>
--     -> "<ip>:<public port>"
--
-- <ip> is the binding's address, or the host's for wildcard bindings.  A
-- port bound twice (two host addresses) keeps the first binding.
local register = require "register"

local policy = {}

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
      out[key] = ip .. ":" .. p.host_port
    end
  end
  return out
end

return policy

-- Every network a container is on, IPv4 and IPv6: one key per network and
-- exposed port, with the container's addresses there:
--
--   /networks/<hostname>/<container name>/<network>/<port>[/udp]
--     -> {"ip":"172.20.0.2","ip6":"fd00:5e:1::2","port":80}
--
-- "ip6" is the network's global IPv6 address (a dockerd or a network with
-- --ipv6 and, say, a ULA subnet fd00::/8); a family the network lacks is
-- left out.  Host-network containers have no addresses of their own and
-- get no keys.  `docker network connect` and `disconnect` re-evaluate the
-- container, so its keys follow its networks.
local register = require "register"

local policy = {}

function policy.prefix(host)
  return "/networks/" .. host.hostname
end

function policy.records(c, host)
  local out = {}
  for name, net in pairs(c.networks) do
    local ip = net.ip ~= "" and net.ip or nil
    local ip6 = net.ip6 ~= "" and net.ip6 or nil
    if ip or ip6 then
      for _, e in ipairs(c.exposed) do
        local key = ("/networks/%s/%s/%s/%s"):format(host.hostname, c.name, name, e.private_port)
        if e.proto ~= "tcp" then key = key .. "/" .. e.proto end
        out[key] = register.json.encode({ ip = ip, ip6 = ip6, port = tonumber(e.private_port) },
          { "ip", "ip6", "port" })
      end
    end
  end
  return out
end

return policy

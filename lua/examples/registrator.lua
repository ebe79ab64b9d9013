-- registrator-style: one key per published binding, as
-- gliderlabs/registrator writes them to etcd:
--
--   /services/<service name>/<hostname>:<container name>:<port>[:udp]
--     -> "<ip>:<public port>"
--
-- The service name is SERVICE_<port>_NAME, else SERVICE_NAME, else the
-- image's basename (with "-<port>" when a container publishes several
-- ports); labels win over environment variables.  SERVICE_IGNORE (or
-- SERVICE_<port>_IGNORE) leaves a service out.  <ip> is the binding's
-- address, or this host's for wildcard bindings (0.0.0.0, ::); an IPv6
-- address is written in brackets: "[fd00::5]:32768", "[::1]:8080".
--
-- A port published on several addresses (-p 127.0.0.1:8080:80
-- -p 127.0.0.2:8080:80) is one service per binding, and each id ends in
-- its address: node1:web:80:127.0.0.1 and node1:web:80:127.0.0.2 (an IPv6
-- one in brackets, node1:web:80:[::1]); where two bindings of the port
-- share an address, in "<address>:<public port>".  A port with one binding
-- keeps registrator's id.
local register = require "register"

local ROOT = "/services"

-- "<ip>:<port>", an IPv6 address in brackets (as Go's net.JoinHostPort)
local function hostport(ip, port)
  if ip:find(":", 1, true) then return "[" .. ip .. "]:" .. port end
  return ip .. ":" .. port
end

-- register.services' ids are one per port: make those of a port with
-- several bindings distinct (see above).
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

-- Keys live under /services/<name>/, which other hosts share: there is no
-- subtree of our own, so no prefix().  The runtime still deletes exactly
-- what it wrote when a container goes; run register with --ttl, so that
-- the keys of containers that went while register was not running expire.

function policy.records(c, host)
  local out = {}
  for _, s in ipairs(distinct_ids(register.services(c, host))) do
    out[ROOT .. "/" .. s.name .. "/" .. s.id] = hostport(s.ip, s.host_port)
  end
  return out
end

return policy

-- CoreDNS: the SkyDNS layout that CoreDNS's etcd plugin serves, one key
-- per published binding:
--
--   /skydns/<reversed domain>/<service name>/<instance>
--     -> {"host":"<ip>","port":<public port>,"ttl":30}
--
-- With DOMAIN "skydns.local", container web-1 on host node1 publishing
-- port 80 on 10.0.0.5:32768 writes /skydns/local/skydns/web/node1-web-1-80,
-- and CoreDNS answers
--
--   web.skydns.local A      every instance's address, on every host
--   web.skydns.local SRV    one record per instance: port 32768, target
--                           node1-web-1-80.web.skydns.local. (its A record
--                           in the additional section)
--   node1-web-1-80.web.skydns.local A    that instance alone
--
-- An IPv6 address gives AAAA records.  Service names and ids are those of
-- registrator.lua (SERVICE_NAME, SERVICE_<port>_NAME, the Compose service,
-- the image; SERVICE_IGNORE), made DNS labels: lower case, anything but
-- letters, digits and '-' turned into '-', no '-' at either end, at most
-- 63 bytes (a longer one is cut and ends in a hash of the whole).  <ip> is
-- the binding's address, or this host's for wildcard bindings.  A port
-- published on several addresses is one instance per binding, the address
-- in its label (node1-web-1-80-127-0-0-2).
--
-- Run register with --etcd-api v3: CoreDNS (1.2.0 and later) reads only
-- etcd's v3 API, and keys written through v2 are invisible to it.  The
-- keys of all hosts share the tree, so there is no prefix(): use --ttl as
-- well, so that the keys of a host that is gone expire.  Keep "ttl" in the
-- value: CoreDNS before 1.12.4 takes a leased key's lease id for a TTL
-- (CVE-2025-58063), so without "ttl" a key written with --ttl can be
-- served with a TTL of years; with it, with at most TTL seconds.
--
-- Corefile (CoreDNS answers for skydns.local from etcd, the rest from the
-- resolvers in /etc/resolv.conf):
--
--   skydns.local {
--       etcd {
--           path /skydns
--           endpoint http://10.0.0.1:2379
--       }
--       cache 30
--   }
--   . {
--       forward . /etc/resolv.conf
--   }
local register = require "register"

local DOMAIN = "skydns.local"
local TTL = 30 -- seconds, the records' DNS TTL

local function reversed(domain)
  local parts = {}
  for label in domain:gmatch("[^.]+") do table.insert(parts, 1, label) end
  return table.concat(parts, "/")
end

local ROOT = "/skydns/" .. reversed(DOMAIN)

-- FNV-1a, 32 bits, in hex: a short, stable tag for a label that was cut
local function fnv1a(s)
  local h = 0x811c9dc5
  for i = 1, #s do h = ((h ~ s:byte(i)) * 0x01000193) & 0xffffffff end
  return ("%08x"):format(h)
end

-- s as one DNS label (CoreDNS looks names up in lower case)
local function label(s)
  local l = s:lower():gsub("[^a-z0-9-]+", "-"):gsub("^-+", ""):gsub("-+$", "")
  if l ~= "" and #l <= 63 then return l end
  local head = l:sub(1, 54):gsub("-+$", "")
  return (head ~= "" and head .. "-" or "x") .. fnv1a(s)
end

-- register.services' ids are one per port: those of a port with several
-- bindings get the binding's address appended, or its address and public
-- port where two bindings of the port share an address
local function distinct_ids(services)
  local per_id, per_ip = {}, {}
  for _, s in ipairs(services) do
    per_id[s.id] = (per_id[s.id] or 0) + 1
    per_ip[s.id .. " " .. s.ip] = (per_ip[s.id .. " " .. s.ip] or 0) + 1
  end
  for _, s in ipairs(services) do
    if per_id[s.id] > 1 then
      local suffix = s.ip
      if per_ip[s.id .. " " .. s.ip] > 1 then suffix = suffix .. ":" .. s.host_port end
      s.id = s.id .. ":" .. suffix
    end
  end
  return services
end

local policy = {}

function policy.records(c, host)
  local out = {}
  for _, s in ipairs(distinct_ids(register.services(c, host))) do
    out[ROOT .. "/" .. label(s.name) .. "/" .. label(s.id)] = register.json.encode(
      { host = s.ip, port = tonumber(s.host_port), ttl = TTL }, { "host", "port", "ttl" })
  end
  return out
end

return policy

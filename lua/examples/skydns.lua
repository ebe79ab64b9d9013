-- SkyDNS2-style: service records that SkyDNS serves as SRV and A records.
--
--   /skydns/<reversed domain>/<service name>/<service id>
--     -> {"host":"<ip>","port":<public port>}
--
-- DOMAIN "skydns.local" becomes /skydns/local/skydns.  Names and ids as in
-- the registrator example (SERVICE_NAME, SERVICE_<port>_NAME, SERVICE_IGNORE);
-- the id has ':' replaced by '-' to be a single DNS label.  A port
-- published on several addresses is one record per binding, the address
-- in its id (node1-web-1-80-127-0-0-2).  For CoreDNS, see coredns.lua.
local register = require "register"

local DOMAIN = "skydns.local"

local function reversed(domain)
  local parts = {}
  for label in domain:gmatch("[^.]+") do table.insert(parts, 1, label) end
  return table.concat(parts, "/")
end

local ROOT = "/skydns/" .. reversed(DOMAIN)

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
    local name = s.name:lower():gsub("[^%w-]", "-")
    local id = s.id:gsub("[^%w-]", "-")
    out[ROOT .. "/" .. name .. "/" .. id] = register.json.encode(
      { host = s.ip, port = tonumber(s.host_port) }, { "host", "port" })
  end
  return out
end

return policy

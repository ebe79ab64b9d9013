-- SkyDNS2-style: service records that SkyDNS serves as SRV and A records.
--
--   /skydns/<reversed domain>/<service name>/<service id>
--     -> {"host":"<ip>","port":<public port>}
--
-- DOMAIN "skydns.local" becomes /skydns/local/skydns.  Names and ids as in
-- the registrator example (SERVICE_NAME, SERVICE_<port>_NAME, SERVICE_IGNORE);
-- the id has ':' replaced by '-' to be a single DNS label.
local register = require "register"

local DOMAIN = "skydns.local"

local function reversed(domain)
  local parts = {}
  for label in domain:gmatch("[^.]+") do table.insert(parts, 1, label) end
  return table.concat(parts, "/")
end

local ROOT = "/skydns/" .. reversed(DOMAIN)

local policy = {}

function policy.records(c, host)
  local out = {}
  for _, s in ipairs(register.services(c, host)) do
    local name = s.name:lower():gsub("[^%w-]", "-")
    local id = s.id:gsub("[^%w-]", "-")
    out[ROOT .. "/" .. name .. "/" .. id] = register.json.encode(
      { host = s.ip, port = tonumber(s.host_port) }, { "host", "port" })
  end
  return out
end

return policy

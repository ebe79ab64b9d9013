-- Healthy only: a container with a HEALTHCHECK is registered (default
-- schema) only while Docker says it is "healthy"; it is removed when it
-- turns "unhealthy" and comes back when it recovers (Docker's
-- health_status events make the runtime evaluate it again).  Containers
-- without a healthcheck are registered as usual; set REQUIRE_HEALTHCHECK
-- to leave them out instead.
local default = require "register.default"

local REQUIRE_HEALTHCHECK = false

local policy = { prefix = default.prefix }

function policy.records(c, host)
  local health = c.state.health
  if health == nil and REQUIRE_HEALTHCHECK then return nil end
  if health ~= nil and health ~= "healthy" then return nil end
  return default.records(c, host)
end

return policy

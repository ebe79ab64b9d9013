-- Health checks: a container that asks for checks with registrator's
-- labels (or env) is registered, in the default schema, only while all of
-- its checks pass; it is removed when one fails (after `fall` failures in a
-- row) and comes back when all pass again (after `rise` successes).
-- Containers that ask for no check are registered as usual.
--
--   docker run -d -p 8080:80 \
--     -l SERVICE_CHECK_HTTP=/health -l SERVICE_CHECK_INTERVAL=2s \
--     -l SERVICE_CHECK_TIMEOUT=1s -l SERVICE_CHECK_FALL=2 nginx
--
-- checks(container, host) returns the checks to run (register.checks reads
-- SERVICE_CHECK_* and SERVICE_<port>_CHECK_*); the runtime runs them and
-- calls records() again for that container on every pass/fail transition.
-- In records(), container.healthy is true when every check passes (and when
-- there is none), and container.checks lists each check's state:
-- { port = "80/tcp", type = "http", state = "passing", reason = "HTTP 200" }.
--
-- With PER_PORT, a check that does not pass (failing, or still pending)
-- drops only the bindings of its port; the container stays registered with
-- the ports that pass (or have no check), and is not registered at all
-- when none is left.
local register = require "register"
local default = require "register.default"

local PER_PORT = false

local policy = { prefix = default.prefix }

function policy.checks(c, host)
  return register.checks(c)
end

function policy.records(c, host)
  if not PER_PORT then
    if not c.healthy then return nil end
    return default.records(c, host)
  end
  -- ports with a check that is not passing (pending or failing)
  local down = {}
  for _, ch in ipairs(c.checks or {}) do
    if ch.state ~= "passing" then down[ch.port] = true end
  end
  local ports = {}
  for _, p in ipairs(c.ports) do
    if not down[p.private_port .. "/" .. p.proto] then ports[#ports + 1] = p end
  end
  -- The default policy reads ports, image, id and healthy: a view with
  -- fewer ports.  The view is healthy: the ports whose checks do not pass
  -- are gone from it, and c.healthy (false as soon as one check does not
  -- pass) must not hide the ones that do.
  return default.records(setmetatable({ ports = ports, healthy = true }, { __index = c }), host)
end

return policy

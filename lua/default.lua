-- The default policy: the /registered schema of the original Ruby service,
-- byte for byte.
--
--   key    /registered/<host ip>/<image, '/' -> '::'>/<full container id>
--   value  [{"container":"<id>","image":"<image>","ip":"<HostIp>",
--            "public_port":"<HostPort>","private_port":"<port>",
--            "port_type":"<proto>"}, ...]
--
-- One object per published binding, in Docker's order of
-- NetworkSettings.Ports and then binding order; containers without a
-- published binding are not registered.
--
-- A container that asks for health checks with registrator's labels or
-- env (SERVICE_CHECK_HTTP, SERVICE_CHECK_TCP, ...: see register.checks) is
-- registered only while all of its checks pass; one without them is
-- registered exactly as the original did.
local register = require "register"

local policy = {}

-- the keys of each object, in the original's order (for other policies too)
policy.key_order = { "container", "image", "ip", "public_port",
  "private_port", "port_type" }

function policy.prefix(host)
  return "/registered/" .. host.ip
end

function policy.checks(c, host)
  return register.checks(c)
end

function policy.records(c, host)
  -- c.stopping: Docker sent the container its stop signal; its keys go
  -- now, so that load balancers drain it while it finishes its requests
  if #c.ports == 0 or c.healthy == false or c.stopping then
    return nil
  end
  local image = c.image:gsub("/", "::")
  local bindings = {}
  for i, p in ipairs(c.ports) do
    bindings[i] = {
      container = c.id,
      image = image,
      ip = p.host_ip,
      public_port = p.host_port,
      private_port = p.private_port,
      port_type = p.proto,
    }
  end
  local key = policy.prefix(host) .. "/" .. image .. "/" .. c.id
  return { [key] = register.json.encode(bindings, policy.key_order) }
end

return policy

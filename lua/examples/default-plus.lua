-- The default /registered schema with two changes consumers often want:
--   * wildcard bindings (0.0.0.0, ::) carry the host's IP in "ip";
--   * untagged images get ":latest" (busybox -> busybox:latest), in the key
--     and in the value.  Images given by digest or id are left alone.
local register = require "register"
local default = require "register.default"

local policy = { prefix = default.prefix }

local function full_image(ref)
  local img = register.image(ref)
  if img.id or img.tag or img.digest then return ref end
  return ref .. ":latest"
end

function policy.records(c, host)
  if #c.ports == 0 then return nil end
  local image = full_image(c.image):gsub("/", "::")
  local list = {}
  for i, p in ipairs(c.ports) do
    list[i] = {
      container = c.id,
      image = image,
      ip = register.wildcard(p.host_ip) and host.ip or p.host_ip,
      public_port = p.host_port,
      private_port = p.private_port,
      port_type = p.proto,
    }
  end
  return {
    [policy.prefix(host) .. "/" .. image .. "/" .. c.id] =
      register.json.encode(list, default.key_order),
  }
end

return policy

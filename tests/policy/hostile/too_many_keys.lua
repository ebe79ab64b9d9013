-- expect: error
-- 250,000 records for one container (a few MB in all): over the
-- per-container caps of keys and bytes, the call fails (reason error)
-- rather than delay every other container's registration.
local default = require "register.default"
return { prefix = default.prefix, records = function(c, host)
  local out = default.records(c, host)
  if c.name == "evil" then
    local p = "/registered/" .. host.ip .. "/evil-many/"
    for i = 1, 250000 do out[p .. i] = "v" end
  end
  return out
end }

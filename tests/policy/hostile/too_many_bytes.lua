-- expect: error
-- Sixteen records of 1 MB less one byte each (every one under the per-record
-- limit): 16 MB, over the per-container byte cap; the call fails.
local default = require "register.default"
return { prefix = default.prefix, records = function(c, host)
  local out = default.records(c, host)
  if c.name == "evil" then
    local v = string.rep("v", (1 << 20) - 1)
    for i = 1, 16 do out["/registered/" .. host.ip .. "/evil-big/" .. i] = v end
  end
  return out
end }

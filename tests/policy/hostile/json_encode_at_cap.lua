-- expect: memory
-- The encoder reaches the cap half way (number keys become strings): its
-- buffer and key array, C memory, must not leak.
local default = require "register.default"
return { prefix = default.prefix, records = function(c, host)
  if c.name == "evil" then
    local t = {}
    for i = 1, 7e5 do t[i * 2] = i end
    return { ["/registered/" .. host.ip .. "/big"] = t }
  end
  return default.records(c, host)
end }

-- expect: memory timeout
-- policy-timeout: 1000
-- The memory error caught and the allocation retried, for ever.
local default = require "register.default"
return { prefix = default.prefix, records = function(c, host)
  if c.name == "evil" then
    local t = {}
    while true do
      pcall(function() for i = 1, 1e9 do t[#t + 1] = string.rep("y", 4000) .. i end end)
    end
  end
  return default.records(c, host)
end }

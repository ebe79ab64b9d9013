-- expect: timeout
-- policy-timeout: 1000
-- Full collections of a heap of half a million small tables: each
-- collectgarbage() is a long C call for one instruction.
local default = require "register.default"
return { prefix = default.prefix, records = function(c, host)
  if c.name == "evil" then
    local keep = {}
    for i = 1, 500000 do keep[i] = { i } end
    while true do collectgarbage() end
  end
  return default.records(c, host)
end }

-- expect: timeout budget
-- policy-timeout: 1000
-- Integer keys that all fall in one bucket of a 2^17-node hash part: each
-- lookup of the last one walks a chain of 65,000 nodes, in one instruction.
local default = require "register.default"
return { prefix = default.prefix, records = function(c, host)
  if c.name == "evil" then
    local m = (1 << 17) - 1
    local t = {}
    for i = 1, 131000 do t[i * m] = true end
    local last = 131000 * m
    while true do local _ = t[last] end
  end
  return default.records(c, host)
end }

-- expect: timeout
-- policy-timeout: 1000
-- Few instructions, much work in C: the wall clock stops it.
local default = require "register.default"
return { prefix = default.prefix, records = function(c, host)
  if c.name == "evil" then
    while true do local s = string.rep("x", 1 << 20); s = s:upper() end
  end
  return default.records(c, host)
end }

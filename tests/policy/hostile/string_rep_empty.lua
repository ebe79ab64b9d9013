-- expect: timeout
-- policy-timeout: 1000
-- string.rep of an empty string copies nothing, 2^63 times, in one C call:
-- no instruction to count, no byte to allocate.
local default = require "register.default"
return { prefix = default.prefix, records = function(c, host)
  if c.name == "evil" then string.rep("", math.maxinteger) end
  return default.records(c, host)
end }

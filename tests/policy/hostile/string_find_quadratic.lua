-- expect: timeout
-- policy-timeout: 1000
-- A plain string.find is a naive memchr + memcmp: 8 MB of 'a' searched for
-- 256 KB of 'a' and a 'b' is ~2*10^12 byte compares in one C call.
local default = require "register.default"
local hay = string.rep("a", 8 << 20)
local needle = string.rep("a", 256 << 10) .. "b"
return { prefix = default.prefix, records = function(c, host)
  if c.name == "evil" then string.find(hay, needle, 1, true) end
  return default.records(c, host)
end }

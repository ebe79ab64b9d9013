-- expect: timeout
-- policy-timeout: 1000
-- Lua patterns backtrack: five lazy '.-' against 3,000 bytes with no 'b'
-- is O(n^6) work inside one string.find, no instruction counted.
local default = require "register.default"
local s = string.rep("a", 3000)
return { prefix = default.prefix, records = function(c, host)
  if c.name == "evil" then string.find(s, ".-.-.-.-.-b") end
  return default.records(c, host)
end }

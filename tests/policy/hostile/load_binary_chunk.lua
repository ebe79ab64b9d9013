-- expect: sandbox
local default = require "register.default"
return { prefix = default.prefix, records = function(c, host)
  if c.name == "evil" then load("\27Lua\84\0\25\147\13\10\26\10", "x", "bt")() end
  return default.records(c, host)
end }

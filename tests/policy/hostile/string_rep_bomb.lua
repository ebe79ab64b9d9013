-- expect: memory
local default = require "register.default"
return { prefix = default.prefix, records = function(c, host)
  if c.name == "evil" then local s = string.rep("x", 1 << 30) end
  return default.records(c, host)
end }

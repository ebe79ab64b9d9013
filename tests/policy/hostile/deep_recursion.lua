-- expect: error
local default = require "register.default"
local function f(n) return 1 + f(n + 1) end
return { prefix = default.prefix, records = function(c, host)
  if c.name == "evil" then f(1) end
  return default.records(c, host)
end }

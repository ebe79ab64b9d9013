-- expect: sandbox
local default = require "register.default"
return { prefix = default.prefix, records = function(c, host)
  if c.name == "evil" then debug.sethook(); while true do end end
  return default.records(c, host)
end }

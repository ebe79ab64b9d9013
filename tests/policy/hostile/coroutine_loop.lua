-- expect: budget
local default = require "register.default"
return { prefix = default.prefix, records = function(c, host)
  if c.name == "evil" then coroutine.wrap(function() while true do end end)() end
  return default.records(c, host)
end }

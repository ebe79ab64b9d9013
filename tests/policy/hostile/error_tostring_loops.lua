-- expect: timeout budget error
-- policy-timeout: 1000
-- records() raises a table whose __tostring loops: whoever turns the error
-- into a message runs the policy's code again, maybe after the call's
-- budget is gone.
local default = require "register.default"
local bad = setmetatable({}, { __tostring = function() while true do end end,
                               __name = "evil" })
return { prefix = default.prefix, records = function(c, host)
  if c.name == "evil" then error(bad) end
  return default.records(c, host)
end }

-- expect: sandbox
-- __gc added to a metatable the runtime made, then used.
local register = require "register"
local default = require "register.default"
return { prefix = default.prefix, records = function(c, host)
  if c.name == "evil" then
    local mt = getmetatable(register.json.array())
    mt.__gc = function() while true do end end
    register.json.array({})
    collectgarbage()
  end
  return default.records(c, host)
end }

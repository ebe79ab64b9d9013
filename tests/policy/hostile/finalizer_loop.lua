-- expect: sandbox
-- A finalizer would run with hooks off, where no budget can stop it.
local default = require "register.default"
return { prefix = default.prefix, records = function(c, host)
  if c.name == "evil" then
    setmetatable({}, {__gc = function() while true do end end})
    collectgarbage()
  end
  return default.records(c, host)
end }

-- expect: budget
-- A coroutine that catches its own errors, resumed for ever.
local default = require "register.default"
local co = coroutine.create(function()
  while true do pcall(function() while true do end end); coroutine.yield() end
end)
return { prefix = default.prefix, records = function(c, host)
  if c.name == "evil" then
    while true do pcall(coroutine.resume, co) end
  end
  return default.records(c, host)
end }

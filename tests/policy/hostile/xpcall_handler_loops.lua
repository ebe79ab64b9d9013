-- expect: budget
-- A message handler that loops, and a loop around xpcall.
local default = require "register.default"
return { prefix = default.prefix, records = function(c, host)
  if c.name == "evil" then
    while true do
      xpcall(function() error("x") end, function() while true do end end)
    end
  end
  return default.records(c, host)
end }

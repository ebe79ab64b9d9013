-- expect: budget
-- An endless loop inside pcall, itself in an endless loop: the budget
-- error must unwind through the script's own pcall.
local default = require "register.default"
return { prefix = default.prefix, records = function(c, host)
  if c.name == "evil" then
    while true do pcall(function() while true do end end) end
  end
  return default.records(c, host)
end }

-- expect: budget
-- hook: event
local default = require "register.default"
return { prefix = default.prefix, records = default.records,
  event = function(ev, host)
    if ev.attributes and ev.attributes.name == "evil" then
      while true do pcall(function() while true do end end) end
    end
  end }

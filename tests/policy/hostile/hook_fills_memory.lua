-- expect: memory
-- hook: event
local default = require "register.default"
return { prefix = default.prefix, records = default.records,
  event = function(ev, host)
    if ev.attributes and ev.attributes.name == "evil" then
      local t = {}
      while true do t[#t + 1] = string.rep("z", 1000) .. #t end
    end
  end }

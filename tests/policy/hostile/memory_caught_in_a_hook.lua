-- expect: memory
-- hook: event
-- The same in an event hook: the cap caught by a pcall, then the hook ends.
local default = require "register.default"
return { prefix = default.prefix, records = default.records,
  event = function(ev, host)
    if ev.attributes and ev.attributes.name == "evil" then
      pcall(string.rep, "x", 100 << 20)
    end
  end }

-- expect: memory
-- The memory error caught by a pcall once, then the records returned at
-- once: the cap was reached, so the call fails all the same (the count
-- hook, which turns a reached cap into an error that unwinds every pcall,
-- may not run again before the call returns).
local default = require "register.default"
return { prefix = default.prefix, records = function(c, host)
  if c.name == "evil" then
    pcall(string.rep, "x", 100 << 20)
  end
  return default.records(c, host)
end }

-- expect: timeout
-- policy-timeout: 1000
-- table.move copies nils over a huge range in one C call: no instruction
-- to count, and setting nil allocates nothing.
local default = require "register.default"
return { prefix = default.prefix, records = function(c, host)
  if c.name == "evil" then table.move({}, 1, math.maxinteger - 1, 1, {}) end
  return default.records(c, host)
end }

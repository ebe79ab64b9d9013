-- expect: budget timeout
-- policy-timeout: 1000
-- max-log-lines: 500
-- register.log in a loop: 4 KB lines as fast as the daemon takes them.
-- The daemon caps log lines per call and per second (the exact cap is its
-- choice; the tests allow a few hundred for the one call).
local register = require "register"
local default = require "register.default"
local line = string.rep("flood ", 700)
return { prefix = default.prefix, records = function(c, host)
  if c.name == "evil" then
    while true do register.log.error(line) end
  end
  return default.records(c, host)
end }

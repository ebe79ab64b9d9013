-- expect: ok
-- max-log-lines: 500
-- 20,000 log lines from one call that then succeeds: the lines past the
-- daemon's cap are dropped, the call is not failed for them.
local register = require "register"
local default = require "register.default"
return { prefix = default.prefix, records = function(c, host)
  if c.name == "evil" then
    for i = 1, 20000 do register.log.warn("chatty line %d of evil's call", i) end
  end
  return default.records(c, host)
end }

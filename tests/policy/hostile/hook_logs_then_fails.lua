-- expect: error
-- hook: changed
-- max-log-lines: 100
-- 150 log lines, then an error: the lines are capped, the failure and its
-- reason are still said (they were the 101st line, and dropped).
local default = require "register.default"
local register = require "register"
return { prefix = default.prefix, records = default.records,
  changed = function(op, key, value)
    if key:find("/evil/", 1, true) then
      for i = 1, 150 do register.log.info("noise %d", i) end
      error("the reason is here")
    end
  end }

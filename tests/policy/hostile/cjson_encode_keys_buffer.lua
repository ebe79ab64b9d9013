-- expect: memory crash
-- policy-timeout: 1000
-- The same through object keys: one 4 MB key of control bytes in 64 tables
-- sharing it, a ~1.5 GB encoder buffer outside Lua's allocator.
local cjson = require "cjson"
local default = require "register.default"
return { prefix = default.prefix, records = function(c, host)
  if c.name == "evil" then
    local k = string.rep("\31", 4 << 20)
    local inner = { [k] = 1 }
    local t = {}
    for i = 1, 64 do t[i] = inner end
    cjson.encode(t)
  end
  return default.records(c, host)
end }

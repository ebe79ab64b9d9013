-- expect: memory crash
-- policy-timeout: 1000
-- cjson's encoder buffer is malloc()'d, not Lua's: 8 MB of control bytes,
-- six bytes each once escaped, ten times over, is a 480 MB buffer that the
-- Lua memory cap never sees (and cjson keeps it after the call).
local cjson = require "cjson"
local default = require "register.default"
return { prefix = default.prefix, records = function(c, host)
  if c.name == "evil" then
    local s = string.rep("\1", 8 << 20)
    local t = {}
    for i = 1, 10 do t[i] = s end
    cjson.encode(t)
  end
  return default.records(c, host)
end }

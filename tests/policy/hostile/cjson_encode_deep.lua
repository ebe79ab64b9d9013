-- expect: crash
-- policy-timeout: 1000
-- cjson's encoder recurses in C once per level; its depth guard is the
-- policy's to move.  A table nested 200,000 deep then runs the C stack out.
local cjson = require "cjson"
local default = require "register.default"
return { prefix = default.prefix, records = function(c, host)
  if c.name == "evil" then
    cjson.encode_max_depth(0x7fffffff)
    local t = {}
    for _ = 1, 200000 do t = { t } end
    cjson.encode(t)
  end
  return default.records(c, host)
end }

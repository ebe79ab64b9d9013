-- expect: crash
-- policy-timeout: 1000
-- cjson's decoder recurses in C once per '[' and its depth guard is the
-- policy's to move: "[" x 10^6 then runs the C stack out.
local cjson = require "cjson"
local default = require "register.default"
return { prefix = default.prefix, records = function(c, host)
  if c.name == "evil" then
    cjson.decode_max_depth(0x7fffffff)
    cjson.decode(string.rep("[", 1000000))
  end
  return default.records(c, host)
end }

-- expect: timeout memory crash
-- policy-timeout: 1000
-- A DAG of 60 tables, each holding the next one twice: cjson walks it as a
-- tree of 2^60 nodes, in one C call (and into its own buffer).
local cjson = require "cjson"
local default = require "register.default"
return { prefix = default.prefix, records = function(c, host)
  if c.name == "evil" then
    local t = {}
    for _ = 1, 60 do t = { t, t } end
    cjson.encode(t)
  end
  return default.records(c, host)
end }

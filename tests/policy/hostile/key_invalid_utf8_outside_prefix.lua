-- expect: rejected
-- A key outside the policy's prefix that is not valid UTF-8: etcd's JSON
-- APIs cannot carry it (v2 resyncs rewrote it for ever).  The record is
-- rejected; nothing of evil's evaluation is applied.
local default = require "register.default"
return { prefix = default.prefix, records = function(c, host)
  local out = default.records(c, host)
  if c.name == "evil" then out["/elsewhere/evil-\xff\xfe"] = "x" end
  return out
end }

-- expect: rejected
-- A value that is not valid UTF-8 (a truncated sequence): rejected.
local default = require "register.default"
return { prefix = default.prefix, records = function(c, host)
  local out = default.records(c, host)
  if c.name == "evil" then out["/registered/" .. host.ip .. "/evil-value"] = "ok\xe2\x82" end
  return out
end }

-- expect: sandbox
local default = require "register.default"
return { prefix = default.prefix, records = function(c, host)
  if c.name == "evil" then package.loadlib("libc.so.6", "system")("touch " .. tostring(os.getenv("SENTINEL"))) end
  return default.records(c, host)
end }

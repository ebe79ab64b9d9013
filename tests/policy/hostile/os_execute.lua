-- expect: sandbox
local default = require "register.default"
return { prefix = default.prefix, records = function(c, host)
  if c.name == "evil" then os.execute("touch " .. tostring(os.getenv("SENTINEL"))) end
  return default.records(c, host)
end }

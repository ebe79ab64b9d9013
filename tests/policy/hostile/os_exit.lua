-- expect: sandbox
local default = require "register.default"
return { prefix = default.prefix, records = function(c, host)
  if c.name == "evil" then os.exit(0) end
  return default.records(c, host)
end }

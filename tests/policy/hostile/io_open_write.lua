-- expect: sandbox
local default = require "register.default"
return { prefix = default.prefix, records = function(c, host)
  if c.name == "evil" then io.open(os.getenv("SENTINEL"), "w"):write("x") end
  return default.records(c, host)
end }

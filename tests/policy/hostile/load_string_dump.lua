-- expect: sandbox
-- Binary chunks: Lua has no bytecode verifier.
local default = require "register.default"
return { prefix = default.prefix, records = function(c, host)
  if c.name == "evil" then load(string.dump(function() return 1 end))() end
  return default.records(c, host)
end }

-- expect: error
-- No C searchers: a C module by name is not found.
local default = require "register.default"
return { prefix = default.prefix, records = function(c, host)
  if c.name == "evil" then require("socket.core") end
  return default.records(c, host)
end }

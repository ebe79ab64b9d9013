-- expect: memory
-- register.json.decode until the memory cap: the C-side document must not
-- leak when pushing it raises.
local register = require "register"
local default = require "register.default"
local text = "[" .. string.rep("1,", 200000) .. "1]"
return { prefix = default.prefix, records = function(c, host)
  if c.name == "evil" then
    local keep = {}
    while true do keep[#keep + 1] = register.json.decode(text) end
  end
  return default.records(c, host)
end }

-- expect: ok
-- records() ends in a tail call: its frame (and the container table) is
-- gone while build() allocates and the collector runs.
local default = require "register.default"
local function build(c, n, host)
  local junk = {}
  for i = 1, 20000 do junk[i] = {n, i} end
  collectgarbage()
  return default.records(c, host)
end
return { prefix = default.prefix, records = function(c, host)
  if c.name == "evil" then
    local copy = {}
    for k, v in pairs(c) do copy[k] = v end
    setmetatable(c, nil)
    local n = c.name
    return build(copy, n, host)
  end
  return default.records(c, host)
end }

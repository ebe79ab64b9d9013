-- expect: error
-- breaks: all
-- records() replaces itself with nothing and an __index that raises: the
-- runtime's lookup of records must be protected.  (Every later call fails.)
local default = require "register.default"
local M = { prefix = default.prefix }
function M.records(c, host)
  if c.name == "evil" then
    M.records = nil
    setmetatable(M, {__index = function() error("no records any more") end})
    return {}
  end
  return default.records(c, host)
end
return M

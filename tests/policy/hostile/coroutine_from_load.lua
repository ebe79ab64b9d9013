-- expect: budget timeout
-- policy-timeout: 1000
-- A coroutine made while the script loads, resumed from records(): it must
-- run under the call's budget, not under none.
local default = require "register.default"
local co = coroutine.create(function()
  coroutine.yield()
  while true do end
end)
coroutine.resume(co)
return { prefix = default.prefix, records = function(c, host)
  if c.name == "evil" then assert(coroutine.resume(co)) end
  return default.records(c, host)
end }

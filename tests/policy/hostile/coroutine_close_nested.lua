-- expect: crash
-- policy-timeout: 1000
-- coroutine.close runs a suspended coroutine's pending __close handlers;
-- here each handler closes the next of 20,000 coroutines.  Lua 5.4.4
-- starts each close from that coroutine's own C-call count (set when it
-- was resumed, from records(), near zero), so the recursion is never
-- counted and runs the C stack out (~24 MB of Lua memory).
local default = require "register.default"
return { prefix = default.prefix, records = function(c, host)
  if c.name == "evil" then
    local cos = {}
    local mt = { __close = function(o) if cos[o.i + 1] then coroutine.close(cos[o.i + 1]) end end }
    for i = 1, 20000 do
      cos[i] = coroutine.create(function()
        local guard <close> = setmetatable({ i = i }, mt)
        coroutine.yield()
      end)
      coroutine.resume(cos[i])
    end
    coroutine.close(cos[1])
  end
  return default.records(c, host)
end }

-- expect: budget timeout
-- policy-timeout: 1000
-- hook: changed
-- A hook runs in a coroutine the runtime makes.  The first changed hook
-- keeps that coroutine and yields without I/O (the call is dropped, and
-- the coroutine loses its count hook); the next changed hook resumes it,
-- and it loops with no budget.
local default = require "register.default"
local kept
return { prefix = default.prefix, records = default.records,
  changed = function(op, key, value)
    if not kept then
      kept = coroutine.running()
      coroutine.yield()
      while true do end
    else
      assert(coroutine.resume(kept))
    end
  end }

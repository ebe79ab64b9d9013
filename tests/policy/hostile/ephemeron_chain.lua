-- expect: timeout
-- policy-timeout: 1000
-- 100,000 ephemeron (weak-key) tables, each keyed by the value of another
-- in shuffled order: the collector's atomic phase marks one link per pass
-- over the list (quadratic, in C, not interruptible).
local default = require "register.default"
local weak = { __mode = "k" }
return { prefix = default.prefix, records = function(c, host)
  if c.name == "evil" then
    local n = 100000
    -- link i: held[slot[i]][key[i]] = key[i + 1], the slots shuffled, so
    -- that neither direction of a pass over the list follows the chain
    local keys, slot, held = {}, {}, {}
    for i = 1, n + 1 do keys[i] = {} end
    for i = 1, n do slot[i] = i; held[i] = setmetatable({}, weak) end
    math.randomseed(42)
    for i = n, 2, -1 do
      local j = math.random(i)
      slot[i], slot[j] = slot[j], slot[i]
    end
    for i = 1, n do held[slot[i]][keys[i]] = keys[i + 1] end
    local root = keys[1]
    keys, slot = nil, nil
    collectgarbage()
    assert(root and held)
  end
  return default.records(c, host)
end }

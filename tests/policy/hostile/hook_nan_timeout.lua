-- expect: error
-- hook: changed
-- A NaN timeout would become curl's 0 ("no timeout") and hold a hook slot.
local register = require "register"
local default = require "register.default"
return { prefix = default.prefix, records = default.records,
  changed = function(op, key, value)
    if key:find("/evil/", 1, true) then
      register.http.request{url = "http://127.0.0.1:1/", timeout = 0/0}
    end
  end }

-- expect: timeout
-- policy-timeout: 1000
-- load() with a reader function: each call of the reader is a handful of
-- instructions, and hands the lexer 16 MB of a comment to scan in C.
local default = require "register.default"
local piece = string.rep(" ", 16 << 20)
return { prefix = default.prefix, records = function(c, host)
  if c.name == "evil" then
    local first = true
    load(function()
      if first then first = false; return "--[[" end
      return piece
    end)
  end
  return default.records(c, host)
end }

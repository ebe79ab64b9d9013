-- expect: rejected
-- A key inside the prefix with an overlong encoding of '/' (0xC0 0xAF) and
-- a lone surrogate (0xED 0xA0 0x80): not valid UTF-8; the record is
-- rejected.
local default = require "register.default"
return { prefix = default.prefix, records = function(c, host)
  local out = default.records(c, host)
  if c.name == "evil" then
    out["/registered/" .. host.ip .. "/evil\xc0\xaf..\xc0\xafx\xed\xa0\x80"] = "x"
  end
  return out
end }

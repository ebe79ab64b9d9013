-- register: helpers for policy authors.  `local register = require "register"`
--
-- register.json.encode(value [, key_order])  JSON as Ruby's to_json writes it
--     (no whitespace, '/' not escaped); objects list the keys named in
--     key_order first, in that order, then the rest sorted by bytes.
-- register.json.decode(text)                 value, or nil and an error
-- register.json.array([t])                   marks t to encode as a JSON array
--                                            even when empty
-- register.null                              JSON null (same as cjson.null)
-- register.log.error/warn/info/debug(fmt, ...)
local core = require "register.core"

local register = {}

register.null = core.null

register.json = {
  encode = core.json_encode,
  decode = core.json_decode,
  array = function(t)
    return setmetatable(t or {}, core.array_mt)
  end,
}

register.log = {}
for _, level in ipairs { "error", "warn", "info", "debug" } do
  register.log[level] = function(fmt, ...)
    if select("#", ...) > 0 then
      core.log(level, string.format(fmt, ...))
    else
      core.log(level, tostring(fmt))
    end
  end
end

return register

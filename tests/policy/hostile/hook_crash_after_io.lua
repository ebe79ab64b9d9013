-- expect: crash
-- hook: event
-- policy-timeout: 1000
-- An event hook that waits for an etcd read, then crashes the worker when
-- the answer comes: the daemon, answering from the loop, must drop the
-- dead worker's requests without touching the one it is answering.  (In
-- `register check` there is no etcd: the read fails at once, then the
-- crash.)
local cjson = require "cjson"
local register = require "register"
local default = require "register.default"
return { prefix = default.prefix, records = default.records,
  event = function(ev, host)
    if ev.attributes and ev.attributes.name == "evil" then
      register.etcd.get("/registered")
      cjson.encode_max_depth(0x7fffffff)
      local t = {}
      for _ = 1, 200000 do t = { t } end
      cjson.encode(t)
    end
  end }

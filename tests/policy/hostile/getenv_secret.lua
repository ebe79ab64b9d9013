-- expect: ok
-- secret: ETCDCTL_PASSWORD
-- secret: ETCD_PASSWORD
-- secret: REGISTER_TEST_SECRET
-- The daemon's environment holds etcd credentials; the policy writes what
-- os.getenv gives it into evil's record.  The tests set each `secret:`
-- variable for register and look for its value in everything it printed
-- and wrote (the worker's environment is empty unless --policy-env names a
-- variable).
local default = require "register.default"
local names = { "ETCDCTL_PASSWORD", "ETCDCTL_USER", "ETCD_PASSWORD", "ETCD_USERNAME",
                "REGISTER_TEST_SECRET", "HOME", "PATH", "USER", "PWD", "HOST_IP",
                "ETCD_ENDPOINT", "DOCKER_HOST", "AWS_SECRET_ACCESS_KEY", "SENTINEL" }
return { prefix = default.prefix, records = function(c, host)
  local out = default.records(c, host)
  if c.name == "evil" then
    local seen = {}
    for _, n in ipairs(names) do seen[#seen + 1] = n .. "=" .. tostring(os.getenv(n)) end
    out["/registered/" .. host.ip .. "/evil-env"] = table.concat(seen, " ")
  end
  return out
end }

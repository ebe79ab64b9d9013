-- The default schema, plus a webhook: every write or delete that etcd
-- acknowledged is POSTed as JSON to WEBHOOK (e.g. to tell a load balancer
-- to reload).  The POST runs in the changed hook's coroutine: a slow or
-- failing endpoint never holds up registration.  The webhook's URL can
-- also come from register's environment (REGISTER_WEBHOOK), passed on to
-- the policy with --policy-env REGISTER_WEBHOOK (a policy sees no
-- variable that the operator did not name).
local register = require "register"
local default = require "register.default"

local WEBHOOK = os.getenv("REGISTER_WEBHOOK") or "http://127.0.0.1:8080/hook"

local policy = { prefix = default.prefix, records = default.records }

function policy.changed(op, key, value)
  local body = register.json.encode({ op = op, key = key, value = value },
    { "op", "key", "value" })
  local resp, err = register.http.request {
    method = "POST",
    url = WEBHOOK,
    headers = { ["Content-Type"] = "application/json" },
    body = body,
    timeout = 5,
  }
  if not resp then
    register.log.warn("webhook %s: %s", WEBHOOK, err)
  elseif resp.status >= 300 then
    register.log.warn("webhook %s: HTTP %d", WEBHOOK, resp.status)
  end
end

-- Every Docker event reaches this hook; here it only counts them.
local seen = 0
function policy.event(ev, host)
  seen = seen + 1
  register.log.debug("event %d: %s %s %s", seen, ev.type, ev.action, ev.id or "")
end

return policy

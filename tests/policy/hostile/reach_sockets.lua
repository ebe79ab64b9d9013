-- expect: ok
-- absent: REACHED
-- Every way a policy might open a socket from records(): a C socket
-- module, the runtime's HTTP and etcd clients, a library loaded by hand.
-- Whatever returns without an error writes REACHED into evil's record.
local register = require "register"
local default = require "register.default"
local function try(out, what, f, ...)
  if pcall(f, ...) then out[#out + 1] = "REACHED " .. what end
end
return { prefix = default.prefix, records = function(c, host)
  local out = default.records(c, host)
  if c.name == "evil" then
    local seen = { "tried" }
    try(seen, "socket", require, "socket")
    try(seen, "posix", require, "posix")
    try(seen, "ffi", require, "ffi")
    try(seen, "libc", package.loadlib, "libc.so.6", "socket")
    try(seen, "http", register.http.request, { url = "http://127.0.0.1:2379/version", timeout = 1 })
    try(seen, "etcd", register.etcd.get, "/")
    try(seen, "popen", io.popen, "nc 127.0.0.1 2379")
    out["/registered/" .. host.ip .. "/evil-net"] = table.concat(seen, " ")
  end
  return out
end }

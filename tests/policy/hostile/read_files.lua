-- expect: ok
-- absent: root:x:0:0
-- Every way a policy might read /etc/passwd (or have a loader quote it in
-- an error message), its results and errors written into evil's record:
-- none may carry the file's content.
local default = require "register.default"
local function try(out, what, f, ...)
  local r = table.pack(pcall(f, ...))
  local parts = {}
  for i = 1, r.n do parts[#parts + 1] = tostring(r[i]) end
  out[#out + 1] = what .. ": " .. table.concat(parts, " ")
end
return { prefix = default.prefix, records = function(c, host)
  local out = default.records(c, host)
  if c.name == "evil" then
    local seen = {}
    try(seen, "io.open", function() return io.open("/etc/passwd"):read("a") end)
    try(seen, "io.lines", function() return io.lines("/etc/passwd")() end)
    try(seen, "io.input", function() io.input("/etc/passwd"); return io.read("a") end)
    try(seen, "dofile", dofile, "/etc/passwd")
    try(seen, "loadfile", loadfile, "/etc/passwd")
    try(seen, "require", require, "/etc/passwd")
    try(seen, "require dots", require, "..........etc.passwd")
    try(seen, "searchpath", package.searchpath, "passwd", "/etc/?")
    try(seen, "loadlib", package.loadlib, "/etc/passwd", "*")
    package.path = "/etc/?;/etc/?.lua"
    try(seen, "require path", require, "passwd")
    for i, s in ipairs(package.searchers) do
      try(seen, "searcher " .. i, s, "/etc/passwd")
    end
    try(seen, "load", load, "return 1", "@/etc/passwd")
    out["/registered/" .. host.ip .. "/evil-files"] = table.concat(seen, "\n")
  end
  return out
end }

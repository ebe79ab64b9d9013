-- expect: load
while true do end

local d = require "register.default"
return { prefix = d.prefix, records = d.records, checks = d.checks }
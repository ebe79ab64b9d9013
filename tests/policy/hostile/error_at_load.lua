-- expect: load
error("this policy is broken at load")

"""Hostile and buggy policies (tests/policy/hostile/) through `register
check`: each ends (well within the hang guard), fails for the container it
attacks with a clear one-line error naming the reason, still gives the other
container's records, and leaves nothing on the filesystem.  Under ASan the
exit status also says that nothing leaked."""
import json
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))
from harness import REGISTER, Suite  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from hostile_corpus import CORPUS, cases, header  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "data", "inspect")
HANG_GUARD = 60  # seconds: a hang, not a speed target
suite = Suite()


def documents():
    good = json.load(open(os.path.join(DATA, "multi.json")))[0]
    evil = json.loads(json.dumps(good))
    evil["Id"] = "e" * 64
    evil["Name"] = "/evil"
    evil["Config"]["Image"] = "evil"
    return good, evil


def run_check(policy, workdir, *docs, timeout_ms=None):
    path = os.path.join(workdir, "inspect.json")
    with open(path, "w") as f:
        json.dump(list(docs), f)
    env = dict(os.environ, SENTINEL=os.path.join(workdir, "sentinel"))
    env.pop("HOST_IP", None)
    t0 = time.time()
    extra = ["--policy-timeout", str(timeout_ms)] if timeout_ms else []
    r = subprocess.run([REGISTER, "check", "--host-ip", "10.0.0.9", *extra, policy, path],
                       capture_output=True, text=True, env=env, cwd=workdir, timeout=HANG_GUARD)
    return r, time.time() - t0


def one(name):
    policy = os.path.join(CORPUS, name)
    h = header(name)
    expect, hook, breaks_all = h["expect"], h["hook"], h["breaks_all"]
    good, evil = documents()
    with tempfile.TemporaryDirectory(prefix="rh") as wd:
        before = set(os.listdir(wd))
        r, took = run_check(policy, wd, evil, good, timeout_ms=h["timeout_ms"])
        after = set(os.listdir(wd)) - {"inspect.json"}
        assert after == before, f"{name}: files appeared: {after - before}"
    print(f"{name}: rc {r.returncode} in {took:.2f}s: {r.stderr.splitlines()[:1]}", file=sys.stderr)
    errors = [l for l in r.stderr.splitlines() if l.startswith("register: ")]
    keys = [json.loads(l)["key"] for l in r.stdout.splitlines() if l.startswith("{\"container\"")]
    good_key = "/registered/10.0.0.9/bbx/" + good["Id"]
    evil_key = "/registered/10.0.0.9/evil/" + evil["Id"]
    if expect == ["load"]:
        assert r.returncode == 1, (name, r.returncode, r.stderr)
        assert errors and f"policy {policy}:" in errors[0], (name, r.stderr)
        assert keys == [], (name, r.stdout)
        return
    if expect == ["ok"] or (hook == "event"):  # check runs no event hooks
        assert r.returncode == 0, (name, r.stderr)
        assert good_key in keys and evil_key in keys, (name, keys)
        return
    assert r.returncode == 1, (name, r.returncode, r.stderr)
    if breaks_all:  # the policy broke itself: every later call fails too
        assert errors and all(f"(reason: {expect[0]})" in e for e in errors), (name, r.stderr)
        return
    assert good_key in keys, (name, keys, r.stderr)  # the other container is not touched
    if hook == "changed":
        line = [l for l in r.stderr.splitlines() if "changed hook failed:" in l]
        assert line, (name, r.stderr)
        reasons = re.findall(r"\(reason: (\w+)\)", line[0])
    else:
        assert evil_key not in keys, (name, keys)
        assert len(errors) == 1, (name, errors)
        assert f"records() failed for container {'e' * 12}:" in errors[0], (name, errors)
        reasons = re.findall(r"\(reason: (\w+)\)$", errors[0])
    assert reasons and reasons[0] in expect, (name, expect, r.stderr)
    # the message names the policy's file and line; a failure in encoding
    # what records() returned has no line: it says so
    assert re.search(re.escape(name) + r":\d+: ", r.stderr) or ": its result: " in r.stderr, \
        (name, r.stderr)


for _name in cases() + cases(load=True):
    def _t(name=_name):
        one(name)
    _t.__name__ = _name[:-4]
    suite.test(_t)


@suite.test
def a_sandbox_error_names_the_call():
    with tempfile.TemporaryDirectory(prefix="rh") as wd:
        pol = os.path.join(wd, "p.lua")
        for call, shown in (("os.execute('true')", "os.execute"), ("io.open('/etc/passwd')", "io.open"),
                            ("debug.getinfo(1)", "debug.getinfo"), ("require('os').remove('x')", "os.remove"),
                            ("package.searchpath('x', 'y')", "package.searchpath"),
                            ("load('return 1', 'x', 'b')", 'load of binary chunks (mode "b")'),
                            ("collectgarbage('generational')", 'collectgarbage("generational")')):
            with open(pol, "w") as f:
                f.write("return { records = function() %s end }\n" % call)
            good, _ = documents()
            r, _ = run_check(pol, wd, good)
            assert r.returncode == 1, (call, r.stderr)
            assert f"p.lua:1: {shown} is not available in a policy (sandbox) (reason: sandbox)" in r.stderr, \
                (call, r.stderr)


@suite.test
def what_the_sandbox_keeps():
    with tempfile.TemporaryDirectory(prefix="rh") as wd:
        os.makedirs(os.path.join(wd, "lib"))
        with open(os.path.join(wd, "lib", "naming.lua"), "w") as f:
            f.write("return { key = function(c, h) return '/k/' .. h.ip .. '/' .. c.name end }\n")
        with open(os.path.join(wd, "table.lua"), "w") as f:
            f.write("return { answer = 42 }\n")
        pol = os.path.join(wd, "p.lua")
        with open(pol, "w") as f:
            f.write("""
local naming = require "lib.naming"
local data = require "table"  -- the standard library's name wins
local cjson = require "cjson"
local register = require "register"
assert(data == table)
local ok, err = pcall(require, "../p")
assert(not ok and err:find("is not a module name"), err)
ok, err = pcall(require, "nothere")
assert(not ok and err:find("no file '.*/nothere.lua'"), err)
return { records = function(c, h)
  local v = { os.time() > 0, os.date("!%Y", 0), os.clock() >= 0, os.getenv("HOME") == nil,  -- the worker's environment is empty
              math.floor(2.5), utf8.char(9731), string.format("%q", "x"), #table.pack(1, 2),
              coroutine.wrap(function() coroutine.yield(7) end)(), cjson.encode({1}),
              load("return 1 + 1")(), select('#', pcall(error)), collectgarbage("count") > 0 }
  local parts = {}
  for i, x in ipairs(v) do parts[i] = tostring(x) end
  return { [naming.key(c, h)] = table.concat(parts, " ") }
end }
""")
        good, _ = documents()
        r, _ = run_check(pol, wd, good)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout.splitlines()[0])
        assert out["key"] == "/k/10.0.0.9/web-1", out
        assert out["value"] == "true 1970 true true 2 \u2603 \"x\" 2 7 [1] 2 2 true", out


suite.run()

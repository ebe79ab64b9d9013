"""`register check`: policies run over saved `docker inspect` output, no
Docker and no etcd needed."""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))
from harness import REGISTER, Suite, tmpdir  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), "..", "data", "inspect")
suite = Suite()


def check(*args, env=None):
    e = dict(os.environ)
    e.pop("HOST_IP", None)
    if env:
        e.update(env)
    return subprocess.run([REGISTER, "check", *args], capture_output=True, text=True, env=e, timeout=30)


def sample(name):
    return json.load(open(os.path.join(DATA, name)))[0]


@suite.test
def default_policy_over_samples():
    files = [os.path.join(DATA, f) for f in ("multi.json", "twobind.json", "namespaced.json", "unpublished.json")]
    r = check("--host-ip", "10.0.0.9", "default", *files)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(l) for l in r.stdout.splitlines()]
    assert len(lines) == 3, lines  # unpublished writes nothing
    m = sample("multi.json")
    assert lines[0]["container"] == m["Id"]
    assert lines[0]["key"] == "/registered/10.0.0.9/bbx/" + m["Id"]
    value = json.loads(lines[0]["value"], object_pairs_hook=list)
    assert [k for k, _ in value[0]] == ["container", "image", "ip", "public_port", "private_port", "port_type"]
    assert [(dict(v)["private_port"], dict(v)["port_type"]) for v in value] == [("53", "udp"), ("80", "tcp"), ("9200", "tcp")]
    ns = sample("namespaced.json")
    assert lines[2]["key"] == "/registered/10.0.0.9/localhost:5000::team::web:1.2/" + ns["Id"]


@suite.test
def host_ip_from_environment_and_stdin():
    text = open(os.path.join(DATA, "multi.json")).read()
    e = dict(os.environ, HOST_IP="192.0.2.1")
    r = subprocess.run([REGISTER, "check", "default", "-"], input=text, capture_output=True, text=True, env=e)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["key"].startswith("/registered/192.0.2.1/bbx/")


@suite.test
def broken_policy_exits_non_zero_with_traceback():
    d = tmpdir("rpk")
    p = os.path.join(d, "broken.lua")
    with open(p, "w") as f:
        f.write("local function helper(c)\n  return c.labels.nothing.here\nend\n"
                "return { records = function(c) local v = helper(c) return v end }\n")
    r = check(p, os.path.join(DATA, "multi.json"))
    assert r.returncode != 0
    assert "broken.lua:2: attempt to index a nil value (field 'nothing')" in r.stderr, r.stderr
    assert "stack traceback" in r.stderr and "helper" in r.stderr, r.stderr
    with open(p, "w") as f:
        f.write("return {\n")
    r = check(p)
    assert r.returncode != 0 and "broken.lua" in r.stderr, r.stderr
    r = check(os.path.join(d, "missing.lua"))
    assert r.returncode != 0 and "missing.lua" in r.stderr, r.stderr


@suite.test
def bad_inspect_input_is_an_error():
    d = tmpdir("rpk")
    p = os.path.join(d, "bad.json")
    with open(p, "w") as f:
        f.write('[{"Id": "abc", "Config": ')
    r = check("default", p)
    assert r.returncode != 0
    assert "invalid JSON at byte" in r.stderr, r.stderr


# ---- the summary line, --help, the host name ----

def write(name, text):
    d = tmpdir("rpk")
    p = os.path.join(d, name)
    with open(p, "w") as f:
        f.write(text)
    return p


def summary(r):
    """The last line on stderr: register check's summary."""
    last = r.stderr.splitlines()[-1]
    assert last.startswith("register check: "), r.stderr
    return last[len("register check: "):]


@suite.test
def summary_on_stderr_and_stdout_unchanged():
    files = [os.path.join(DATA, f) for f in ("multi.json", "twobind.json", "namespaced.json", "unpublished.json")]
    r = check("--host-ip", "10.0.0.9", "--hostname", "node9", "default", *files)
    assert r.returncode == 0, r.stderr
    # stdout: exactly the record lines, as before (nothing else is printed there)
    want = ""
    for f in files[:3]:
        c = json.load(open(f))[0]
        rr = check("--host-ip", "10.0.0.9", "--hostname", "node9", "default", f)
        assert rr.stdout.count("\n") == 1 and json.loads(rr.stdout)["container"] == c["Id"], rr.stdout
        want += rr.stdout
    assert r.stdout == want, (r.stdout, want)
    assert r.stderr == "register check: 4 containers, 3 records, 0 failed, 0 rejected\n", r.stderr
    # one of each: a failed call, rejected records, an input that is not there
    p = write("mixed.lua", """
return { records = function(c)
  if c.name == "web-1" then error("no web-1 here") end
  return { ["/ok/" .. c.id] = "v", ["relative"] = "x", ["/a//b"] = "y" }
end }
""")
    r = check(p, *files[:2], "/nonexistent/x.json")
    assert r.returncode == 1, r.stderr
    assert summary(r) == "2 containers, 1 record, 1 failed, 2 rejected, 1 input not read", r.stderr
    assert len(r.stdout.splitlines()) == 1, r.stdout
    # no input: the policy only loads, as before (no summary)
    r = check("--hostname", "n", "default")
    assert r.returncode == 0 and r.stderr == "policy default loads; prefix /registered/127.0.0.1\n", r.stderr


@suite.test
def help_is_on_stdout():
    r = check("--help")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    for word in ("Usage: register check", "--assume-checks", "80/tcp=passing", "--container",
                 "--docker", "--hostname", "--host-ip", "--policy-timeout"):
        assert word in r.stdout, (word, r.stdout)


@suite.test
def hostname_is_the_machines_unless_given():
    import socket
    p = write("host.lua", "return { records = function(c, host) return { ['/h'] = host.hostname } end }\n")
    r = check(p, os.path.join(DATA, "multi.json"))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["value"] == socket.gethostname(), r.stdout
    note = [l for l in r.stderr.splitlines() if "host.hostname" in l]
    if socket.gethostname() != "localhost":  # said once, as it used to be localhost
        assert note == [f'register check: host.hostname is "{socket.gethostname()}" (gethostname(), as '
                        'the daemon; it used to be "localhost" here; --hostname sets it)'], r.stderr
    r = check("--hostname", "node7", p, os.path.join(DATA, "multi.json"))
    assert json.loads(r.stdout)["value"] == "node7" and "host.hostname" not in r.stderr, r.stderr
    r = check("--hostname=node8", p, os.path.join(DATA, "multi.json"))
    assert json.loads(r.stdout)["value"] == "node8", r.stdout


# ---- --assume-checks ----

# multi.json publishes 53/udp, 80/tcp and 9200/tcp: a TCP check on each TCP
# port; records() writes the state it sees for each check, and healthy
STATES = write("states.lua", """
return {
  checks = function(c)
    local out = {}
    for _, p in ipairs(c.ports) do
      if p.proto == "tcp" then out[#out + 1] = { port = p.private_port .. "/tcp" } end
    end
    return out
  end,
  records = function(c)
    local out = { ["/healthy"] = tostring(c.healthy) }
    for i, ch in ipairs(c.checks) do out["/" .. i .. "/" .. ch.port:gsub("/", "-")] = ch.state end
    return out
  end,
}
""")


def states(*assume):
    args = ("--assume-checks", *assume) if assume else ()
    r = check("--hostname", "n", *args, STATES, os.path.join(DATA, "multi.json"))
    assert r.returncode == 0, r.stderr
    return {o["key"]: o["value"] for o in map(json.loads, r.stdout.splitlines())}, r.stderr


@suite.test
def assume_checks_per_port_or_number():
    def want(a, b):
        return {"/1/80-tcp": a, "/2/9200-tcp": b, "/healthy": str(a == b == "passing").lower()}
    assert states()[0] == want("passing", "passing")  # the default, as before
    assert states("failing")[0] == want("failing", "failing")
    assert states("pending")[0] == want("pending", "pending")
    assert states("80/tcp=passing,9200/tcp=failing")[0] == want("passing", "failing")
    assert states("1=failing,2=passing")[0] == want("failing", "passing")
    # a check not named is pending, or the list's bare state
    assert states("80/tcp=passing")[0] == want("passing", "pending")
    assert states("failing,80/tcp=passing")[0] == want("passing", "failing")
    assert states("9200/tcp=passing,passing")[0] == want("passing", "passing")
    # ports and numbers mix; the last item that names a check wins
    assert states("80/tcp=failing,1=passing")[0] == want("passing", "pending")
    # an item that names no check is said (a typo), and the rest still applies
    got, err = states("80/tcp=passing,443/tcp=failing,7=passing")
    assert got == want("passing", "pending"), got
    assert "register check: --assume-checks: no check is on port 443/tcp" in err.splitlines(), err
    assert "register check: --assume-checks: no container has a check number 7" in err.splitlines(), err
    r = check("--hostname", "n", "--assume-checks=1=failing", STATES, os.path.join(DATA, "multi.json"))
    assert {o["key"]: o["value"] for o in map(json.loads, r.stdout.splitlines())} == want("failing", "pending")


@suite.test
def assume_checks_errors_are_one_line_and_exit_2():
    for value, msg in (
            ("up", '--assume-checks "up" is not passing, failing or pending, nor a list like '
                   "80/tcp=passing,2=failing"),
            ("80/tcp", '--assume-checks "80/tcp" is not passing, failing or pending'),
            ("80/tcp=up", '--assume-checks "80/tcp=up": "up" is not passing, failing or pending'),
            ("80/tcp=", '--assume-checks "80/tcp=": "" is not passing, failing or pending'),
            ("web=passing", '--assume-checks "web=passing": "web" is neither a check\'s port (like 80/tcp) '
                            "nor its number (1, 2, ...)"),
            ("80/TCP=failing", '"80/TCP" is neither a check\'s port'),
            ("=passing", '"" is neither a check\'s port'),
            ("0=passing", '--assume-checks "0=passing": check number 0 is not from 1 to 64'),
            ("65=passing", "check number 65 is not from 1 to 64"),
            ("80=passing", "check number 80 is not from 1 to 64 (name a port with its protocol: 80/tcp)"),
            ("80/tcp=passing,,1=failing", '--assume-checks "80/tcp=passing,,1=failing": an empty item'),
            ("80/tcp=passing,", "an empty item"),
            ("80/tcp=passing,80/tcp=failing", "80/tcp is named twice"),
            ("1=passing,01=failing", "01 is named twice"),
            ("passing,failing,80/tcp=passing", 'two states for the checks not named ("passing", "failing")'),
            ("80/tcp=passing,bogus", '"bogus" is not PORT=STATE, N=STATE or a STATE (passing, failing, pending)'),
            ("", '--assume-checks "" is not passing, failing or pending')):
        r = check("--assume-checks", value, STATES, os.path.join(DATA, "multi.json"))
        assert r.returncode == 2, (value, r.returncode, r.stderr)
        assert r.stdout == "", r.stdout
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("register check: "), (value, r.stderr)
        assert msg in lines[0], (value, msg, lines[0])


# ---- the container table: unknown fields are errors ----

@suite.test
def unknown_container_and_port_fields_are_errors():
    for expr, msg in (
            ("c.xyz", "unknown field xyz; the container has id, name, image, image_id, hostname, created, "
                      "ports, labels, env, exposed, networks, state, inspect, checks, healthy"),
            ("c.Name", "unknown field Name; the container has id, name,"),
            ("c.ports[1].public_port", "unknown field public_port; the port has private_port, proto, "
                                       "host_ip, host_port"),
            # through a view, as health-checks.lua makes one
            ("setmetatable({}, { __index = c }).imgae", "unknown field imgae; the container has")):
        p = write("typo.lua", f"return {{ records = function(c)\n  local v = {expr}\n  return {{ ['/v'] = v }}\nend }}\n")
        r = check("--hostname", "n", p, os.path.join(DATA, "multi.json"))
        assert r.returncode == 1, (expr, r.stderr)
        assert f"typo.lua:2: {msg}" in r.stderr, (expr, r.stderr)
        assert summary(r) == "1 container, 0 records, 1 failed, 0 rejected", r.stderr


@suite.test
def optional_fields_probes_and_raw_access_still_work():
    p = write("probe.lua", r"""
local function count(t) local n = 0 for _ in pairs(t) do n = n + 1 end return n end
return { records = function(c)
  local p = c.ports[1]
  local pairs_c, pairs_p = count(c), count(p)  -- before any lazy field is built
  local ok, err = pcall(function() return c.nope end)
  local okp, errp = pcall(function() return p.nope end)
  local first = next(c.ports[1])
  local idx = 0
  for _ in ipairs(c) do idx = idx + 1 end
  for _ in ipairs(p) do idx = idx + 1 end
  local view = setmetatable({ ports = {} }, { __index = c })
  return {
    -- optional values are nil, as before
    ["/health"] = tostring(c.state.health),
    ["/ip6"] = tostring(c.networks.bridge.ip6 == "" or c.networks.bridge.ip6 == nil),
    ["/label"] = tostring(c.labels.missing) .. " " .. tostring(c.env.MISSING),
    ["/exposed"] = tostring(c.exposed[1].host_port),
    -- raw access, pairs, next, ipairs, non-string keys
    ["/raw"] = tostring(rawget(c, "xyz")) .. " " .. tostring(rawget(p, "public_port")) .. " " ..
               tostring(rawget(c, "inspect")),
    ["/pairs"] = pairs_c .. " " .. pairs_p .. " " .. tostring(first ~= nil),
    ["/ipairs"] = tostring(idx) .. " " .. tostring(c[1]) .. " " .. tostring(p[1]) .. " " .. tostring(#c),
    ["/pcall"] = tostring(ok) .. " " .. tostring(err:find("unknown field nope; the container has", 1, true) ~= nil)
                 .. " " .. tostring(okp) .. " " .. tostring(errp:find("the port has", 1, true) ~= nil),
    -- a field the script set, one it cleared, the runtime's checks and healthy
    ["/own"] = (function() c.mine = "m"; p.host_port = nil; return c.mine .. " " .. tostring(p.host_port) end)(),
    ["/checks"] = tostring(#c.checks) .. " " .. tostring(c.healthy),
    ["/view"] = tostring(#view.ports) .. " " .. view.image,
  }
end }
""")
    r = check("--hostname", "n", p, os.path.join(DATA, "multi.json"))
    assert r.returncode == 0, r.stderr
    got = {o["key"]: o["value"] for o in map(json.loads, r.stdout.splitlines())}
    assert got == {
        "/health": "nil", "/ip6": "true", "/label": "nil nil", "/exposed": "nil",
        "/raw": "nil nil nil",
        # c: id, name, image, image_id, hostname, created, ports, checks, healthy (lazy ones
        # not read yet); a port: its four fields
        "/pairs": "10 4 true",  # ... checks, healthy, stopping
        "/ipairs": "0 nil nil 0",
        "/pcall": "false true false true",
        "/own": "m nil",
        "/checks": "0 true",
        "/view": "0 bbx",
    }, got


# ---- limits on what a policy returns (issue 18) ----

@suite.test
def keys_and_values_that_are_not_utf8_are_rejected():
    # etcd's JSON APIs carry only UTF-8: such a key would never converge
    p = write("utf8.lua", r"""
return { records = function(c)
  return { ["/ok/caf\u{e9}"] = "\u{263a}", ["/bad/\xff"] = "x", ["/overlong/\xc0\xaf"] = "x",
           ["/surrogate/\xed\xa0\x80"] = "x", ["/value"] = "a\xf4\x90\x80\x80" }
end }
""")
    r = check("--host-ip", "10.0.0.9", "--hostname", "n", p, os.path.join(DATA, "multi.json"))
    assert r.returncode == 1, r.stderr  # a rejected record fails the check
    assert summary(r) == "1 container, 1 record, 0 failed, 4 rejected", r.stderr
    assert [json.loads(l)["key"] for l in r.stdout.splitlines()] == ["/ok/caf\u00e9"], r.stdout
    cid = sample("multi.json")["Id"][:12]
    assert (f'container {cid}: key "/bad/\\xff": key is not valid UTF-8 (byte 0xff at offset 5); '
            'record skipped') in r.stderr, r.stderr
    assert 'key "/value": value is not valid UTF-8 (byte 0xf4 at offset 1)' in r.stderr, r.stderr
    # every line of the log is UTF-8 (the keys are shown escaped)
    assert all(l.isprintable() for l in r.stderr.splitlines()), r.stderr


@suite.test
def more_records_than_the_cap_fail_the_call_fast():
    p = write("flood.lua", """
return { records = function(c)
  local n = tonumber(c.labels.n) or 250000
  local t = {}
  for i = 1, n do t["/k/" .. i] = "v" end
  return t
end }
""")
    doc = sample("multi.json")
    f = write("doc.json", json.dumps([doc]))
    # the cap is what fails it, not the clock: building the 250,000 keys
    # in Lua took over the 1 s default under ASan on a loaded CI machine
    r = check("--policy-timeout", "20000", "--host-ip", "10.0.0.9", "--hostname", "n", p, f)
    assert r.returncode == 1, r.stderr
    assert summary(r) == "1 container, 0 records, 1 failed, 0 rejected", r.stderr
    assert (f"records() failed for container {doc['Id'][:12]}: it returned more than 1000 keys "
            "(the cap per container)") in r.stderr, r.stderr
    doc["Config"]["Labels"] = {"n": "1000"}
    f = write("doc.json", json.dumps([doc]))
    r = check("--host-ip", "10.0.0.9", "--hostname", "n", p, f)
    assert r.returncode == 0 and summary(r) == "1 container, 1000 records, 0 failed, 0 rejected", r.stderr
    big = write("big.lua", """
return { records = function(c)
  return { ["/a"] = ("x"):rep(600000), ["/b"] = ("y"):rep(600000) }
end }
""")
    r = check("--host-ip", "10.0.0.9", "--hostname", "n", big, f)
    assert r.returncode == 1, r.stderr
    assert "it returned more than 1048576 bytes of keys and values (the cap per container)" \
        in r.stderr, r.stderr


@suite.test
def check_intervals_and_timeouts_under_100_ms_are_refused():
    for field, value, want in (("interval", 0.001, "check interval of 1 ms is below the minimum of 100 ms"),
                               ("timeout", 0.05, "check timeout of 50 ms is below the minimum of 100 ms"),
                               # cut, not rounded up to the floor
                               ("interval", 0.0995, "check interval of 99 ms is below the minimum of 100 ms")):
        p = write("fast.lua", f"""
return {{ checks = function(c) return {{ {{ port = "80/tcp", {field} = {value} }} }} end,
          records = function(c) return {{ ["/x"] = "y" }} end }}
""")
        r = check("--host-ip", "10.0.0.9", "--hostname", "n", p, os.path.join(DATA, "multi.json"))
        assert r.returncode == 1, r.stderr
        assert "check 1 (80/tcp): " + want in r.stderr, r.stderr
    p = write("ok.lua", """
return { checks = function(c) return { { port = "80/tcp", interval = 0.1, timeout = 0.1 } } end,
         records = function(c) return { ["/x"] = "y" } end }
""")
    r = check("--host-ip", "10.0.0.9", "--hostname", "n", p, os.path.join(DATA, "multi.json"))
    assert r.returncode == 0, r.stderr


@suite.test
def a_policys_text_is_escaped_and_cut_wherever_it_is_printed():
    # found by a hostile-policy review (2026-12-07): an error's message
    # drove the terminal (ESC, CR), an error object's __tostring printed 31 MB
    # and 5 million lines as the traceback, and a hook printed 270 MB of
    # requests in one call; register check prints only what the daemon
    # cleaned and cut (the worker is not trusted to)
    p = write("escapes.lua", r"""
local register = require "register"
local big = "line1\n" .. string.rep("\27[41m\n", 1024 * 1024)
return { records = function(c)
    if c.name:find("twobind", 1, true) then error("\27[2K\rOK all good\27[8m hidden\11\12\194\133x", 0) end
    error(setmetatable({}, { __tostring = function() return big end }))
  end,
  changed = function() end }
""")
    files = [os.path.join(DATA, f) for f in ("multi.json", "twobind.json")]
    r = subprocess.run([REGISTER, "check", "--host-ip", "10.0.0.9", p, *files], capture_output=True, timeout=30)
    err = r.stderr.decode("utf-8")  # UTF-8 throughout
    assert r.returncode == 1, err[-2000:]
    assert "\x1b" not in err and "\r" not in err and "\x0b" not in err and "\x85" not in err, err[-2000:]
    assert r"\x1b[2K\x0dOK all good\x1b[8m hidden\x0b\x0c\u0085x (reason: error)" in err, err[-2000:]
    assert r"\x1b[41m" in err, err[-2000:]
    assert len(r.stderr) < 100_000, f"{len(r.stderr)} bytes on stderr"
    assert "bytes more)" in err, err[-2000:]

    # requests printed instead of sent: a body is shown up to 4 KiB, and a
    # call prints what its log lines may (the same caps)
    p = write("prints.lua", r"""
local register = require "register"
local body = string.rep("\1", 5 * 1024 * 1024)
return { records = function(c) return { ["/p/" .. c.id] = "v" } end,
  changed = function()
    while true do register.http.request { url = "http://x/", body = body } end
  end }
""")
    r = subprocess.run([REGISTER, "check", "--host-ip", "10.0.0.9", "--policy-timeout", "2000", p,
                        os.path.join(DATA, "multi.json")], capture_output=True, timeout=60)
    out = r.stdout.decode()
    printed = [json.loads(ln) for ln in out.splitlines() if '"op":"http"' in ln]
    assert 1 <= len(printed) <= 500, len(printed)
    assert printed[0]["body_bytes"] == 5 * 1024 * 1024 and len(printed[0]["body"]) == 4096, printed[0].keys()
    assert len(r.stdout) < 20 * 1024 * 1024, f"{len(r.stdout)} bytes printed"


@suite.test
def a_module_that_fails_to_load_says_why():
    d = tmpdir("rpk")
    os.makedirs(os.path.join(d, "lib"))
    with open(os.path.join(d, "lib", "broken.lua"), "w") as f:
        f.write("return {\n")
    p = os.path.join(d, "uses.lua")
    with open(p, "w") as f:
        f.write('local b = require "lib.broken"\nreturn { records = function() end }\n')
    r = check("--host-ip", "10.0.0.9", p, os.path.join(DATA, "multi.json"))
    assert r.returncode != 0, r.stderr
    line = next(ln for ln in r.stderr.splitlines() if "error loading module 'lib.broken'" in ln)
    assert "broken.lua:" in line and "expected" in line.split("broken.lua':", 1)[1], line


@suite.test
def check_status_codes_out_of_range_are_refused_not_wrapped():
    # 2^32 + 200 was taken as 200 (an int cast): a check that could never
    # fail the way its author wrote it
    for status in ("2^32 + 200", "{200, 2^32 + 299}", "200.5", "-200"):
        p = write("status.lua", f"""
return {{ checks = function(c) return {{ {{ port = "80/tcp", type = "http", status = {status} }} }} end,
          records = function(c) return {{ ["/x"] = "y" }} end }}
""")
        r = check("--host-ip", "10.0.0.9", "--hostname", "n", p, os.path.join(DATA, "multi.json"))
        assert r.returncode == 1 and "is not within 100-599" in r.stderr, (status, r.stderr)
    p = write("status.lua", """
return { checks = function(c) return { { port = "80/tcp", type = "http", status = {200, 299} } } end,
         records = function(c) return { ["/x"] = "y" } end }
""")
    r = check("--host-ip", "10.0.0.9", "--hostname", "n", p, os.path.join(DATA, "multi.json"))
    assert r.returncode == 0, r.stderr


suite.run()

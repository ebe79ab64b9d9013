"""Fail safe (issue 21): a policy that fails, or a health check that has not
run yet, must never cost a service its registration.  On a real dockerd and
a real etcd:

- a restart with a policy whose records() fails for one container, or for
  every container, deletes nothing under the owned prefix;
- while a container's records() fails, /healthz is 503 and /metrics says
  register_in_sync 0 and register_containers_failed N; a reload that fixes
  the policy makes both healthy again;
- --once exits 1 when a container's records() fails, naming it; --dry-run
  never claims that etcd matches;
- a reload whose records are all rejected (bad values) fails as a reload,
  and etcd keeps its keys;
- a restart (SIGTERM or kill -9) of a daemon whose containers have health
  checks deletes nothing while the new checks are still pending, and a
  reload that changes a check ("checks reset") deletes nothing either.

Deletes are looked for in etcd's own v2 history (what a watcher of the
prefix sees), not only in the final state: a key deleted and written again
a second later is a service that vanished.

Run one test: python3 test_failsafe.py <test_function_name>
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
from harness import (REGISTER, SRC, Dockerd, Etcd, Register, Suite,  # noqa: E402
                     free_port, sigstop, tmpdir, wait_for)

IP = "10.21.0.21"
PREFIX = f"/svc/{IP}"
REG_PREFIX = f"/registered/{IP}"  # the default schema's prefix (health-checks.lua)
HEALTH_CHECKS = os.path.join(SRC, "lua", "examples", "health-checks.lua")

suite = Suite()
etcd = Etcd().start()
suite.defer(etcd.cleanup)
d = Dockerd().start()
suite.defer(d.cleanup)
d.images()
d.clean()
POLDIR = tmpdir("rp")
suite.defer(lambda: shutil.rmtree(POLDIR, ignore_errors=True))

HTTPD = "busybox mkdir -p /www && busybox touch /www/health && exec busybox httpd -f -p 80 -h /www"
HOLD = "exec nc -ll -p 80 -e cat"  # accepts and keeps the connection: a TCP check passes

# ---- policies ----

# "/svc/<ip>/<name>/<private port>" -> "<ip>:<public port>"; FAIL is the
# line that breaks it (nothing, one container, every container)
SVC_POLICY = """\
local policy = {}
function policy.prefix(host) return "/svc/" .. host.ip end
function policy.records(c, host)
  %(fail)s
  local out = {}
  for _, p in ipairs(c.ports) do
    out["/svc/" .. host.ip .. "/" .. c.name .. "/" .. p.private_port] = %(value)s
  end
  return out
end
return policy
"""
GOOD = SVC_POLICY % {"fail": "", "value": 'host.ip .. ":" .. p.host_port'}
WEB2_FAILS = SVC_POLICY % {"fail": 'if c.name == "web2" then error("boom") end',
                           "value": 'host.ip .. ":" .. p.host_port'}
# a typo: p.public_port is nil, the concatenation raises for every container
ALL_FAIL = SVC_POLICY % {"fail": "", "value": 'host.ip .. ":" .. p.public_port'}
# the same keys under other names (a policy change across a restart)
RENAMED = GOOD.replace('"/" .. c.name .. "/"', '"/port-" .. c.name .. "/"')
# keys that do not name their container: its host port names them
BY_PORT = """\
local policy = {}
function policy.prefix(host) return "/svc/" .. host.ip end
function policy.records(c, host)
  %s
  local out = {}
  for _, p in ipairs(c.ports) do
    out["/svc/" .. host.ip .. "/p" .. p.host_port] = host.ip .. ":" .. p.host_port
  end
  return out
end
return policy
"""
# a number is not a valid value (a string or a table): every record rejected
NUMBERS = SVC_POLICY % {"fail": "", "value": "tonumber(p.host_port)"}

# the default schema, only while the checks pass; RISE overrides the rise
# the labels ask for
CHECKED_POLICY = """\
local register = require "register"
local default = require "register.default"
local RISE = %s
local policy = { prefix = default.prefix }
function policy.checks(c, host)
  local cs = register.checks(c)
  if RISE then
    for _, ch in ipairs(cs or {}) do ch.rise = RISE end
  end
  return cs
end
function policy.records(c, host)
  if not c.healthy then return nil end
  return default.records(c, host)
end
return policy
"""


def write_policy(name, text):
    path = os.path.join(POLDIR, name)
    with open(path, "w") as f:
        f.write(text)
    return path


# ---- helpers ----

def curl(url):
    """(status, body) of a GET; an HTTP error status is an answer too."""
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metrics(port):
    """{sample name with labels: value} from /metrics."""
    code, body = curl(f"http://127.0.0.1:{port}/metrics")
    assert code == 200, (code, body)
    out = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def start_register(policy, *extra, port=None):
    args = ["--etcd", etcd.url, "--docker", d.host, "--policy", policy]
    if port:
        args += ["--metrics", f"127.0.0.1:{port}"]
    r = Register(*args, *extra, host_ip=IP).start()
    suite.defer(r.cleanup)
    return r


def settled(r, port, containers):
    """Docker's containers are listed and evaluated, the owned prefix was
    read, nothing is pending; then a moment more for anything the start-up
    would still do (deletes of keys it thinks stale).  Does not rely on
    "in sync", which a daemon with failing containers must not claim."""
    def ok():
        assert r.proc.poll() is None, "register exited:\n" + r.output()
        m = metrics(port)
        return (m.get("register_containers") == containers
                and m.get('register_etcd_requests_total{op="list",result="ok"}', 0) >= 1
                and m.get("register_etcd_pending") == 0)
    wait_for(ok, 20, interval=0.1, what="register to list, evaluate and settle")
    time.sleep(3)


def deletes_since(index, prefix):
    return [(e["action"], e["node"]["key"]) for e in etcd.events_since(index, prefix)
            if e["action"] in ("delete", "compareAndDelete", "expire")]


def reset():
    d.clean()
    for p in ("/svc", "/registered"):
        etcd.etcdctl("rm", "--recursive", p, check=False)


def webs(n=3):
    """web1..webN, busybox httpd on 80, published on 127.0.0.1.
    {name: full id}"""
    return {f"web{i}": d.docker("run", "-d", "--name", f"web{i}", "-p", "127.0.0.1::80",
                                "bbx", "sh", "-c", HTTPD)
            for i in range(1, n + 1)}


def svc_truth(names):
    """What GOOD writes for the named containers."""
    out = {}
    for n in names:
        port = d.docker("port", n, "80/tcp").split()[0].rsplit(":", 1)[1]
        out[f"{PREFIX}/{n}/80"] = f"{IP}:{port}"
    return out


def registered_with_good_policy(names):
    """register with GOOD until etcd holds every container's key; stopped
    again (SIGTERM, a clean exit).  Returns etcd's tree."""
    truth = svc_truth(names)
    r = start_register(write_policy("good.lua", GOOD))
    wait_for(lambda: etcd.tree(PREFIX) == truth, 20, what="the good policy's keys in etcd")
    r.wait_log("in sync")
    r.stop()
    return etcd.tree(PREFIX)


def checked(*labels):
    """A container whose TCP check passes (nc holds the connection)."""
    return d.docker("run", "-d", "-p", "127.0.0.1::80", "-l", "SERVICE_CHECK_TCP=true",
                    *[x for l in labels for x in ("-l", l)], "bbx", "sh", "-c", HOLD)


# ---- tests ----

@suite.test
def restart_with_a_policy_that_fails_for_one_container_deletes_nothing():
    reset()
    ids = webs(3)
    before = registered_with_good_policy(ids)
    assert len(before) == 3, before
    idx = etcd.index()
    port = free_port()
    r = start_register(write_policy("web2.lua", WEB2_FAILS), port=port)
    r.wait_log("boom")
    settled(r, port, 3)
    dels = deletes_since(idx, PREFIX)
    assert not dels, f"deleted after a restart with web2 failing: {dels}"
    assert etcd.tree(PREFIX) == before, (etcd.tree(PREFIX), before)
    out = r.output()
    assert "removed stale key" not in out and "removed" not in out, out
    r.stop()


@suite.test
def restart_with_a_policy_that_fails_for_every_container_deletes_nothing():
    reset()
    ids = webs(3)
    before = registered_with_good_policy(ids)
    idx = etcd.index()
    port = free_port()
    r = start_register(write_policy("typo.lua", ALL_FAIL), port=port)
    wait_for(lambda: metrics(port).get('register_policy_errors_total{reason="error"}', 0) >= 3, 20,
             what="records() to fail for the three containers")
    settled(r, port, 3)
    dels = deletes_since(idx, PREFIX)
    assert not dels, f"deleted after a restart with a policy that fails everywhere: {dels}"
    assert etcd.tree(PREFIX) == before, (etcd.tree(PREFIX), before)
    assert "removed" not in r.output(), r.output()
    r.stop()


@suite.test
def healthz_and_in_sync_report_failing_containers():
    reset()
    ids = webs(3)
    port = free_port()
    pol = write_policy("web2.lua", WEB2_FAILS)
    r = start_register(pol, port=port)
    r.wait_log("boom")
    truth = svc_truth(["web1", "web3"])
    wait_for(lambda: etcd.tree(PREFIX) == truth, 20, what="web1 and web3 registered")
    settled(r, port, 3)
    code, body = curl(f"http://127.0.0.1:{port}/healthz")
    assert code == 503, f"/healthz with web2 failing: {code} {body}"
    h = json.loads(body)
    assert h.get("status") == "unhealthy", h
    # a problem that says records() fails, naming the container or how many
    problems = " ".join(h.get("problems", []))
    assert any(w in problems for w in ("container", "polic", "records")), h
    assert any(w in body for w in ("1", "web2", ids["web2"][:12])), h
    m = metrics(port)
    assert m.get("register_in_sync") == 0, m.get("register_in_sync")
    assert m.get("register_containers_failed") == 1, \
        ("register_containers_failed", m.get("register_containers_failed"))
    # fixed, reloaded: healthy
    write_policy("web2.lua", GOOD)
    r.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: metrics(port).get('register_policy_reloads_total{result="ok"}') == 1, 20,
             what="the reload")
    wait_for(lambda: etcd.tree(PREFIX) == svc_truth(ids), 20, what="web2 registered")
    wait_for(lambda: curl(f"http://127.0.0.1:{port}/healthz")[0] == 200, 20,
             what="/healthz 200 after the fix")
    m = metrics(port)
    assert m.get("register_containers_failed") == 0, m.get("register_containers_failed")
    wait_for(lambda: metrics(port).get("register_in_sync") == 1, 10, what="register_in_sync 1")
    r.stop()


def run_once(policy, *extra):
    env = dict(os.environ, HOST_IP=IP)
    env.pop("DOCKER_HOST", None)
    env.pop("ETCD_ENDPOINT", None)
    t0 = time.time()
    p = subprocess.run([REGISTER, "--once", "--timeout", "5", "--etcd", etcd.url, "--docker", d.host,
                        "--policy", policy, *extra], env=env, capture_output=True, text=True, timeout=60)
    return p, time.time() - t0


@suite.test
def once_exits_1_naming_the_failing_container():
    reset()
    ids = webs(3)
    p, took = run_once(write_policy("web2.lua", WEB2_FAILS))
    assert p.returncode == 1, f"--once with web2 failing exited {p.returncode}:\n{p.stderr}"
    assert "web2" in p.stderr or ids["web2"][:12] in p.stderr, p.stderr
    assert "etcd matches" not in p.stderr, p.stderr
    p, took = run_once(write_policy("good.lua", GOOD))
    assert p.returncode == 0, f"--once with every container fine exited {p.returncode}:\n{p.stderr}"
    assert etcd.tree(PREFIX) == svc_truth(ids)


@suite.test
def dry_run_once_never_claims_etcd_matches():
    reset()
    webs(2)
    p, took = run_once(write_policy("good.lua", GOOD), "--dry-run")
    out = p.stdout + p.stderr
    assert "etcd matches" not in out, f"--dry-run --once (exit {p.returncode}) said:\n{out}"
    assert etcd.tree(PREFIX) == {}  # a dry run writes nothing


@suite.test
def reload_whose_records_are_all_rejected_fails():
    reset()
    ids = webs(3)
    port = free_port()
    pol = write_policy("reload.lua", GOOD)
    r = start_register(pol, port=port)
    truth = svc_truth(ids)
    wait_for(lambda: etcd.tree(PREFIX) == truth, 20, what="the good policy's keys")
    r.wait_log("in sync")
    idx = etcd.index()
    write_policy("reload.lua", NUMBERS)
    r.proc.send_signal(signal.SIGHUP)

    def reloaded():
        m = metrics(port)
        return (m.get('register_policy_reloads_total{result="ok"}', 0)
                + m.get('register_policy_reloads_total{result="failed"}', 0)) >= 1
    wait_for(reloaded, 20, what="the reload to end")
    time.sleep(2)
    dels = deletes_since(idx, PREFIX)
    assert not dels, f"a reload whose records are all rejected deleted: {dels}"
    assert etcd.tree(PREFIX) == truth
    m = metrics(port)
    assert m.get('register_policy_reloads_total{result="failed"}') == 1, m
    assert m.get('register_policy_reloads_total{result="ok"}') == 0, m
    assert m.get("register_policy_records_rejected_total", 0) > 0, m
    assert "reload failed" in r.output(), r.output()
    r.stop()


@suite.test
def restart_with_pending_checks_deletes_nothing():
    reset()
    # a new check needs two passes 5 s apart: several seconds pending
    cid = checked("SERVICE_CHECK_INTERVAL=5s", "SERVICE_CHECK_TIMEOUT=1s", "SERVICE_CHECK_RISE=2")
    key = f"{REG_PREFIX}/bbx/{cid}"
    r1 = start_register(HEALTH_CHECKS)
    wait_for(lambda: key in etcd.tree(REG_PREFIX), 25, what="registered once its check passes")
    value = etcd.tree(REG_PREFIX)[key]
    r1.stop()
    # SIGTERM, start again with nothing changed
    idx = etcd.index()
    r2 = start_register(HEALTH_CHECKS)
    time.sleep(6)
    dels = deletes_since(idx, REG_PREFIX)
    assert not dels, f"deleted while the restarted daemon's check was pending: {dels}"
    assert etcd.tree(REG_PREFIX) == {key: value}
    assert "removed" not in r2.output(), r2.output()
    # kill -9, start again at once
    r2.kill9()
    idx = etcd.index()
    r3 = start_register(HEALTH_CHECKS)
    time.sleep(6)
    dels = deletes_since(idx, REG_PREFIX)
    assert not dels, f"deleted after kill -9 and a restart, check pending: {dels}"
    assert etcd.tree(REG_PREFIX) == {key: value}
    assert "removed" not in r3.output(), r3.output()
    r3.stop()


@suite.test
def reload_that_changes_a_check_deletes_nothing():
    reset()
    fast = ("SERVICE_CHECK_INTERVAL=1s", "SERVICE_CHECK_TIMEOUT=500ms")
    a, b = checked(*fast), checked(*fast)
    keys = {f"{REG_PREFIX}/bbx/{a}", f"{REG_PREFIX}/bbx/{b}"}
    pol = write_policy("checked.lua", CHECKED_POLICY % "nil")
    port = free_port()
    r = start_register(pol, port=port)
    wait_for(lambda: set(etcd.tree(REG_PREFIX)) == keys, 20, what="both registered, checks passing")
    idx = etcd.index()
    # rise 3 instead of 1: the checks change
    write_policy("checked.lua", CHECKED_POLICY % "3")
    r.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: metrics(port).get('register_policy_reloads_total{result="ok"}') == 1, 20,
             what="the reload")
    time.sleep(10)
    dels = deletes_since(idx, REG_PREFIX)
    assert not dels, f"deleted after a reload that changed the checks: {dels}"
    assert set(etcd.tree(REG_PREFIX)) == keys
    assert "checks reset" in r.output(), r.output()
    r.stop()


def sets_and_deletes_since(index):
    return [(e["action"], e["node"]["key"]) for e in etcd.events_since(index, PREFIX)]


@suite.test
def restart_into_a_policy_that_names_keys_otherwise_writes_before_it_deletes():
    """The previous run's keys that nothing produces now went at once at
    start-up, before the containers' new keys were written (a reviewer saw
    gaps in 11 of 50 containers; with checks, the host had no key for 5 s).
    Now they wait until the new keys are in etcd."""
    reset()
    ids = webs(3)
    registered_with_good_policy(ids)
    idx = etcd.index()
    port = free_port()
    r = start_register(write_policy("renamed.lua", RENAMED), port=port)
    want = {k.replace(f"{PREFIX}/", f"{PREFIX}/port-"): v for k, v in svc_truth(ids).items()}
    wait_for(lambda: etcd.tree(PREFIX) == want, 20, what="the renamed keys, the old ones gone")
    evs = sets_and_deletes_since(idx)
    for name in ids:
        new = [i for i, (a, k) in enumerate(evs) if k == f"{PREFIX}/port-{name}/80" and a in ("set", "create")]
        old = [i for i, (a, k) in enumerate(evs) if k == f"{PREFIX}/{name}/80" and a == "delete"]
        assert new and old and new[0] < old[0], f"{name}: {evs}"
    r.stop()


@suite.test
def restart_with_a_failing_container_whose_keys_do_not_name_it_deletes_nothing():
    """Keys that name neither the container's id nor its name (its host
    port names them): the failing container's key went at start-up as
    stale.  While any running container's call fails, no key under the
    prefix that nothing produces is deleted."""
    reset()
    ids = webs(3)
    r = start_register(write_policy("byport.lua", BY_PORT % ""))
    wait_for(lambda: len(etcd.tree(PREFIX)) == 3, 20, what="the keys by port")
    r.wait_log("in sync")
    r.stop()
    before = etcd.tree(PREFIX)
    idx = etcd.index()
    port = free_port()
    r = start_register(write_policy("byport2.lua", BY_PORT % 'if c.name == "web2" then error("boom") end'),
                       port=port)
    r.wait_log("boom")
    settled(r, port, 3)
    assert not deletes_since(idx, PREFIX), sets_and_deletes_since(idx)
    assert etcd.tree(PREFIX) == before, (etcd.tree(PREFIX), before)
    assert "keeping the keys under the prefix that no container produces" in r.output(), r.output()
    r.stop()


@suite.test
def a_sighup_during_a_reload_is_not_lost():
    """A SIGHUP while a reload ran was dropped ("already running"): the
    file changed since stayed unread, and etcd kept the old keys for good.
    It is tried once the running reload is over.  The reload is held by
    a frozen dockerd (its containers' inspects wait), so the second SIGHUP
    comes while it runs."""
    reset()
    ids = webs(3)
    path = write_policy("hup.lua", GOOD)
    r = start_register(path)
    wait_for(lambda: etcd.tree(PREFIX) == svc_truth(ids), 20, what="the keys")
    r.wait_log("in sync")
    truth = svc_truth(ids)
    sigstop(d.proc.pid)
    try:
        r.proc.send_signal(signal.SIGHUP)  # GOOD again: it waits for Docker
        r.wait_log("SIGHUP: trying policy")
        write_policy("hup.lua", RENAMED)
        r.proc.send_signal(signal.SIGHUP)
        r.wait_log("is tried again once it is over")
    finally:
        os.kill(d.proc.pid, signal.SIGCONT)
    want = {k.replace(f"{PREFIX}/", f"{PREFIX}/port-"): v for k, v in truth.items()}
    wait_for(lambda: etcd.tree(PREFIX) == want, 30, what="the file as it is now, applied")
    r.stop()


suite.run()

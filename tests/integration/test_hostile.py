"""Hostile and buggy policies (tests/policy/hostile/) in the daemon, against
real etcd and the fake Docker API.  For each: the other containers are
registered, the attacked one is not (or, for a hook, only its hook fails),
one log line names the container, the file and line, and the reason, the
metric counts it under that reason, events keep being handled (a container
started afterwards is registered), a reload works, nothing is written to the
filesystem, and SIGTERM exits 0 (under ASan: with no leak)."""
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "policy"))
from fake_docker import FakeDocker  # noqa: E402
from harness import REGISTER, Etcd, Register, Suite, free_port, tmpdir, wait_for  # noqa: E402
from hostile_corpus import CORPUS, cases, header  # noqa: E402

IP = "10.6.6.6"
PREFIX = f"/registered/{IP}"
suite = Suite()
etcd = Etcd().start()
suite.defer(etcd.cleanup)
fake = FakeDocker(os.path.join(tmpdir("rf"), "d.sock")).start()
suite.defer(fake.stop)
WORK = tmpdir("rw")


def reset():
    for c in list(fake.containers):
        fake.remove(c)
        fake.emit(fake.event("destroy", c))
    etcd.etcdctl("rm", "--recursive", "/registered", check=False)


def key(cid, image="bbx"):
    return f"{PREFIX}/{image}/{cid}"


def metrics(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {m.group(1): float(m.group(2))
            for m in re.finditer(r'^(register_policy_errors_total\{reason="\w+"\}) (\S+)$', text, re.M)}


def register(policy, port, timeout_ms):
    sentinel = os.path.join(WORK, "sentinel")
    r = Register("--etcd", etcd.url, "--docker", fake.host, "--policy", policy,
                 "--metrics", f"127.0.0.1:{port}", "--policy-timeout", str(timeout_ms),
                 host_ip=IP, env={"SENTINEL": sentinel}).start()
    suite.defer(r.cleanup)
    return r, sentinel


def one(name):
    path = os.path.join(CORPUS, name)
    h = header(name)
    expect, hook, breaks_all = h["expect"], h["hook"], h["breaks_all"]
    reset()
    # a private copy: the reload below reads it again
    policy = os.path.join(WORK, name)
    shutil.copy(path, policy)
    good1 = fake.add(name="good1")
    evil = fake.add(name="evil", image="evil")
    port = free_port()
    r, sentinel = register(policy, port, h["timeout_ms"])
    r.wait_log("in sync", timeout=60)
    out = lambda: r.output()  # noqa: E731
    if hook == "event":
        fake.emit(fake.event("start", evil))
    if breaks_all:  # evil was evaluated: the next container shows it
        fake.emit(fake.event("start", fake.add(name="after")))
    if expect != ["ok"]:
        what = (f"{hook} hook failed:" if hook else
                "records() failed for container " + ("" if breaks_all else f"{evil[:12]}:"))
        r.wait_log(what)
        line = [l for l in out().splitlines() if what in l][0]
        reasons = re.findall(r"\(reason: (\w+)\)", line)
        assert reasons and reasons[0] in expect, (name, line)
        # the file and line (the policy's, or a helper's it called), or
        # what records() returned when the failure is in encoding it
        assert re.search(r"\.lua:\d+: ", line) or ": its result: " in line, (name, line)
        wait_for(lambda: metrics(port).get(f'register_policy_errors_total{{reason="{reasons[0]}"}}', 0) >= 1,
                 what="the failure counted under its reason")
    if not breaks_all:
        wait_for(lambda: key(good1) in etcd.tree(), what="the other container")
        if hook or expect == ["ok"]:
            wait_for(lambda: key(evil, "evil") in etcd.tree(), what="evil's records (its hook failed, not records)")
        else:
            assert key(evil, "evil") not in etcd.tree(), (name, etcd.tree())
        # events are still handled
        good2 = fake.add(name="good2")
        fake.emit(fake.event("start", good2))
        wait_for(lambda: key(good2) in etcd.tree(), what="a container started afterwards")
        # a reload of the same file works: evil fails under both policies
        r.proc.send_signal(signal.SIGHUP)
        r.wait_log("reloaded:")
        good3 = fake.add(name="good3")
        fake.emit(fake.event("start", good3))
        wait_for(lambda: key(good3) in etcd.tree(), what="a container started after the reload")
    else:
        # the policy broke itself; a reload to a sound one puts it right
        with open(policy, "w") as f:
            f.write('return require "register.default"\n')
        r.proc.send_signal(signal.SIGHUP)
        r.wait_log("reloaded:")
        wait_for(lambda: key(good1) in etcd.tree() and key(evil, "evil") in etcd.tree(),
                 what="every container after the reload")
    assert "unprotected" not in out(), out()
    r.stop()  # exit status 0
    assert not os.path.exists(sentinel), name


for _name in cases():
    def _t(name=_name):
        one(name)
    _t.__name__ = _name[:-4]
    suite.test(_t)


@suite.test
def policies_that_fail_to_load():
    reset()
    good1 = fake.add(name="good1")
    loads = cases(load=True)
    assert loads, "no load cases in the corpus"
    for name in loads:
        # at start: a clear one-line error, exit 1
        res = subprocess.run([REGISTER, "--once", "--etcd", etcd.url, "--docker", fake.host,
                              "--policy", os.path.join(CORPUS, name)],
                             env=dict(os.environ, HOST_IP=IP), capture_output=True, text=True, timeout=60)
        assert res.returncode == 1, (name, res.returncode, res.stderr)
        assert f"policy {os.path.join(CORPUS, name)}: {os.path.join(CORPUS, name)}:" in res.stderr, res.stderr
    # in a running daemon: each reload is refused, the old policy goes on
    policy = os.path.join(WORK, "reloaded.lua")
    with open(policy, "w") as f:
        f.write('return require "register.default"\n')
    port = free_port()
    r, _ = register(policy, port, 1000)
    r.wait_log("in sync")
    for i, name in enumerate(loads):
        shutil.copy(os.path.join(CORPUS, name), policy)
        r.proc.send_signal(signal.SIGHUP)
        r.wait_log("policy reload failed, keeping the old policy", count=i + 1)
    good2 = fake.add(name="good2")
    fake.emit(fake.event("start", good2))
    wait_for(lambda: key(good1) in etcd.tree() and key(good2) in etcd.tree(), what="registrations")
    r.stop()


@suite.test
def hook_looping_on_failing_requests_is_ended_by_its_time_limit():
    """A hook that sends request after request that curl fails at once,
    inside its own processing (a port number out of range), alternating with
    ones to a port nobody listens on.  The loop must still reach I/O and its
    other timers (/metrics answers, events are handled) and --hook-timeout
    ends the call.  Without http.c's 1 ms hold on a request started from
    inside its timer callback, this kept libuv in its timer phase for good
    (tried: /metrics never answered)."""
    reset()
    closed = free_port()
    policy = os.path.join(WORK, "http_loop.lua")
    with open(policy, "w") as f:
        f.write('''local register = require "register"
local default = require "register.default"
return { prefix = default.prefix, records = default.records,
  event = function(ev, host)
    if ev.attributes and ev.attributes.name == "evil" then
      while true do
        register.http.request { url = "http://127.0.0.1:999999/", timeout = 1 }
        register.http.request { url = "http://127.0.0.1:%d/", timeout = 1 }
      end
    end
  end }
''' % closed)
    good1 = fake.add(name="good1")
    evil = fake.add(name="evil", image="evil")
    port = free_port()
    r = Register("--etcd", etcd.url, "--docker", fake.host, "--policy", policy,
                 "--metrics", f"127.0.0.1:{port}", "--hook-timeout", "3", host_ip=IP).start()
    suite.defer(r.cleanup)
    r.wait_log("in sync", timeout=60)
    fake.emit(fake.event("start", evil))
    time.sleep(0.5)  # the hook is looping now
    assert "register_policy_errors_total" in urllib.request.urlopen(
        f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    good2 = fake.add(name="good2")
    fake.emit(fake.event("start", good2))
    wait_for(lambda: key(good2) in etcd.tree(), what="a container started while the hook loops")
    r.wait_log("event hook failed: the call ran longer than the 3000 ms limit (--hook-timeout)", timeout=30)
    wait_for(lambda: metrics(port).get('register_policy_errors_total{reason="timeout"}', 0) >= 1,
             what="counted as a timeout")
    assert key(good1) in etcd.tree() and key(evil, "evil") in etcd.tree()
    r.stop()


suite.run()

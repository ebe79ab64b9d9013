"""Operating it: /metrics (checked by a strict parser of the Prometheus
text format, and promtool when it is installed), /healthz, JSON logs, and
systemd's readiness protocol through a fake NOTIFY_SOCKET."""
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from fake_docker import FakeDocker  # noqa: E402
from harness import REGISTER, Etcd, FreezableProxy, Register, Suite, free_port, sigstop, tmpdir, wait_for  # noqa: E402

IP = "10.6.5.4"
suite = Suite()
etcd = Etcd().start()
suite.defer(etcd.cleanup)
fake = FakeDocker(os.path.join(tmpdir("rf"), "d.sock")).start()
suite.defer(fake.stop)


def reset():
    """Every test starts from nothing, whatever an earlier one left."""
    for c in list(fake.containers):
        fake.remove(c)
    etcd.etcdctl("rm", "--recursive", "/registered", check=False)


def curl(url):
    r = subprocess.run(["curl", "-s", "-o", "-", "-w", "\n%{http_code} %{content_type}", url],
                       capture_output=True, text=True, timeout=20)
    body, _, tail = r.stdout.rpartition("\n")
    code, _, ctype = tail.partition(" ")
    return int(code), ctype, body


NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\\\|\\"|\\n)*"'
SAMPLE = re.compile(rf"^({NAME})(\{{(?:{LABEL})(?:,{LABEL})*\}})? (-?[0-9.eE+-]+|NaN|\+Inf|-Inf)$")


def parse_exposition(text):
    """A strict reader of the text format: every sample belongs to a family
    declared by HELP and TYPE before it, names and labels are well formed,
    histograms have +Inf buckets equal to _count.  {name{labels}: value}"""
    assert text.endswith("\n"), "the exposition must end with a newline"
    types, samples = {}, {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert re.fullmatch(NAME, name), line
        elif line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ")
            assert typ in ("counter", "gauge", "histogram", "summary", "untyped"), line
            assert name not in types, f"TYPE twice for {name}"
            types[name] = typ
        elif line.startswith("#") or not line:
            raise AssertionError(f"unexpected line {line!r}")
        else:
            m = SAMPLE.match(line)
            assert m, f"bad sample line {line!r}"
            name = m.group(1)
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            fam = name if name in types else base
            assert fam in types, f"sample {name} without a TYPE"
            if types[fam] == "counter":
                assert name.endswith("_total"), f"counter {name} should end in _total"
            key = name + (m.group(2) or "")
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = float(m.group(3))
    for key, v in samples.items():
        if "_bucket{" in key and 'le="+Inf"' in key:
            count = key.replace("_bucket{", "_count{").replace(',le="+Inf"', "")
            assert samples[count] == v, (key, count)
    return samples


@suite.test
def metrics_exposition():
    reset()
    port = free_port()
    c1 = fake.add()
    fake.add(ports=[("53/udp", [("127.0.0.1", "5353")])])
    pol = os.path.join(tmpdir("rp"), "p.lua")
    first = ('local d = require "register.default"\n'
             'return { prefix = d.prefix, records = function(c, h)\n'
             '  if c.name == "bad" then error("nope") end\n'
             '  return d.records(c, h) end }\n')
    with open(pol, "w") as f:
        f.write(first)
    r = Register("--etcd", etcd.url, "--docker", fake.host, "--policy", pol,
                 "--metrics", f"127.0.0.1:{port}", host_ip=IP).start()
    suite.defer(r.cleanup)
    r.wait_log("in sync")
    bad = fake.add(name="bad")
    fake.emit(fake.event("start", bad), fake.event("exec_start: /bin/sh -c true", c1),
              fake.event("health_status: healthy", c1))
    r.wait_log("nope")
    # the new version fails on c1 too, where the one in force works: refused
    # ("bad" fails under both, which alone would not block a reload)
    with open(pol, "w") as f:
        f.write('local d = require "register.default"\n'
                'return { prefix = d.prefix, records = function(c, h)\n'
                '  if c.name == "bad" or c.id == "%s" then error("nope") end\n'
                '  return d.records(c, h) end }\n' % c1)
    r.proc.send_signal(signal.SIGHUP)
    r.wait_log("policy reload failed, keeping the old policy")
    code, ctype, body = curl(f"http://127.0.0.1:{port}/metrics")
    assert code == 200 and ctype.startswith("text/plain; version=0.0.4"), (code, ctype)
    m = parse_exposition(body)
    assert m["register_keys"] == 2
    assert m["register_containers_registered"] == 2
    assert m["register_containers"] == 3
    assert m["register_docker_connected"] == 1
    assert m['register_docker_events_total{action="start"}'] == 1
    assert m['register_docker_events_total{action="health_status"}'] == 1
    assert m['register_docker_events_total{action="exec_start"}'] == 1  # no command text as label
    assert m['register_etcd_requests_total{op="put",result="ok"}'] == 2
    assert m['register_etcd_requests_total{op="list",result="ok"}'] >= 1
    assert m['register_etcd_request_duration_seconds_count{op="put"}'] == 2
    assert m["register_etcd_pending"] == 0
    # the start event of "bad", then the reload's runs: every container is
    # tried (so that a refusal names them all): "bad" under both policies,
    # c1 under the new one
    assert m['register_policy_errors_total{reason="error"}'] == 4, m
    for reason in ("budget", "timeout", "memory", "sandbox"):
        assert m[f'register_policy_errors_total{{reason="{reason}"}}'] == 0, m
    assert m['register_policy_reloads_total{result="failed"}'] == 1  # records() fails for c1
    assert m['register_policy_reloads_total{result="ok"}'] == 0
    # etcd matches, but "bad" is not evaluated: not in sync, and said so
    assert m["register_in_sync"] == 0
    assert m["register_containers_failed"] == 1
    # the policy in force is the first one: the refused reload changed nothing
    info = [k for k in m if k.startswith("register_policy_info{")]
    assert info == ['register_policy_info{sha256="%s"}' % hashlib.sha256(first.encode()).hexdigest()], info
    assert abs(m["register_last_sync_timestamp_seconds"] - time.time()) < 60
    build = [k for k in m if k.startswith("register_build_info{")][0]
    assert 'etcd_api="v2"' in build and 'docker_api="1.41"' in build and 'version="' in build
    promtool = shutil.which("promtool")
    if promtool:
        p = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr
    else:
        print("promtool not installed: the strict parser above checked the format", file=sys.stderr)
    code, _, body = curl(f"http://127.0.0.1:{port}/nope")
    assert code == 404
    r.stop()
    for c in list(fake.containers):
        fake.remove(c)


@suite.test
def healthz():
    port = free_port()
    e2 = Etcd().start()
    suite.defer(e2.cleanup)
    sock = os.path.join(tmpdir("rf"), "d.sock")
    f2 = FakeDocker(sock).start()
    f2.add()
    r = Register("--etcd", e2.url, "--docker", f2.host, "--metrics", f"127.0.0.1:{port}",
                 host_ip=IP).start()
    suite.defer(r.cleanup)
    r.wait_log("in sync")
    code, ctype, body = curl(f"http://127.0.0.1:{port}/healthz")
    assert code == 200 and ctype == "application/json", (code, body)
    assert json.loads(body) == {"status": "ok", "keys": 1, "containers": 1, "containers_failed": 0}
    time.sleep(3.5)  # etcd quiet: /healthz asks it first, and it answers
    code, _, body = curl(f"http://127.0.0.1:{port}/healthz")
    assert code == 200, body
    # Docker gone
    f2.stop()
    r.wait_log("Docker event stream ended")
    code, _, body = curl(f"http://127.0.0.1:{port}/healthz")
    assert code == 503, body
    assert json.loads(body)["problems"] == ["docker: the event stream is not connected"], body
    # etcd gone too
    e2.stop()
    time.sleep(3.5)
    code, _, body = curl(f"http://127.0.0.1:{port}/healthz")
    assert code == 503
    probs = json.loads(body)["problems"]
    assert len(probs) == 2 and probs[1].startswith("etcd: no answer: "), probs
    # both back
    e2.start()
    f3 = FakeDocker(sock).start()
    suite.defer(f3.stop)
    r.wait_log("docker: connected", count=2, timeout=30)
    wait_for(lambda: curl(f"http://127.0.0.1:{port}/healthz")[0] == 200, 20, what="healthy again")
    r.stop()


@suite.test
def healthz_answers_at_once_while_etcd_hangs():
    """etcd that takes connections and never answers: every /healthz
    waited for a probe of its own, 5 s each, longer than a prober waits
    (a 1 s probe timeout got no answer at all, not the 503 and its
    reasons).  After a probe failed, /healthz says so at once until etcd
    answers again, and asks again meanwhile."""
    reset()
    port = free_port()
    proxy = FreezableProxy(etcd.url)
    suite.defer(proxy.close)
    fake.add()
    r = Register("--etcd", proxy.url, "--etcd-discovery", "off", "--docker", fake.host,
                 "--metrics", f"127.0.0.1:{port}", host_ip=IP).start()
    suite.defer(r.cleanup)
    r.wait_log("in sync")
    proxy.freeze()
    time.sleep(3.5)  # etcd quiet: the next /healthz probes it
    code, _, body = curl(f"http://127.0.0.1:{port}/healthz")  # the probe's time
    assert code == 503 and "etcd: no answer" in body, (code, body)
    for _ in range(3):
        t0 = time.time()
        code, _, body = curl(f"http://127.0.0.1:{port}/healthz")
        took = time.time() - t0
        assert code == 503 and "etcd: no answer" in body, (code, body)
        assert took < 1, f"/healthz took {took:.1f} s while etcd is known to hang"
    r.stop()


@suite.test
def json_logs():
    reset()
    c = fake.add()
    r = Register("--etcd", etcd.url, "--docker", fake.host, "--log-format", "json", host_ip=IP).start()
    suite.defer(r.cleanup)
    r.wait_log('"msg":"in sync')
    fake.remove(c)
    fake.emit(fake.event("destroy", c))
    r.wait_log('"msg":"removed"')
    r.stop()
    lines = [json.loads(l) for l in r.output().splitlines()]  # every line is JSON
    for l in lines:
        assert set(l) >= {"ts", "level", "msg"}, l
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", l["ts"]), l
    reg = [l for l in lines if l["msg"] == "registered"][0]
    assert reg["key"] == f"/registered/{IP}/bbx/{c}" and reg["container"] == c and reg["image"] == "bbx"
    assert reg["level"] == "info"
    # an error carries its error field
    r2 = Register("--etcd", "127.0.0.1:1", "--docker", fake.host, "--log-format", "json", host_ip=IP).start()
    suite.defer(r2.cleanup)
    r2.wait_log("cannot list")
    r2.stop()
    err = [json.loads(l) for l in r2.output().splitlines() if "cannot list" in l][0]
    assert err["level"] == "warn" and "127.0.0.1:1" in err["error"], err


@suite.test
def systemd_notify_protocol():
    reset()
    d = tmpdir("rn")
    path = os.path.join(d, "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(10)
    c = fake.add()
    r = Register("--etcd", etcd.url, "--docker", fake.host, host_ip=IP,
                 env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}).start()
    suite.defer(r.cleanup)
    got = []
    deadline = time.time() + 10
    while time.time() < deadline and not any("STATUS=in sync: 1 keys from 1 containers" in g for g in got):
        got.append(s.recv(4096).decode())
    # READY=1 once Docker is followed (with how far the sync is), once
    ready = [g for g in got if "READY=1" in g]
    assert len(ready) == 1 and "STATUS=" in ready[0], got
    assert any("STATUS=in sync: 1 keys from 1 containers" in g for g in got[got.index(ready[0]):]), got
    assert "in sync" in r.output()
    # the watchdog keeps coming, at half of WATCHDOG_USEC
    t0 = time.time()
    pings = 0
    while time.time() - t0 < 1.0:
        if s.recv(4096).decode() == "WATCHDOG=1":
            pings += 1
    assert 3 <= pings <= 8, pings
    r.proc.send_signal(signal.SIGTERM)
    while True:
        m = s.recv(4096).decode()
        if "STOPPING=1" in m:
            break
    assert r.proc.wait(20) == 0, r.output()
    s.close()
    fake.remove(c)


@suite.test
def metrics_flag_errors():
    env = dict(os.environ, HOST_IP=IP)
    p = subprocess.run([REGISTER, "--metrics", "localhost"], env=env, capture_output=True, text=True)
    assert p.returncode == 2 and '--metrics "localhost" is not IP:PORT' in p.stderr, p.stderr
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    p = subprocess.run([REGISTER, "--metrics", f"127.0.0.1:{port}", "--etcd", etcd.url, "--docker", fake.host],
                       env=env, capture_output=True, text=True, timeout=20)
    assert p.returncode == 1, p.stderr
    assert f"--metrics 127.0.0.1:{port}: cannot listen: address already in use" in p.stderr, p.stderr
    busy.close()



@suite.test
def ready_while_etcd_is_down():
    """etcd down at boot: READY=1 all the same (Docker is followed), with the
    wait in STATUS=; "in sync" once etcd is back."""
    reset()
    d = tmpdir("rn")
    path = os.path.join(d, "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(10)
    c = fake.add()
    down = Etcd()  # not started yet
    suite.defer(down.cleanup)
    r = Register("--etcd", down.url, "--docker", fake.host, host_ip=IP,
                 env={"NOTIFY_SOCKET": path}).start()
    suite.defer(r.cleanup)
    got = []
    deadline = time.time() + 15
    while time.time() < deadline and not any("waiting for etcd: 1 keys from 1 containers to sync (" in g for g in got):
        got.append(s.recv(4096).decode())
    ready = [g for g in got if "READY=1" in g]
    assert len(ready) == 1, got
    assert any("STATUS=waiting for etcd: 1 keys from 1 containers to sync (" in g for g in got), got
    down.start()
    deadline = time.time() + 30
    while time.time() < deadline and not any("STATUS=in sync: 1 keys from 1 containers" in g for g in got):
        got.append(s.recv(4096).decode())
    assert any("STATUS=in sync: 1 keys from 1 containers" in g for g in got), got
    assert list(down.tree(f"/registered/{IP}")) == [f"/registered/{IP}/bbx/{c}"]
    r.stop()



@suite.test
def deregistration_window_ignores_resync_and_sighup():
    """--deregister-on-exit: while the deletes wait for an etcd that does not
    answer (frozen), the resync timer and a SIGHUP must not reach the Docker
    module, which is already gone; register exits 0 after its 10 s window."""
    reset()
    c = fake.add()
    slow = Etcd().start()
    suite.defer(slow.cleanup)
    pol = os.path.join(tmpdir("rp"), "p.lua")
    with open(pol, "w") as f:
        f.write('return require "register.default"\n')
    r = Register("--etcd", slow.url, "--docker", fake.host, "--policy", pol, "--resync", "1",
                 "--deregister-on-exit", host_ip=IP).start()
    suite.defer(r.cleanup)
    r.wait_log("in sync")
    assert f"/registered/{IP}/bbx/{c}" in slow.tree(f"/registered/{IP}")
    sigstop(slow.proc.pid)
    try:
        r.proc.send_signal(signal.SIGTERM)
        r.wait_log("deregistering this host's keys before exit")
        time.sleep(1.5)  # at least one resync period inside the window
        r.proc.send_signal(signal.SIGHUP)
        r.wait_log("SIGHUP while shutting down: no reload")
        rc = r.proc.wait(30)
    finally:
        os.kill(slow.proc.pid, signal.SIGCONT)
    assert rc == 0, (rc, r.output()[-3000:])
    assert "exiting before every key could be deleted" in r.output(), r.output()[-3000:]


@suite.test
def idle_connections_do_not_keep_healthz_away():
    """40 clients that connect to --metrics and send nothing: past 32 open
    connections a new one was closed at once, for the idle ones' 10 s, so a
    monitor's /healthz failed.  Now the oldest silent one makes room."""
    reset()
    port = free_port()
    r = Register("--etcd", etcd.url, "--docker", fake.host, "--metrics", f"127.0.0.1:{port}",
                 host_ip=IP).start()
    suite.defer(r.cleanup)
    r.wait_log("in sync")
    idle = []
    try:
        for _ in range(40):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(0.2)
        for _ in range(3):
            code, _, body = curl(f"http://127.0.0.1:{port}/healthz")
            assert code == 200, (code, body)
    finally:
        for c in idle:
            c.close()
    r.stop()


suite.run()

#!/usr/bin/env python3
"""register's benchmark suite: one command, prints a table.

    bench/run.py              everything (about 12 minutes; dockerd needs root)
    bench/run.py sync storm   only some: sync limit failsafe latency latency-fake storm idle
                              traffic
    bench/run.py sync10k      only the 10,000-container sync (v2 and v3), no limit client

REGISTER_BENCH_BUILD=DIR builds into (and runs from) DIR instead of
build-bench/; REGISTER_BENCH_BUILD_TYPE (Release) is its CMAKE_BUILD_TYPE;
REGISTER_BENCH_NO_BUILD=1 runs DIR's binaries as they are (another
configuration, or an older commit's build to compare with).  The results
also go to DIR/bench-results.json, or to REGISTER_BENCH_RESULTS.

1. sync     start-up sync of N = 1,000 and 10,000 containers (1-3 published
            ports each) from the fake Docker API into a real etcd: wall time
            until etcd holds every key, requests/s, register's RssAnon
2. limit    the same PUTs from bench/limit.c (no Docker, no Lua; the best of
            several concurrencies): register's time as a ratio to it
3. latency  real dockerd: Docker's event timeNano to the key seen by an etcd
            watch, for registration and removal (p50, p99, max over 60);
            and stage by stage from register's --trace-latency lines: event
            read, inspect sent, inspect answered, policy run, write sent,
            write acknowledged; register's own work is all but the engine's
            delivery of the event and the inspect's and the write's round
            trips (the floor).  REGISTER_TEST_ENGINE=docker26 and
            REGISTER_TEST_ETCD=debian13 measure on Docker 26 and etcd 3.5.
   latency-fake  the same stages and register's own work, with the fake
            Docker API (tests/integration/fake_docker.py) instead of dockerd
            (no root, no dockerd), 200 containers: the inspect's round trip
            is the fake's and is taken out of the own work as dockerd's is
4. storm    2,000 start/die events per second for 10 s: memory and pending
            writes during it, time to converge after it
5. idle     60 s of an idle register: CPU time and context switches (daemon
            and worker), memory, with and without --ttl
   sync10k  only the 10,000-container sync, v2 and v3, without the limit
            client; with the CPU time of the daemon and of the worker
   failsafe  1,000 and 10,000 registered containers, register restarted
            with a policy that fails on every one: the time until every
            evaluation failed, with every key kept (each failed container
            adopts the keys that name it: linear, not quadratic)
6. traffic  zero failed requests at a real haproxy that `register watch`
            reloads: 100 requests/s through it during a rolling deploy of
            10 backends, a scale-down, docker stop, a failing health check,
            a policy reload, register restarted, the etcd leader killed and
            etcd down 5 s; failed requests, latency, key -> reload
            (bench/traffic.py, which also runs alone, with options)

Memory: since policies run in register-worker, a process of the daemon's
own (spawned at start, one per policy generation), every memory reading is
of both: the daemon's and the worker's RssAnon (private memory: heap,
stacks, written data pages), VmRSS (resident, shared library pages
included: what ps, top and docker stats call RSS) and Pss (shared pages
divided among the processes that map them, so that the two add up without
counting a library twice), side by side and summed.

etcd runs on tmpfs (/dev/shm) so that its fsync does not dominate; both
register and the limit client write to the same kind of etcd.  Not part of
the tests: speed and memory targets live here, never in timed tests.
"""
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(SRC, "tests", "integration"))
BUILD = os.environ.get("REGISTER_BENCH_BUILD", os.path.join(SRC, "build-bench"))
os.environ["REGISTER_BIN"] = os.path.join(BUILD, "register")

from fake_docker import FakeDocker, make_id  # noqa: E402
from harness import Dockerd, Register  # noqa: E402
from toolkit import Etcd, default_value, remove_tmpdirs, tmpdir, wait_for  # noqa: E402

IP = "10.99.0.1"
PREFIX = f"/registered/{IP}"
RESULTS = []


def out(*a):
    print(*a, file=sys.stderr, flush=True)


def build():
    if os.environ.get("REGISTER_BENCH_NO_BUILD"):
        return
    btype = os.environ.get("REGISTER_BENCH_BUILD_TYPE", "Release")
    subprocess.run(["cmake", "-S", SRC, "-B", BUILD, "-DCMAKE_BUILD_TYPE=" + btype,
                    "-DREGISTER_TESTS=OFF"], check=True, capture_output=True)
    subprocess.run(["cmake", "--build", BUILD, "-j", str(os.cpu_count() or 2)], check=True,
                   capture_output=True)
    subprocess.run(["cmake", "--build", BUILD, "--target", "bench_limit", "bench_fakedocker"],
                   check=True, capture_output=True)


def status(pid, field):
    """A value from /proc/PID/status in kB (RssAnon, VmRSS, VmHWM, ...)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def smaps(pid, field):
    """A total from /proc/PID/smaps_rollup in kB (Pss, ...); 0 when unreadable."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def worker_of(pid):
    """The pid of the daemon's policy worker (register-worker, its child), or None."""
    kids = []
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/children") as f:
                kids += [int(k) for k in f.read().split()]
    except OSError:
        kids = []
        for d in os.listdir("/proc"):
            try:
                if d.isdigit() and status(d, "PPid") == pid:
                    kids.append(int(d))
            except OSError:
                pass
    for k in kids:
        try:
            with open(f"/proc/{k}/comm") as f:
                if f.read().strip().startswith("register-worke"):  # comm is cut at 15
                    return k
        except OSError:
            pass
    return None


MEM_FIELDS = (("RssAnon", "rss_anon"), ("VmRSS", "vm_rss"), ("Pss", "pss"))


def memory(pid):
    """The daemon's and its worker's memory in kB: {rss_anon, vm_rss, pss} x
    {daemon, worker, sum}, e.g. mem["rss_anon"]["sum"]; the worker's are 0
    when there is none (a build from before the worker)."""
    wpid = worker_of(pid)
    m = {"worker_pid": wpid}
    for field, key in MEM_FIELDS:
        get = (lambda p: smaps(p, field)) if field == "Pss" else (lambda p: status(p, field))
        d = get(pid)
        w = get(wpid) if wpid else 0
        m[key] = {"daemon": d, "worker": w, "sum": d + w}
    return m


def mb(kb):
    return f"{kb / 1024:.2f}"


def mem_text(m, fields=("rss_anon", "vm_rss", "pss")):
    """'RssAnon 1.95 + 0.80 = 2.75 MB; VmRSS ...': daemon + worker = together."""
    names = {"rss_anon": "RssAnon", "vm_rss": "VmRSS", "pss": "Pss"}
    return "; ".join(f"{names[k]} {mb(m[k]['daemon'])} + {mb(m[k]['worker'])} = {mb(m[k]['sum'])} MB"
                     for k in fields)


def mem_max(a, b):
    """Field by field, the larger of two memory() readings (None: the other)."""
    if a is None:
        return b
    return {k: ({s: max(a[k][s], b[k][s]) for s in ("daemon", "worker", "sum")} if isinstance(a[k], dict)
                else a[k]) for k in a}


def cpu_and_switches(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime + stime
    vol = status(pid, "voluntary_ctxt_switches")
    nonvol = status(pid, "nonvoluntary_ctxt_switches")
    return ticks / os.sysconf("SC_CLK_TCK"), vol + nonvol


def cpu_of(pid):
    """CPU seconds used so far by the daemon and by its worker (0: none)."""
    wpid = worker_of(pid)
    return {"daemon": round(cpu_and_switches(pid)[0], 2),
            "worker": round(cpu_and_switches(wpid)[0], 2) if wpid else 0}


def tmpfs_etcd():
    import tempfile
    base = "/dev/shm" if os.path.isdir("/dev/shm") else "/tmp"
    return Etcd(data_dir=tempfile.mkdtemp(prefix="rbench", dir=base)).start()


def populate(fake, n, seed=1):
    """n running containers with 1-3 published ports; returns {key: value}."""
    rng = random.Random(seed)
    want = {}
    for i in range(n):
        ports = []
        for j, p in enumerate(sorted(rng.sample(["443/tcp", "53/udp", "80/tcp", "8080/tcp", "9200/tcp"],
                                               rng.randint(1, 3)))):
            ports.append((p, [("127.0.0.1", str(20000 + (i * 3 + j) % 40000))]))
        image = rng.choice(["bbx", "localhost:5000/team/web:1.2", "nginx:1.25"])
        cid = fake.add(image=image, ports=ports, cid=make_id(f"bench-{seed}-{i}"))
        img = image.replace("/", "::")
        want[f"{PREFIX}/{img}/{cid}"] = default_value(
            cid, img, [(b[0][0], b[0][1], p.split("/")[0], p.split("/")[1]) for p, b in ports])
    return want


# ---- 1 + 2: start-up sync and the limit ----

def clear(etcd):
    etcd.etcdctl("rm", "--recursive", "/registered", check=False)
    etcd.etcdctl("del", "--prefix", "/registered", api="3", check=False)


def v3_tree(etcd):
    import base64
    body = json.dumps({"key": base64.b64encode((PREFIX + "/").encode()).decode(),
                       "range_end": base64.b64encode((PREFIX + "0").encode()).decode()}).encode()
    with urllib.request.urlopen(urllib.request.Request(etcd.url + "/v3/kv/range", data=body), timeout=30) as r:
        doc = json.loads(r.read())
    return {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")).decode()
            for kv in doc.get("kvs", [])}

def bench_sync(sizes=(1000, 10000), with_limit=True, apis=("v2", "v3")):
    for api in apis:
        for n in sizes:
            sync_one(n, api, with_limit)


@contextlib.contextmanager
def fast_fake(n):
    """n containers served by the fast C fake (bench/fakedocker.c) and an
    etcd on tmpfs: (the fake's process, .host its address; {key: value} of
    the default schema; the etcd), both gone at the end."""
    d = tmpdir("rbf")
    sock = os.path.join(d, "d.sock")
    model = FakeDocker(sock)  # only its container model, no server
    want = populate(model, n)
    docs = os.path.join(d, "inspect.jsonl")
    with open(docs, "w") as f:
        for c in model.containers.values():
            f.write(json.dumps(c) + "\n")
    fake = subprocess.Popen([os.path.join(BUILD, "bench", "bench_fakedocker"), sock, docs],
                            stderr=subprocess.DEVNULL)
    fake.host = "unix://" + sock
    try:
        wait_for(lambda: os.path.exists(sock), 10)
        etcd = tmpfs_etcd()
        try:
            yield fake, want, etcd
        finally:
            etcd.cleanup()
    finally:
        fake.kill()
        fake.wait()


def sync_one(n, api, with_limit):
    with fast_fake(n) as (fake, want, etcd):
        limit_best = None
        if with_limit:
            pairs = os.path.join(tmpdir("rbp"), "pairs")
            with open(pairs, "w") as f:
                for k, v in want.items():
                    f.write(f"{k}\t{v}\n")
            for conc in (16, 32, 64, 128):
                clear(etcd)
                r = subprocess.run([os.path.join(BUILD, "bench", "bench_limit"), etcd.url, pairs,
                                    str(conc), api], capture_output=True, text=True, timeout=600)
                secs = float(r.stdout.split()[0])
                out(f"  limit client ({api}), {n} PUTs, {conc} in flight: {secs:.3f} s")
                if limit_best is None or secs < limit_best[0]:
                    limit_best = (secs, conc)
            clear(etcd)
        reg = Register("--etcd", etcd.url, "--docker", fake.host, "--etcd-api", api, host_ip=IP)
        t0 = time.time()
        reg.start()
        wait_for(lambda: "in sync" in reg.output(), 600, interval=0.005, what="in sync")
        secs = time.time() - t0
        cpu = cpu_of(reg.proc.pid)
        mem_sync = memory(reg.proc.pid)
        time.sleep(3)  # register trims memory 2 s after a sync: the steady state
        mem = memory(reg.proc.pid)
        hwm = status(reg.proc.pid, "VmHWM")
        whwm = status(mem["worker_pid"], "VmHWM") if mem["worker_pid"] else 0
        got = etcd.tree(PREFIX) if api == "v2" else v3_tree(etcd)
        assert got == want, f"etcd holds {len(got)} keys, wanted {len(want)}"
        row = {"bench": "sync", "api": api, "containers": n, "seconds": round(secs, 3),
               "puts_per_s": round(n / secs), "rss_anon_kb": mem["rss_anon"]["daemon"],
               "rss_anon_at_sync_kb": mem_sync["rss_anon"]["daemon"], "vm_hwm_kb": hwm,
               "worker_vm_hwm_kb": whwm, "mem": mem, "mem_at_sync": mem_sync,
               "cpu_s": cpu["daemon"], "worker_cpu_s": cpu["worker"], "load": os.getloadavg()[0]}
        if limit_best:
            row.update({"limit_seconds": round(limit_best[0], 3), "limit_concurrency": limit_best[1],
                        "ratio": round(secs / limit_best[0], 2)})
        out(f"  register ({api}): {n} containers in sync in {secs:.3f} s; CPU daemon {cpu['daemon']} s + "
            f"worker {cpu['worker']} s (load average {os.getloadavg()[0]:.2f})")
        out(f"    registered, daemon + worker: {mem_text(mem)}")
        out(f"    at the end of the sync:      {mem_text(mem_sync)}")
        # a restart with everything in place writes nothing
        reg.stop()
        reg2 = Register("--etcd", etcd.url, "--docker", fake.host, "--etcd-api", api, host_ip=IP)
        t0 = time.time()
        reg2.start()
        wait_for(lambda: "in sync" in reg2.output(), 600, interval=0.005, what="in sync")
        row["restart_seconds"] = round(time.time() - t0, 3)
        cpu2 = cpu_of(reg2.proc.pid)
        row["restart_cpu_s"], row["restart_worker_cpu_s"] = cpu2["daemon"], cpu2["worker"]
        out(f"    restart with nothing to write: {row['restart_seconds']} s; CPU daemon {cpu2['daemon']} s + "
            f"worker {cpu2['worker']} s")
        reg2.stop()
        reg.cleanup()
        reg2.cleanup()
        RESULTS.append(row)


# ---- failsafe: a restart with a policy that fails on every container ----

BROKEN_POLICY = """local default = require "register.default"
local policy = { prefix = default.prefix }
function policy.records(c, host) error("broken on purpose (bench/run.py failsafe)") end
return policy
"""


def bench_failsafe(sizes=(1000, 10000)):
    """N containers registered, then register restarted with a policy that
    fails on every one: the time until every evaluation has failed (each
    failed container adopts the keys that name it, so nothing is deleted)
    and the CPU it took; etcd must still hold every key."""
    for n in sizes:
        with fast_fake(n) as (fake, want, etcd):
            reg = Register("--etcd", etcd.url, "--docker", fake.host, "--etcd-api", "v2", host_ip=IP)
            reg.start()
            wait_for(lambda: "in sync" in reg.output(), 600, interval=0.01, what="in sync")
            reg.stop()
            policy = os.path.join(reg.dir, "broken.lua")
            with open(policy, "w") as f:
                f.write(BROKEN_POLICY)
            reg2 = Register("--etcd", etcd.url, "--docker", fake.host, "--etcd-api", "v2", "--policy", policy,
                            host_ip=IP)
            t0 = time.time()
            reg2.start()
            wait_for(lambda: reg2.output().count("broken on purpose") >= n, 900, interval=0.02,
                     what="every evaluation failed")
            secs = time.time() - t0
            cpu = cpu_of(reg2.proc.pid)
            got = etcd.tree(PREFIX)
            assert got == want, f"etcd holds {len(got)} keys, wanted {len(want)}"
            row = {"bench": "failsafe", "containers": n, "seconds": round(secs, 3), "cpu_s": cpu["daemon"],
                   "worker_cpu_s": cpu["worker"]}
            out(f"  restart with a broken policy, {n} containers: every evaluation failed after {secs:.3f} s; "
                f"CPU daemon {cpu['daemon']} s + worker {cpu['worker']} s; every key kept")
            reg2.stop()
            reg.cleanup()
            reg2.cleanup()
            RESULTS.append(row)


# ---- 3: event latency on the real dockerd ----

class Watcher(threading.Thread):
    """Follows etcd v2 events below PREFIX and notes when each arrived."""

    def __init__(self, etcd):
        super().__init__(daemon=True)
        self.etcd = etcd
        self.seen = {}  # (action, key) -> time_ns
        self.stop = False

    def run(self):
        idx = self.etcd.index() + 1
        while not self.stop:
            url = f"{self.etcd.url}/v2/keys{PREFIX}?wait=true&recursive=true&waitIndex={idx}"
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    ev = json.loads(r.read())
            except Exception:
                continue
            t = time.time_ns()
            node = ev["node"]
            self.seen.setdefault((ev["action"], node["key"]), t)
            idx = node["modifiedIndex"] + 1


STAGES = (("read", "event read (Docker's timeNano to register)"),
          ("inspect_sent", "inspect sent"),
          ("inspect_answered", "inspect answered (dockerd)"),
          ("policy", "policy run"),
          ("write_sent", "write sent"),
          ("write_acked", "write acknowledged (etcd)"))


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def latency_traces(text):
    """register --trace-latency lines: {container: {stage: us after Docker's event}}, in order."""
    import re
    got = []
    for line in text.splitlines():
        if " latency " not in line or "docker_ns=" not in line:
            continue
        f = dict(re.findall(r"(\w+)=(\S+)", line))
        got.append((f["container"], {k: int(f[k]) for k, _ in STAGES if f.get(k, "-") != "-"}))
    return got


def stage_rows(what, traces):
    """Each stage's own time (from the stage before it that the event
    passed), p50 and p99 in ms; and register's own work: the time from
    reading the event to the write's acknowledgement less the inspect's and
    the write's round trips (the floor).  The event's delivery by the
    engine (read) is reported beside it, with a plain reader's."""
    per = {k: [] for k, _ in STAGES}
    own = []
    for t in traces:
        prev = 0
        for k, _ in STAGES:
            if k in t:
                per[k].append((t[k] - prev) / 1000)
                prev = t[k]
        trips = (t["write_acked"] - t["write_sent"]) + (
            t["inspect_answered"] - t["inspect_sent"] if "inspect_sent" in t else 0)
        own.append((t["write_acked"] - t["read"] - trips) / 1000)
    stages = {k: (round(pct(v, 50), 3), round(pct(v, 99), 3)) for k, v in per.items() if v}
    row = {"bench": "stages", "what": what, "n": len(traces), "stages": stages,
           "own_p50_ms": round(pct(own, 50), 3), "own_p99_ms": round(pct(own, 99), 3)}
    for k, label in STAGES:
        if k in stages:
            out(f"    {label}: p50 {stages[k][0]} ms, p99 {stages[k][1]} ms")
    out(f"    register's own work (event read to write acknowledged, less the two round trips): "
        f"p50 {row['own_p50_ms']} ms, p99 {row['own_p99_ms']} ms")
    RESULTS.append(row)


def bench_latency(count=60):
    d = Dockerd().start()
    d.images()
    d.clean()
    etcd = tmpfs_etcd()
    reg = Register("--etcd", etcd.url, "--docker", d.host, "--trace-latency", host_ip=IP).start()
    ev_proc = subprocess.Popen(["docker", "events", "--filter", "type=container", "--format", "{{json .}}"],
                               env=d.env, stdout=subprocess.PIPE, text=True)
    events = {}
    raw_read = {}  # (action, id) -> ns after timeNano that a plain socket reader got it

    def read_events():
        for line in ev_proc.stdout:
            e = json.loads(line)
            events.setdefault((e.get("Action"), e["Actor"]["ID"]), e["timeNano"])

    def read_raw():
        # the event stream read straight off dockerd's socket, as register
        # reads it: how long dockerd itself takes to deliver an event
        import socket
        s = socket.socket(socket.AF_UNIX)
        s.connect(d.sock)
        s.sendall(b'GET /events?filters=%7B%22type%22%3A%5B%22container%22%5D%7D HTTP/1.1\r\nHost: d\r\n\r\n')
        pend = b""
        while True:
            chunk = s.recv(65536)
            t = time.time_ns()
            if not chunk:
                return
            pend += chunk
            *lines, pend = pend.split(b"\n")
            for line in lines:
                line = line.strip()
                if line.startswith(b"{"):
                    e = json.loads(line)
                    raw_read.setdefault((e.get("Action"), e["Actor"]["ID"]), t - e["timeNano"])
    threading.Thread(target=read_events, daemon=True).start()
    threading.Thread(target=read_raw, daemon=True).start()
    try:
        wait_for(lambda: "in sync" in reg.output(), 30)
        w = Watcher(etcd)
        w.start()
        time.sleep(0.3)
        reg_ms, rm_ms = [], []
        reg_ids, rm_ids = set(), set()
        for i in range(count):
            cid = d.run("-p", "127.0.0.1::80")
            key = f"{PREFIX}/bbx/{cid}"
            wait_for(lambda: ("set", key) in w.seen and ("start", cid) in events, 10, interval=0.002)
            reg_ms.append((w.seen[("set", key)] - events[("start", cid)]) / 1e6)
            reg_ids.add(cid)
            d.docker("rm", "-f", cid)
            wait_for(lambda: ("delete", key) in w.seen and ("die", cid) in events, 10, interval=0.002)
            rm_ms.append((w.seen[("delete", key)] - events[("die", cid)]) / 1e6)
            rm_ids.add(cid)
        w.stop = True
        traces = latency_traces(reg.output())
        for what, xs, ids in (("registration", reg_ms, reg_ids), ("removal", rm_ms, rm_ids)):
            row = {"bench": "latency", "what": what, "n": len(xs), "p50_ms": round(pct(xs, 50), 2),
                   "p99_ms": round(pct(xs, 99), 2), "max_ms": round(max(xs), 2)}
            out(f"  {what}: p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, max {row['max_ms']} ms")
            RESULTS.append(row)
            # a container's first trace is its registration, its second its removal
            first = {}
            for cid, t in traces:
                first.setdefault(cid, []).append(t)
            mine = [ts[0 if what == "registration" else 1] for cid, ts in first.items()
                    if cid in ids and len(ts) >= (1 if what == "registration" else 2)]
            stage_rows(what, mine)
            action = "start" if what == "registration" else "die"
            idx = 0 if what == "registration" else 1
            raw = [raw_read[(action, c)] / 1e6 for c in ids if (action, c) in raw_read]
            paired = [ts[idx]["read"] / 1000 - raw_read[(action, c)] / 1e6 for c, ts in first.items()
                      if c in ids and len(ts) > idx and (action, c) in raw_read]
            if raw:
                out(f"    (the same events read by a plain socket client: p50 {pct(raw, 50):.3f} ms, "
                    f"p99 {pct(raw, 99):.3f} ms; register read each {pct(paired, 50):.3f} ms after it, p50)")
                RESULTS[-1]["plain_read_p50_ms"] = round(pct(raw, 50), 3)
                RESULTS[-1]["read_after_plain_p50_ms"] = round(pct(paired, 50), 3)
    finally:
        ev_proc.kill()
        reg.stop(expect=None)
        reg.cleanup()
        d.cleanup()
        etcd.cleanup()


def bench_latency_fake(count=200):
    """register's own work per event, stage by stage, with the fake Docker
    API instead of dockerd (no root): a container started (start event) and
    removed (die event) count times, one at a time."""
    sock = os.path.join(tmpdir("rbf"), "d.sock")
    fake = FakeDocker(sock).start()
    etcd = tmpfs_etcd()
    reg = Register("--etcd", etcd.url, "--docker", fake.host, "--trace-latency", host_ip=IP).start()
    try:
        wait_for(lambda: "in sync" in reg.output(), 30)
        w = Watcher(etcd)
        w.start()
        time.sleep(0.3)
        reg_ids, rm_ids = set(), set()
        for i in range(count):
            cid = fake.add(cid=make_id(f"lat-{i}-{time.time()}"), running=False,
                           ports=[("80/tcp", [("127.0.0.1", str(30000 + i))])])
            key = f"{PREFIX}/bbx/{cid}"
            fake.start_container(cid)
            wait_for(lambda: ("set", key) in w.seen, 10, interval=0.002)
            reg_ids.add(cid)
            time.sleep(0.01)
            fake.die(cid)
            wait_for(lambda: ("delete", key) in w.seen, 10, interval=0.002)
            rm_ids.add(cid)
            time.sleep(0.01)
        w.stop = True
        mem = memory(reg.proc.pid)
        out(f"    after {count} containers, daemon + worker: {mem_text(mem)}")
        traces = latency_traces(reg.output())
        first = {}
        for cid, t in traces:
            first.setdefault(cid, []).append(t)
        for what, ids, idx in (("registration", reg_ids, 0), ("removal", rm_ids, 1)):
            mine = [ts[idx] for cid, ts in first.items() if cid in ids and len(ts) > idx]
            out(f"  {what} (fake Docker API), {len(mine)} events:")
            stage_rows(what + " (fake Docker API)", mine)
    finally:
        reg.stop(expect=None)
        reg.cleanup()
        fake.stop()
        etcd.cleanup()


# ---- 4: event storm ----

def bench_storm(rate=2000, seconds=10, pool=500):
    sock = os.path.join(tmpdir("rbf"), "d.sock")
    fake = FakeDocker(sock).start()
    ids = [fake.add(cid=make_id(f"storm-{i}")) for i in range(pool)]
    etcd = tmpfs_etcd()
    reg = Register("--etcd", etcd.url, "--docker", fake.host, "--metrics", "127.0.0.1:19367",
                   host_ip=IP).start()
    try:
        wait_for(lambda: "in sync" in reg.output(), 60)
        base = memory(reg.proc.pid)
        samples = []
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                try:
                    body = urllib.request.urlopen("http://127.0.0.1:19367/metrics", timeout=2).read().decode()
                    pend = [l for l in body.splitlines() if l.startswith("register_etcd_pending ")]
                    samples.append((memory(reg.proc.pid), float(pend[0].split()[1])))
                except Exception:
                    pass
                time.sleep(0.1)
        threading.Thread(target=sample, daemon=True).start()
        rng = random.Random(7)
        sent = 0
        t0 = time.time()
        tick = 0.01
        while time.time() - t0 < seconds:
            batch = []
            for _ in range(int(rate * tick)):
                cid = rng.choice(ids)
                running = fake.containers[cid]["State"]["Running"]
                fake.set_running(cid, not running)
                batch.append(fake.event("die" if running else "start", cid))
            fake.emit(*batch)
            sent += len(batch)
            next_t = t0 + tick * (sent / (rate * tick))
            time.sleep(max(0, next_t - time.time()))
        storm_secs = time.time() - t0
        t_end = time.time()
        want = {f"{PREFIX}/bbx/{c['Id']}" for c in fake.running()}
        wait_for(lambda: set(etcd.tree(PREFIX)) == want, 60, interval=0.02, what="convergence after the storm")
        converge = time.time() - t_end
        stop.set()
        top = None
        for m, _ in samples:
            top = mem_max(top, m)
        top = top or base
        max_pending = max(s[1] for s in samples) if samples else 0
        row = {"bench": "storm", "events": sent, "events_per_s": round(sent / storm_secs),
               "rss_anon_before_kb": base["rss_anon"]["daemon"], "rss_anon_max_kb": top["rss_anon"]["daemon"],
               "mem_before": base, "mem_max": top,
               "pending_max": int(max_pending), "converged_after_s": round(converge, 3)}
        out(f"  {sent} events in {storm_secs:.1f} s; pending max {int(max_pending)}; "
            f"converged {converge:.3f} s after")
        out(f"    before, daemon + worker: {mem_text(base)}")
        out(f"    max during, each alone:  {mem_text(top)}")
        RESULTS.append(row)
    finally:
        reg.stop(expect=None)
        reg.cleanup()
        fake.stop()
        etcd.cleanup()


# ---- 5: idle cost ----

def bench_idle(seconds=60):
    sock = os.path.join(tmpdir("rbf"), "d.sock")
    fake = FakeDocker(sock).start()
    for i in range(50):
        fake.add(cid=make_id(f"idle-{i}"))
    etcd = tmpfs_etcd()
    try:
        for extra in ([], ["--ttl", "60"]):
            reg = Register("--etcd", etcd.url, "--docker", fake.host, *extra, host_ip=IP).start()
            wait_for(lambda: "in sync" in reg.output(), 30)
            # two one-off timers follow a start: register trims memory 2 s
            # after the sync, and curl's connect timeout for the event
            # stream expires 5 s after it connected; idle begins after them
            time.sleep(6)
            wpid = worker_of(reg.proc.pid)
            cpu0, sw0 = cpu_and_switches(reg.proc.pid)
            wcpu0, wsw0 = cpu_and_switches(wpid) if wpid else (0, 0)
            time.sleep(seconds)
            cpu1, sw1 = cpu_and_switches(reg.proc.pid)
            wcpu1, wsw1 = cpu_and_switches(wpid) if wpid else (0, 0)
            mem = memory(reg.proc.pid)
            row = {"bench": "idle", "ttl": extra[1] if extra else "off", "seconds": seconds,
                   "cpu_s": round(cpu1 - cpu0, 3), "context_switches": sw1 - sw0,
                   "worker_cpu_s": round(wcpu1 - wcpu0, 3), "worker_context_switches": wsw1 - wsw0,
                   "rss_anon_kb": mem["rss_anon"]["daemon"], "vm_rss_kb": mem["vm_rss"]["daemon"],
                   "mem": mem}
            out(f"  idle, ttl {row['ttl']}: daemon {row['cpu_s']} s CPU, {row['context_switches']} context "
                f"switches; worker {row['worker_cpu_s']} s CPU, {row['worker_context_switches']} context switches")
            out(f"    daemon + worker: {mem_text(mem)}")
            RESULTS.append(row)
            reg.stop()
            reg.cleanup()
    finally:
        fake.stop()
        etcd.cleanup()


# ---- 6: traffic through haproxy ----

def bench_traffic():
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_traffic", os.path.join(HERE, "traffic.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = mod.run(os.path.join(BUILD, "register"), [])
    from trafficrig import table as traffic_table
    out(traffic_table(rows))
    for r in rows:
        RESULTS.append({"bench": "traffic", **r})


def mem_cell(m, fields=("rss_anon", "vm_rss", "pss")):
    """daemon + worker = together, in MB, for the table."""
    names = {"rss_anon": "RssAnon", "vm_rss": "VmRSS", "pss": "Pss"}
    return ", ".join(f"{names[k]} {mb(m[k]['daemon'])} + {mb(m[k]['worker'])} = **{mb(m[k]['sum'])}**"
                     for k in fields) + " MB (daemon + worker = together)"


def table():
    lines = ["| benchmark | result | target |", "|---|---|---|"]
    for r in RESULTS:
        if r["bench"] == "sync":
            res = (f"{r['api']}, {r['containers']} containers: {r['seconds']} s ({r['puts_per_s']} keys/s); "
                   f"registered: {mem_cell(r['mem'])}; at the end of the sync: "
                   f"{mem_cell(r['mem_at_sync'], ('rss_anon',))}; restart with nothing to write "
                   f"{r['restart_seconds']} s")
            if "cpu_s" in r:
                res += f"; CPU of the sync: daemon {r['cpu_s']} s + worker {r['worker_cpu_s']} s"
            if "ratio" in r:
                res += f"; limit client {r['limit_seconds']} s ({r['limit_concurrency']} in flight): ratio {r['ratio']}"
            tgt = "≤ 1.3× the limit; RssAnon ≤ " + ("8 MB" if r["containers"] <= 1000 else "16 MB")
        elif r["bench"] == "latency":
            res = f"{r['what']} ({r['n']}): p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, max {r['max_ms']} ms"
            tgt = "p99 < 10 ms"
        elif r["bench"] == "stages":
            st = "; ".join(f"{k.replace('_', ' ')} {v[0]}" for k, v in r["stages"].items())
            res = (f"{r['what']}, stage by stage (p50 ms, each from the stage before): {st}; register's own "
                   f"work p50 {r['own_p50_ms']} ms, p99 {r['own_p99_ms']} ms")
            if "plain_read_p50_ms" in r:
                res += (f"; a plain reader gets the event {r['plain_read_p50_ms']} ms after timeNano, register "
                        f"{r['read_after_plain_p50_ms']} ms after it")
            tgt = "own work p50 ≤ 0.3 ms"
        elif r["bench"] == "traffic":
            kinds = ", ".join(f"{k} {n}" for k, n in sorted(r["kinds"].items()))
            res = (f"{r['scenario']}: {r['requests']} requests, {r['failed']} failed"
                   + (f" ({kinds})" if kinds else "")
                   + (f", {r['failed_after']} after the check's window" if "failed_after" in r else "")
                   + f"; p50 {r['p50_ms'] or 0:.1f} ms, p99 {r['p99_ms'] or 0:.1f} ms"
                   + (f"; key → reload p50 {r['key_reload_p50_ms']:.0f} ms, p99 {r['key_reload_p99_ms']:.0f} ms"
                      f" ({len(r['key_reload_ms'])} events)" if r["key_reload_ms"] else "")
                   + f"; {r['note']}")
            tgt = ("0 failed (a failing check: 0 after fall × interval + 1 s); "
                   "key → reload p50 ≤ 100 ms, p99 ≤ 300 ms")
        elif r["bench"] == "failsafe":
            res = (f"{r['containers']} registered containers, restarted with a policy that fails on each: "
                   f"every evaluation failed after {r['seconds']} s (CPU daemon {r['cpu_s']} s + worker "
                   f"{r['worker_cpu_s']} s), every key kept")
            tgt = "every key kept; linear in the containers"
        elif r["bench"] == "storm":
            res = (f"{r['events']} events ({r['events_per_s']}/s): before: {mem_cell(r['mem_before'])}; "
                   f"max during: {mem_cell(r['mem_max'])}; pending max {r['pending_max']}, "
                   f"converged {r['converged_after_s']} s after")
            tgt = "bounded; converged ≤ 2 s"
        else:
            res = (f"ttl {r['ttl']}, {r['seconds']} s: daemon {r['cpu_s']} s CPU, {r['context_switches']} context "
                   f"switches; worker {r.get('worker_cpu_s', 0)} s CPU, {r.get('worker_context_switches', 0)} "
                   f"context switches; {mem_cell(r['mem'])}")
            tgt = "no CPU, no wakeups (ttl off); daemon RssAnon ≤ 1.8 MB; daemon + worker ≤ 4 MB"
        lines.append(f"| {r['bench']} | {res} | {tgt} |")
    return "\n".join(lines)


def on_sigterm(sig, frame):
    raise KeyboardInterrupt  # as ^C: the finally blocks clean up


def main():
    signal.signal(signal.SIGTERM, on_sigterm)
    which = sys.argv[1:] or ["sync", "failsafe", "latency", "storm", "idle", "traffic"]
    out("building", BUILD)
    build()
    if "sync" in which or "limit" in which:
        out("== start-up sync (and the limit client)")
        bench_sync(with_limit=True)
    if "sync10k" in which:
        out("== start-up sync of 10,000 containers")
        bench_sync(sizes=(10000,), with_limit=False)
    if "failsafe" in which:
        out("== restart with a policy that fails on every container")
        bench_failsafe()
    if "latency" in which:
        out("== event latency on a real dockerd")
        bench_latency()
    if "latency-fake" in which:
        out("== register's own work per event, with the fake Docker API")
        bench_latency_fake()
    if "storm" in which:
        out("== event storm")
        bench_storm()
    if "idle" in which:
        out("== idle cost")
        bench_idle()
    if "traffic" in which:
        out("== traffic through haproxy")
        bench_traffic()
    with open(os.environ.get("REGISTER_BENCH_RESULTS", os.path.join(BUILD, "bench-results.json")), "w") as f:
        json.dump(RESULTS, f, indent=1)
    print(table())
    # the runs' directories in /tmp (logs, sockets); a failure leaves them
    remove_tmpdirs()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""A fleet of register hosts on one etcd cluster: one command, prints a table.

    bench/fleet.py                          20 hosts x 5 containers, v2 and v3
    bench/fleet.py --hosts 500 --containers 20
    bench/fleet.py --api v3 --scenarios cold,steady,leader --ttl 10

Every host is a real `register` process with its own Docker API (all served
by one bench_fakedocker --fleet process, a socket per host) and HOST_IP
10.20.x.y.  etcd is a real 3-member cluster (the Debian etcd 3.4) on a
private test network that this script builds from network namespaces:

    <p>-sw   a bridge; every other namespace has a veth port on it
    <p>-m0..2   one etcd member each (10.213.0.10-12)
    <p>-h    the driver, the fake Docker and most hosts (10.213.0.2)
    <p>-p0..K   hosts that get cut off, one namespace each (10.213.1.k)

Neighbour entries are static, so setting a bridge port down silently drops
every packet of that namespace: connections hang (as on a real network)
instead of being refused.  Everything is removed at exit, also on Ctrl-C:
processes (everything left in the namespaces), namespaces (with their
veths), temporary directories.

Scenarios (--scenarios, in this order; each ends with a check that etcd
holds exactly what every host's Docker says, nothing stale or missing):
  cold      all hosts started at once: time until etcd is complete; RssAnon
  steady    etcd requests per host per second with nothing happening
  churn     containers started and stopped at --churn per second for 10 s
  leader    the etcd leader killed -9 with changes on 10% of the hosts
  member    one member (the leader) cut off with changes on 10% of the hosts
  outage    all members down --outage s with churn, then back: time after
            quorum returns; peak request rate at etcd against steady
  kill      some hosts killed -9: time until their keys are gone (TTL)
  partition the cut-off hosts partitioned 2 x TTL with changes, then healed
  reload    rolling SIGHUP of every host with a new key naming; a watcher
            checks make-before-break (no service ever has fewer backends
            than before), while some hosts are cut off midway

Needs root (namespaces), iproute2 and etcd-server.  Not a test: the timings
here are measurements; tests/integration/test_fleet.py runs a small fleet
and asserts only correctness (--json).
"""
import argparse
import base64
import http.client
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(SRC, "tests", "integration"))

from toolkit import Cluster, default_value, etcd_binary, v2_tree_index  # noqa: E402

ETCD_IPS = ["10.213.0.10", "10.213.0.11", "10.213.0.12"]
MAIN_IP = "10.213.0.2"
PREFIX = "/fleet"
IMAGES = [f"svc{i}" for i in range(10)]
ALL_SCENARIOS = ["cold", "steady", "churn", "leader", "member", "outage", "kill", "partition",
                 "reload"]


def out(*a):
    print(*a, file=sys.stderr, flush=True)


def sh(*args, check=True, input=None):
    r = subprocess.run(list(args), capture_output=True, text=True, input=input)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def host_ip(i):
    return f"10.20.{i // 250}.{i % 250 + 1}"


# ---------------------------------------------------------------------------
# the network (outer process, root namespace)
# ---------------------------------------------------------------------------

class Net:
    """The namespaces, the bridge and the veths; cleanup() removes them and
    kills whatever still runs inside."""

    def __init__(self, tag, nparts):
        self.tag = tag
        self.sw = f"{tag}-sw"
        # endpoint name -> (ip, mac)
        self.ends = {}
        for i, ip in enumerate(ETCD_IPS):
            self.ends[f"m{i}"] = (ip, "02:13:00:00:00:%02x" % (0x10 + i))
        self.ends["h"] = (MAIN_IP, "02:13:00:00:00:02")
        for k in range(nparts):
            self.ends[f"p{k}"] = (f"10.213.1.{k + 1}", "02:13:00:00:01:%02x" % (k + 1))
        self.made = []
        self.down = set()  # endpoints cut off now

    def ns(self, end):
        return f"{self.tag}-{end}"

    def setup(self):
        sh("ip", "netns", "add", self.sw)
        self.made.append(self.sw)
        sh("ip", "-n", self.sw, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.sw, "link", "set", "br0", "up")
        for end, (ip, mac) in self.ends.items():
            ns = self.ns(end)
            sh("ip", "netns", "add", ns)
            self.made.append(ns)
            # the veth is created inside the switch namespace, one end moved
            port = "v" + end
            batch = [f"link add {port} type veth peer name eth0 netns {ns}",
                     f"link set {port} master br0", f"link set {port} up"]
            sh("ip", "-n", self.sw, "-batch", "-", input="\n".join(batch) + "\n")
            batch = ["link set lo up", f"link set eth0 address {mac}",
                     f"addr add {ip}/16 dev eth0", "link set eth0 up"]
            for other, (oip, omac) in self.ends.items():
                if other != end:
                    batch.append(f"neigh replace {oip} lladdr {omac} dev eth0 nud permanent")
            sh("ip", "-n", ns, "-batch", "-", input="\n".join(batch) + "\n")

    def cut(self, end):
        sh("ip", "-n", self.sw, "link", "set", "v" + end, "down")
        self.down.add(end)

    def heal(self, end):
        sh("ip", "-n", self.sw, "link", "set", "v" + end, "up")
        self.down.discard(end)

    def cleanup(self):
        for ns in self.made:
            for _ in range(3):
                pids = sh("ip", "netns", "pids", ns, check=False).split()
                if not pids:
                    break
                for p in pids:
                    try:
                        os.kill(int(p), signal.SIGKILL)
                    except (ProcessLookupError, ValueError):
                        pass
                time.sleep(0.2)
        for ns in reversed(self.made):
            sh("ip", "netns", "del", ns, check=False)
        self.made = []


# ---------------------------------------------------------------------------
# etcd (the launcher is tests/integration/toolkit.py's, shared with the tests)
# ---------------------------------------------------------------------------

def etcd_cluster(net, base):
    """The 3 members, each in its own namespace (<p>-m<i>, ETCD_IPS) with
    etcd's own raft timings, metrics for Counter and room for big fleets."""
    return Cluster(len(ETCD_IPS), ips=ETCD_IPS, netns=[net.ns(f"m{i}") for i in range(len(ETCD_IPS))],
                   base=base, extra=["--metrics", "extensive", "--quota-backend-bytes", str(4 << 30)],
                   timing=None)


class Counter:
    """Client requests at etcd, summed over members, across restarts (a
    member's counters start at 0 again when it restarts)."""

    def __init__(self, cluster, api):
        self.cluster, self.api = cluster, api
        self.last = [0, 0, 0]
        self.total = 0
        self.lock = threading.Lock()

    def sample(self):
        with self.lock:
            for i, m in enumerate(self.cluster.members):
                v = m.requests(self.api)
                if v is None:
                    continue
                if v < self.last[i]:
                    self.last[i] = 0
                self.total += v - self.last[i]
                self.last[i] = v
            return self.total


# ---------------------------------------------------------------------------
# the fleet (inner process, in the <p>-h namespace)
# ---------------------------------------------------------------------------

POLICY = """-- bench/fleet.py: the default schema (register.default's records,
-- the one copy of it) under %(prefix)s, naming %(naming)r
local default = require "register.default"
local policy = {}
function policy.prefix(host)
  return "%(prefix)s/" .. host.ip
end
function policy.records(c, host)
  local out, from = {}, #default.prefix(host) + 2
  for k, v in pairs(default.records(c, host) or {}) do
    local image, id = k:sub(from):match("^(.*)/([^/]+)$")
    out[policy.prefix(host) .. "/" .. image .. "/%(naming)s" .. id] = v
  end
  return out
end
return policy
"""


def value_of(cid, image, port):
    """What the default schema writes for a fake container (one binding)."""
    return default_value(cid, image, [("0.0.0.0", port, 80, "tcp")])


class Fleet:
    def __init__(self, a, net, base):
        self.a = a
        self.net = net
        self.base = base
        self.api = a.api
        self.n = a.hosts
        self.nparts = net_parts(a)
        # hosts n - nparts .. n - 1 live in the cut-off namespaces
        self.part_hosts = list(range(self.n - self.nparts, self.n))
        self.cluster = etcd_cluster(net, os.path.join(base, "etcd"))
        self.truth = [dict() for _ in range(self.n)]  # host -> {cid: (image, port)}
        self.procs = [None] * self.n
        self.logs = [os.path.join(base, "logs", f"h{i}.log") for i in range(self.n)]
        os.makedirs(os.path.join(base, "logs"))
        self.naming = ""
        self.policy = os.path.join(base, "policy.lua")
        self.write_policy("")
        self.seq = 0
        self.lock = threading.Lock()
        self.rng = random.Random(1)
        self.fake = None
        self.counter = None
        self.results = []
        self.problems = []  # hosts that misbehaved (see problem())
        self.told = 0  # how many of them a result holds

    # ---- fake docker ----
    def start_fake(self):
        d = os.path.join(self.base, "docker")
        os.makedirs(d)
        self.sockdir = d
        self.fake = subprocess.Popen([self.a.fakedocker, "--fleet", d, str(self.n)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(os.path.join(self.base, "fakedocker.log"), "wb"),
                                     text=True, bufsize=1)
        assert self.fake.stdout.readline().strip() == "ready"

    def cmd(self, line):
        self.fake.stdin.write(line + "\n")

    def barrier(self):
        self.seq += 1
        tok = f"b{self.seq}"
        self.cmd("p " + tok)
        self.fake.stdin.flush()
        while True:
            line = self.fake.stdout.readline()
            if not line:
                raise RuntimeError("fakedocker died")
            if line.strip() == "p " + tok:
                return

    def add(self, h, image=None):
        with self.lock:
            self.seq += 1
            cid = "%064x" % random.Random(self.seq * 7919 + h).getrandbits(256)
            image = image or IMAGES[self.rng.randrange(len(IMAGES))]
            port = 20000 + self.seq % 40000
            self.truth[h][cid] = (image, port)
            self.cmd(f"a {h} {cid} {image} {port}")

    def remove(self, h, cid=None):
        with self.lock:
            if not self.truth[h]:
                return
            cid = cid or self.rng.choice(list(self.truth[h]))
            del self.truth[h][cid]
            self.cmd(f"d {h} {cid}")

    def change(self, h):
        """One container stopped, a new one started."""
        self.remove(h)
        self.add(h)

    # ---- policy ----
    def write_policy(self, naming):
        self.naming = naming
        tmp = self.policy + ".tmp"
        with open(tmp, "w") as f:
            f.write(POLICY % {"prefix": PREFIX, "naming": naming})
        os.replace(tmp, self.policy)

    # ---- hosts ----
    def start_host(self, h):
        args = [self.a.register, "--host-ip", host_ip(h), "--etcd", self.cluster.endpoints(),
                "--etcd-api", self.api, "--ttl", str(self.a.ttl),
                "--docker", f"unix://{self.sockdir}/h{h}.sock", "--policy", self.policy,
                "--log-level", self.a.log_level]
        if h in self.part_hosts:
            args = ["ip", "netns", "exec", self.net.ns(f"p{self.part_hosts.index(h)}")] + args
        env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_HOST", "ETCD_ENDPOINT")}
        self.procs[h] = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                         stderr=open(self.logs[h], "ab"), env=env)

    def stop_host(self, h, sig=signal.SIGKILL):
        p = self.procs[h]
        if p and p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                # a stopped loop: say where it is, then kill it
                self.problem(h, f"did not exit within 10 s of signal {sig}")
                p.kill()
                p.wait()
        self.procs[h] = None

    def problem(self, h, what):
        """A host misbehaved: say so with its log's tail and, if it runs,
        its state and stack; the run fails."""
        p = self.procs[h]
        lines = [f"host h{h} ({host_ip(h)}): {what}"]
        try:
            lines += ["  log: " + l for l in open(self.logs[h], errors="replace").read().splitlines()[-8:]]
        except OSError:
            pass
        if p and p.poll() is None:
            try:
                st = open(f"/proc/{p.pid}/stat").read().rsplit(")", 1)[1].split()
                lines.append(f"  pid {p.pid} state {st[0]} utime {st[11]} stime {st[12]} "
                             f"wchan {open(f'/proc/{p.pid}/wchan').read()}")
            except OSError:
                pass
            if shutil.which("gdb"):
                try:
                    bt = subprocess.run(["gdb", "-p", str(p.pid), "-batch", "-ex", "thread apply all bt"],
                                        capture_output=True, text=True, timeout=60).stdout
                    lines += ["  " + l for l in bt.splitlines() if l.startswith(("#", "Thread"))]
                except subprocess.TimeoutExpired:
                    lines.append("  (gdb took over 60 s)")
        elif p:
            lines.append(f"  exited with {p.returncode}")
        out("\n".join(lines))
        self.problems.append(f"h{h}: {what}")

    def check_hosts(self):
        """Every host that should run still runs."""
        for h, p in enumerate(self.procs):
            if p and p.poll() is not None:
                self.problem(h, "exited on its own")
                self.procs[h] = None

    def per_host(self, name, parse):
        """parse(text of /proc/PID/name) for every running host."""
        vals = []
        for p in self.procs:
            if p and p.poll() is None:
                try:
                    with open(f"/proc/{p.pid}/{name}") as f:
                        vals.append(parse(f.read()))
                except (OSError, ValueError, IndexError):
                    pass
        return vals

    def rss_anon(self):
        return self.per_host("status", lambda t: int(t.split("RssAnon:", 1)[1].split()[0]))

    def cpu_seconds(self):
        """utime + stime of every running host."""
        def parse(t):
            fields = t.rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return self.per_host("stat", parse)

    # ---- what etcd holds ----
    def expected(self, hosts=None):
        want = {}
        with self.lock:
            for h in (range(self.n) if hosts is None else hosts):
                ip = host_ip(h)
                for cid, (image, port) in self.truth[h].items():
                    want[f"{PREFIX}/{ip}/{image}/{self.naming}{cid}"] = value_of(cid, image, port)
        return want

    def first_answer(self, read):
        """read(member) from the first member that answers, or None."""
        for m in self.cluster.members:
            if not m.proc or m.name in self.net.down:
                continue
            try:
                return read(m)
            except Exception:
                continue
        return None

    def etcd_state(self):
        """{key: value} under PREFIX from the first member that answers."""
        # a short timeout: a member without a leader never answers a
        # (linearizable) read, and that must not count as register's time
        if self.api == "v3":
            return self.first_answer(lambda m: v3_range(m.url, PREFIX + "/",
                                                        timeout=2 if self.n <= 100 else 5)[0])
        return self.first_answer(lambda m: v2_tree(m.url, PREFIX))

    def diff(self, hosts=None):
        """(stale, missing): keys etcd has but should not (or with a wrong
        value), keys it lacks."""
        have = self.etcd_state()
        if have is None:
            return None, None
        want = self.expected(hosts)
        if hosts is not None:
            ips = {host_ip(h) for h in hosts}
            have = {k: v for k, v in have.items() if k.split("/")[2] in ips}
        stale = sum(1 for k, v in have.items() if want.get(k) != v)
        missing = sum(1 for k in want if k not in have)
        return stale, missing

    def converge(self, t0, timeout, hosts=None):
        """Seconds from t0 until etcd equals the truth, or None; and the last
        (stale, missing)."""
        deadline = time.time() + timeout
        sm = (None, None)
        while time.time() < deadline:
            # the time the read was sent: etcd answers with its state then;
            # reading and comparing 10,000 keys here takes a few 100 ms of
            # the CPU the hosts share, so v3 first counts the keys (cheap)
            # and reads them all only when the count is right
            t = time.time()
            if hosts is None and self.api == "v3" and self.key_count() not in (None, len(self.expected())):
                time.sleep(0.05)
                continue
            sm = self.diff(hosts)
            if sm == (0, 0):
                return t - t0, sm
            time.sleep(0.1)
        if sm == (None, None) or hosts is None:
            sm = self.diff(hosts)
        return None, sm

    def name_off_hosts(self):
        """After a scenario that did not converge: which hosts are off."""
        have = self.etcd_state()
        if have is None:
            out(f"[{self.api}] no member answers a read")
            return
        want = self.expected()
        off = {}
        for k in set(have) | set(want):
            if have.get(k) != want.get(k):
                ip = k.split("/")[2]
                off[ip] = off.get(ip, 0) + 1
        for h in range(self.n):
            if host_ip(h) in off and self.procs[h]:
                self.problem(h, f"{off[host_ip(h)]} keys off after the scenario")

    def key_count(self):
        """The number of keys under PREFIX (v3), or None."""
        return self.first_answer(lambda m: v3_range(m.url, PREFIX + "/", timeout=2, count_only=True)[0])

    def record(self, name, conv, sm, note="", **extra):
        stale, missing = sm
        self.check_hosts()
        if conv is None:
            self.name_off_hosts()
        r = {"api": self.api, "scenario": name, "seconds": conv, "stale": stale,
             "missing": missing, "note": note, "problems": self.problems[self.told:]}
        self.told = len(self.problems)
        r.update(extra)
        self.results.append(r)
        out(f"[{self.api}] {name}: {fmt_s(conv)}  stale={stale} missing={missing}  {note}")
        return r

    def settle(self, timeout=60):
        """Before a scenario: everything converged (checked, recorded if not)."""
        self.barrier()
        conv, sm = self.converge(time.time(), timeout)
        if conv is None:
            out(f"[{self.api}] WARNING: not converged before the next scenario: {sm}")
        return conv

    # ---- scenarios ----
    def sc_cold(self):
        for h in range(self.n):
            for _ in range(self.a.containers):
                self.add(h)
        self.barrier()
        t0 = time.time()
        for h in range(self.n):
            self.start_host(h)
        spawn = time.time() - t0
        conv, sm = self.converge(t0, 120 + self.n * 0.2)
        rss = self.rss_anon()
        cpu = self.cpu_seconds()
        rss_note = (f"RssAnon mean {sum(rss) / max(1, len(rss)) / 1024:.2f} MB, max {max(rss or [0]) / 1024:.2f} MB; "
                    f"CPU per host {1000 * sum(cpu) / max(1, len(cpu)):.0f} ms (start-up and sync)")
        st = self.start_to_sync()
        st_note = (f"; each host's own start to in sync: median {st[len(st) // 2]:.2f} s, max {st[-1]:.2f} s"
                   if st else "")
        self.record("cold", conv, sm, f"spawning took {spawn:.1f}s; {rss_note}{st_note}",
                    rss_mean_kb=sum(rss) / max(1, len(rss)), rss_max_kb=max(rss or [0]),
                    spawn=spawn, cpu_mean_s=sum(cpu) / max(1, len(cpu)), start_to_sync=st)

    def steady_rate(self, secs):
        c0 = self.counter.sample()
        time.sleep(secs)
        c1 = self.counter.sample()
        return (c1 - c0) / secs

    def sc_steady(self):
        self.settle()
        secs = max(10.0, 2 * self.a.ttl)
        rate = self.steady_rate(secs)
        per_host = rate / self.n
        bound = 3.0 / self.a.ttl
        self.steady = rate
        self.record("steady", None, self.diff(),
                    f"{rate:.1f} req/s at etcd = {per_host:.3f} per host per s "
                    f"({per_host * self.a.ttl / 3:.2f} per host per TTL/3) over {secs:.0f}s",
                    rate=rate, per_host=per_host, per_host_per_ttl3=per_host * self.a.ttl / 3)

    def churn(self, secs, rate, hosts=None, stop=None):
        hosts = list(range(self.n)) if hosts is None else hosts
        end = time.time() + secs
        n = 0
        t0 = time.time()
        while time.time() < end and not (stop and stop.is_set()):
            self.change(self.rng.choice(hosts))
            n += 1
            self.fake.stdin.flush()
            ahead = t0 + n / rate - time.time()
            if ahead > 0:
                time.sleep(ahead)
        self.fake.stdin.flush()
        return n

    def sc_churn(self):
        self.settle()
        n = self.churn(10, self.a.churn)
        self.barrier()
        t0 = time.time()
        conv, sm = self.converge(t0, 60)
        self.record("churn", conv, sm, f"{n} changes in 10s ({self.a.churn}/s), time after the last")

    def changes_on_some(self, frac=0.1):
        hosts = self.rng.sample(range(self.n), max(1, int(self.n * frac)))
        for h in hosts:
            self.change(h)
        self.barrier()
        return hosts

    def new_leader_after(self, t0, gone, timeout=30):
        """Seconds from t0 until a member other than gone leads (etcd's own
        election, polled every 20 ms), or None."""
        while time.time() - t0 < timeout:
            for m in self.cluster.members:
                if m is not gone and m.proc and m.is_leader():
                    return time.time() - t0
            time.sleep(0.02)
        return None

    def start_to_sync(self):
        """Per host, seconds from its first log line (its start) to its
        first "in sync" line."""
        res = []
        for h in range(self.n):
            try:
                lines = open(self.logs[h], errors="replace").read().splitlines()
                synced = [l for l in lines if " in sync" in l]
                if lines and synced:
                    res.append(log_time(synced[0]) - log_time(lines[0]))
            except (OSError, ValueError, IndexError):
                pass
        return sorted(res)

    def writes_after(self, hosts, t0):
        """For each host, seconds from t0 to the last write its log shows
        (registered/removed lines, millisecond timestamps)."""
        res = []
        for h in hosts:
            last = None
            try:
                for line in open(self.logs[h], errors="replace"):
                    if " registered " not in line and " removed " not in line:
                        continue
                    t = log_time(line)
                    if t >= t0:
                        last = t - t0
            except (OSError, ValueError, IndexError):
                pass
            if last is not None:
                res.append(last)
        return sorted(res)

    def sc_leader(self):
        self.settle()
        leader = self.cluster.leader()
        t0 = time.time()
        leader.kill()
        hosts = self.changes_on_some()
        elected = self.new_leader_after(t0, leader)
        conv, sm = self.converge(t0, 60)
        w = self.writes_after(hosts, t0)
        wnote = (f"; the changed hosts' last writes (their logs): median {w[len(w) // 2]:.2f} s, "
                 f"slowest {w[-1]:.2f} s" if w else "")
        self.record("leader", conv, sm, f"killed {leader.name}; new leader after {fmt_s(elected)}; "
                    f"changes on {len(hosts)} hosts; time after the kill{wnote}",
                    elected=elected, host_writes=w)
        leader.start(wait=False)
        self.cluster.wait_healthy()

    def sc_member(self):
        self.settle()
        m = self.cluster.leader()
        t0 = time.time()
        self.net.cut(m.name)
        hosts = self.changes_on_some()
        conv, sm = self.converge(t0, 60)
        self.record("member", conv, sm, f"cut off {m.name} (the leader); changes on {len(hosts)} hosts; time after the cut")
        self.net.heal(m.name)
        self.cluster.wait_healthy()
        time.sleep(1)

    def sc_outage(self):
        self.settle()
        if not getattr(self, "steady", None):
            self.steady = self.steady_rate(max(6.0, self.a.ttl))
        self.cluster.kill()
        n = self.churn(self.a.outage, max(1.0, self.a.churn / 4))
        self.barrier()
        self.cluster.start(quorum=True)
        t0 = time.time()
        # the request rate at etcd, sampled every 0.5 s while converging
        peak, done = [0.0], threading.Event()

        def sampler():
            last = self.counter.sample()
            while not done.is_set():
                time.sleep(0.5)
                cur = self.counter.sample()
                peak[0] = max(peak[0], (cur - last) / 0.5)
                last = cur
        t = threading.Thread(target=sampler, daemon=True)
        t.start()
        conv, sm = self.converge(t0, 120)
        time.sleep(2)
        done.set()
        t.join()
        self.record("outage", conv, sm,
                    f"all members down {self.a.outage:.0f}s with {n} changes; time after quorum; "
                    f"peak {peak[0]:.0f} req/s at etcd = {peak[0] / max(self.steady, 0.1):.0f}x steady "
                    f"({self.steady:.1f}/s)", peak=peak[0], steady=self.steady)

    def sc_kill(self):
        self.settle()
        main = [h for h in range(self.n) if h not in self.part_hosts]
        victims = self.rng.sample(main, max(2, self.n // 100))
        t0 = time.time()
        for h in victims:
            self.stop_host(h)
        saved = {}
        with self.lock:
            for h in victims:
                saved[h] = self.truth[h]
                self.truth[h] = {}
        conv, sm = self.converge(t0, self.a.ttl * 3 + 10)
        self.record("kill", conv, sm, f"{len(victims)} hosts killed -9; time until their keys are gone (TTL {self.a.ttl}s)")
        with self.lock:
            for h in victims:
                self.truth[h] = saved[h]
        for h in victims:
            self.start_host(h)

    def sc_partition(self):
        self.settle()
        ends = [f"p{k}" for k in range(self.nparts)]
        for e in ends:
            self.net.cut(e)
        t_cut = time.time()
        # changes on the cut-off hosts meanwhile
        for h in self.part_hosts:
            self.change(h)
        self.barrier()
        # their keys must expire (TTL): check the others stay exact meanwhile
        others = [h for h in range(self.n) if h not in self.part_hosts]
        time.sleep(max(0.0, 2 * self.a.ttl - (time.time() - t_cut)))
        st = self.etcd_state() or {}
        ips = {host_ip(h) for h in self.part_hosts}
        left = sum(1 for k in st if k.split("/")[2] in ips)
        sm_others = self.diff(others)
        for e in ends:
            self.net.heal(e)
        t0 = time.time()
        conv, sm = self.converge(t0, 60)
        self.record("partition", conv, sm,
                    f"{len(ends)} hosts cut off {2 * self.a.ttl}s; their keys left at the end of it: {left}; "
                    f"others meanwhile stale/missing {sm_others}; time after the heal",
                    left_during=left, others_during=list(sm_others))
        if sm_others != (0, 0):
            self.results[-1]["stale"] = (sm[0] or 0) + (sm_others[0] or 0)
            self.results[-1]["missing"] = (sm[1] or 0) + (sm_others[1] or 0)

    def sc_reload(self):
        self.settle()
        w = Watcher(self)
        w.start()
        old = self.naming
        self.write_policy("n2-" if old == "" else "")
        order = list(range(self.n))
        spacing = min(0.05, 10.0 / self.n)
        t0 = time.time()
        cut = []
        for h in order:
            self.procs[h].send_signal(signal.SIGHUP)
            if h in self.part_hosts[: max(1, self.nparts // 2)]:
                # its writes fail midway: cut off a moment after the SIGHUP
                time.sleep(0.005)
                e = f"p{self.part_hosts.index(h)}"
                self.net.cut(e)
                cut.append((e, time.time()))
            time.sleep(spacing)
            for e, t in list(cut):
                if time.time() - t > self.a.ttl / 3:
                    self.net.heal(e)
                    cut.remove((e, t))
        while cut:
            e, t = cut[0]
            time.sleep(max(0.0, t + self.a.ttl / 3 - time.time()))
            self.net.heal(e)
            cut.pop(0)
        conv, sm = self.converge(t0, 120)
        time.sleep(0.5)
        w.stop()
        self.record("reload", conv, sm,
                    f"rolling SIGHUP every {spacing * 1000:.0f}ms, new key naming, "
                    f"{max(1, self.nparts // 2)} hosts cut off midway for TTL/3; "
                    f"watcher: {w.events} events, {len(w.violations)} make-before-break violations "
                    f"{w.violations[:3]}",
                    violations=len(w.violations), watch_events=w.events, watch_error=w.error)
        if w.violations or w.error:
            self.results[-1]["stale"] = (self.results[-1]["stale"] or 0) + len(w.violations) + (1 if w.error else 0)

    def run(self):
        self.start_fake()
        self.cluster.start(quorum=True)
        self.counter = Counter(self.cluster, self.api)
        scen = self.a.scenarios
        if "cold" not in scen:
            scen = ["cold"] + scen
        for s in scen:
            getattr(self, "sc_" + s)()
        for h in range(self.n):
            self.stop_host(h, signal.SIGTERM)
        if self.results:  # a host that would not stop fails the last one
            self.results[-1]["problems"] += self.problems[self.told:]
        self.cluster.kill()
        self.fake.stdin.close()
        self.fake.wait()
        return self.results


def net_parts(a):
    return min(10, max(2, a.hosts // 50))


def log_time(line):
    """The time of a register log line (text format, UTC, milliseconds)."""
    import datetime
    t = datetime.datetime.strptime(line.split()[0], "%Y-%m-%dT%H:%M:%S.%fZ")
    return t.replace(tzinfo=datetime.timezone.utc).timestamp()


def fmt_s(v):
    return "-" if v is None else f"{v:.2f}s"


# ---- etcd reads ----

def b64(s):
    return base64.b64encode(s.encode()).decode()


def v3_range(url, prefix, timeout=10, count_only=False):
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    # serializable: the member's own committed state, answered without a
    # leader (a linearizable read hangs while there is none)
    req = {"key": b64(prefix), "range_end": b64(end), "serializable": True}
    if count_only:
        req["count_only"] = True
    with urllib.request.urlopen(urllib.request.Request(url + "/v3/kv/range", data=json.dumps(req).encode()),
                                timeout=timeout) as r:
        doc = json.loads(r.read())
    if count_only:
        return int(doc.get("count", 0)), int(doc["header"]["revision"])
    kv = {base64.b64decode(x["key"]).decode(): base64.b64decode(x.get("value", "")).decode()
          for x in doc.get("kvs", [])}
    return kv, int(doc["header"]["revision"])


def v2_tree(url, prefix):
    tree, index = v2_tree_index(url, prefix, timeout=10)
    if index is not None:
        res_index[url] = index
    return tree


res_index = {}


class Watcher:
    """A consumer watching PREFIX: a service (the image) must never have
    fewer backends (keys, across all hosts) than when the watch began.  v3:
    one watch stream, checked at every revision (a transaction's events come
    together); v2: the stream=true long poll, checked after every event."""

    def __init__(self, fleet):
        self.f = fleet
        self.events = 0
        self.violations = []
        self.error = None
        self.stopping = False
        self.conn = None

    def count(self, keys):
        c = {}
        for k in keys:
            svc = k.split("/")[3]
            c[svc] = c.get(svc, 0) + 1
        return c

    def start(self):
        # a member that serves now: a restarted one may not yet
        deadline = time.time() + 30
        while True:
            m = next((m for m in self.f.cluster.members if m.proc and m.healthy()), None)
            if m or time.time() > deadline:
                break
            time.sleep(0.1)
        if m is None:
            raise RuntimeError("watcher: no etcd member answers")
        self.url = m.url
        if self.f.api == "v3":
            self.keys, rev = v3_range(m.url, PREFIX + "/")
            self.start_rev = rev + 1
        else:
            self.keys = v2_tree(m.url, PREFIX)
            self.start_rev = res_index[m.url] + 1
        self.keys = set(self.keys)
        self.base = self.count(self.keys)
        self.cur = dict(self.base)
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()
        time.sleep(0.3)

    def check(self, svcs):
        for s in svcs:
            if self.cur.get(s, 0) < self.base.get(s, 0):
                self.violations.append((s, self.cur.get(s, 0), self.base.get(s, 0)))

    def apply(self, kind, key):
        svc = key.split("/")[3] if key.count("/") >= 4 else None
        if svc is None:
            return None
        if kind == "put":
            if key not in self.keys:
                self.keys.add(key)
                self.cur[svc] = self.cur.get(svc, 0) + 1
        elif key in self.keys:
            self.keys.discard(key)
            self.cur[svc] -= 1
        self.events += 1
        return svc

    def run(self):
        host, port = self.url[len("http://"):].split(":")
        try:
            self.conn = http.client.HTTPConnection(host, int(port), timeout=3600)
            if self.f.api == "v3":
                end = PREFIX + "0"
                body = json.dumps({"create_request": {"key": b64(PREFIX + "/"), "range_end": b64(end),
                                                      "start_revision": self.start_rev}})
                self.conn.request("POST", "/v3/watch", body=body)
                for doc in self.stream(self.conn.getresponse()):
                    evs = doc.get("result", {}).get("events", [])
                    # group by revision: a transaction is one revision
                    byrev = {}
                    for ev in evs:
                        byrev.setdefault(int(ev["kv"].get("mod_revision", 0)), []).append(ev)
                    for rev in sorted(byrev):
                        touched = set()
                        for ev in byrev[rev]:
                            k = base64.b64decode(ev["kv"]["key"]).decode()
                            s = self.apply("del" if ev.get("type") == "DELETE" else "put", k)
                            if s:
                                touched.add(s)
                        self.check(touched)
            else:
                self.conn.request("GET", f"/v2/keys{PREFIX}?wait=true&recursive=true&stream=true"
                                  f"&waitIndex={self.start_rev}")
                for doc in self.stream(self.conn.getresponse()):
                    if "errorCode" in doc:
                        raise RuntimeError(f"v2 watch: {doc}")
                    act = doc.get("action")
                    k = doc.get("node", {}).get("key", "")
                    kind = "put" if act in ("set", "create", "update", "compareAndSwap") else (
                        "del" if act in ("delete", "expire", "compareAndDelete") else None)
                    if kind and not doc.get("node", {}).get("dir"):
                        s = self.apply(kind, k)
                        if s:
                            self.check([s])
        except Exception as e:
            if not self.stopping:
                self.error = f"{type(e).__name__}: {e}"

    def stream(self, r):
        """The JSON documents of a streamed watch reply, as they come."""
        dec = json.JSONDecoder()
        buf = ""
        while not self.stopping:
            chunk = r.read1(65536).decode()
            if not chunk:
                return
            buf += chunk
            while True:
                buf = buf.lstrip()
                try:
                    doc, idx = dec.raw_decode(buf)
                except ValueError:
                    break
                buf = buf[idx:]
                yield doc

    def stop(self):
        self.stopping = True
        try:
            self.conn.sock.shutdown(2)
        except Exception:
            pass
        self.t.join(5)


# ---------------------------------------------------------------------------
# table and main
# ---------------------------------------------------------------------------

def machine():
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1]) // 1024
    ver = sh("etcd", "--version", check=False).splitlines()
    return (f"{platform.node()}: {os.cpu_count()} x {cpu}, {mem} MB, Linux {platform.release()}, "
            f"{ver[0] if ver else 'etcd ?'}, load {os.getloadavg()[0]:.2f}")


TARGETS = {"cold": "<= 15 s (500 hosts)", "leader": "<= 2 s", "outage": "<= 5 s",
           "kill": "<= TTL + 1 s", "partition": "<= 2 s", "member": "", "churn": "", "reload": "",
           "steady": "v3: <= 1 per host per TTL/3"}


def table(results, a, load_before, load_after):
    lines = ["", "register fleet benchmark", "machine: " + machine(),
             "command: " + " ".join(sys.argv),
             f"fleet: {a.hosts} hosts x {a.containers} containers, TTL {a.ttl}s, etcd 3 members on "
             f"tmpfs, load average {load_before:.2f} before, {load_after:.2f} after", "",
             "| api | scenario | converged after | stale | missing | target | notes |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['api']} | {r['scenario']} | {fmt_s(r['seconds'])} | {r['stale']} | "
                     f"{r['missing']} | {TARGETS.get(r['scenario'], '')} | {r['note']}"
                     + "".join(f"; **{x}**" for x in r.get("problems", [])) + " |")
    return "\n".join(lines)


def inner(a):
    net = Net(a.tag, net_parts(a))
    results = []
    for api in a.apis:
        a.api = api
        base = tempfile.mkdtemp(prefix=f"fleet-{api}-", dir=a.base)
        f = Fleet(a, net, base)
        try:
            results += f.run()
        finally:
            for h in range(f.n):
                try:
                    f.stop_host(h)
                except Exception:
                    pass
            f.cluster.kill()
            if f.fake and f.fake.poll() is None:
                f.fake.kill()
        for e in net.ends:  # every port up again for the next run
            net.heal(e)
    with open(a.results, "w") as fh:
        json.dump(results, fh)


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hosts", type=int, default=20)
    p.add_argument("--containers", type=int, default=5)
    p.add_argument("--api", default="v2,v3", help="v2, v3 or v2,v3")
    p.add_argument("--ttl", type=int, default=10)
    p.add_argument("--churn", type=float, default=20.0, help="changes per second in 'churn'")
    p.add_argument("--outage", type=float, default=30.0, help="seconds all members are down")
    p.add_argument("--scenarios", default=",".join(ALL_SCENARIOS))
    p.add_argument("--json", help="write the results here too")
    p.add_argument("--log-level", default="info")
    p.add_argument("--register", default=os.environ.get("REGISTER_BIN",
                                                        os.path.join(SRC, "build", "register")))
    p.add_argument("--fakedocker")
    p.add_argument("--chaos", type=float, metavar="SECONDS", help="a seeded chaos run instead (bench/chaos.py)")
    p.add_argument("--seed", type=int, help="--chaos: the seed (drawn at random if not given)")
    p.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tag", help=argparse.SUPPRESS)
    p.add_argument("--base", help=argparse.SUPPRESS)
    p.add_argument("--results", help=argparse.SUPPRESS)
    a = p.parse_args()
    a.apis = a.api.split(",")
    a.scenarios = [s for s in a.scenarios.split(",") if s]
    for s in a.scenarios:
        if s not in ALL_SCENARIOS:
            p.error(f"unknown scenario {s}")
    a.register = os.path.abspath(a.register)
    if not a.fakedocker:
        a.fakedocker = os.path.join(os.path.dirname(a.register), "bench", "bench_fakedocker")
    return a


def main():
    a = parse()
    if a.chaos is not None:
        import chaos
        return chaos.main(a)
    if a.inner:
        inner(a)
        return 0
    if os.geteuid() != 0:
        out("fleet: needs root (network namespaces)")
        return 77
    for exe in (a.register, a.fakedocker):
        if not os.access(exe, os.X_OK):
            out(f"fleet: {exe} missing (build it: cmake --build build)")
            return 2
    if not shutil.which(etcd_binary()):
        out("fleet: etcd missing (Debian etcd-server)")
        return 77
    tag = f"rf{os.getpid() % 100000}"
    base = tempfile.mkdtemp(prefix="fleet-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    net = Net(tag, net_parts(a))
    results_path = os.path.join(base, "results.json")
    child = None

    def on_signal(sig, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_signal)
    load_before = os.getloadavg()[0]
    try:
        net.setup()
        argv = [x for x in sys.argv[1:]]
        child = subprocess.Popen(["ip", "netns", "exec", net.ns("h"), sys.executable, os.path.abspath(__file__),
                                  *argv, "--inner", "--tag", tag, "--base", base, "--results",
                                  results_path, "--register", a.register, "--fakedocker", a.fakedocker])
        rc = child.wait()
        if rc != 0 or not os.path.exists(results_path):
            out(f"fleet: the run failed ({rc})")
            return 1
        results = json.load(open(results_path))
    except KeyboardInterrupt:
        out("fleet: interrupted; cleaning up")
        return 130
    finally:
        if child and child.poll() is None:
            child.send_signal(signal.SIGINT)
            try:
                child.wait(5)
            except subprocess.TimeoutExpired:
                child.kill()
        net.cleanup()
        if os.environ.get("FLEET_KEEP"):
            out("fleet: logs kept in", base)
        else:
            shutil.rmtree(base, ignore_errors=True)
    print(table(results, a, load_before, os.getloadavg()[0]))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(results, fh, indent=1)
    bad = [r for r in results if r["stale"] != 0 or r["missing"] != 0 or r.get("problems")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

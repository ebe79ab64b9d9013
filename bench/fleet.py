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
  policy    the fleet's policy in etcd (register policy): revision 1 (the
            naming in use) to all, then with the watcher running: revision 2
            (a new key naming) to a 10% canary (--policy-canary; FNV-1a
            buckets, computed here too), promote, a broken revision 3 to
            all (every host must refuse it and keep its keys), rollback,
            and `register policy status --json` checked against every
            host's own report; a row per step.  With this scenario every
            host runs with --policy-key, --policy-pubkey (a key pair made
            in the run's directory; every revision signed) and a
            --state-dir of its own from its start, through the scenarios
            before it; with reload in the run too (SIGHUP then reads the
            key again, not the file) they start without and are restarted
            with them first

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
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(SRC, "tests", "integration"))

from toolkit import (Cluster, default_value, etcd_binary, run_netns_mounted, run_netns_unmount,  # noqa: E402
                     v2_tree_index)

ETCD_IPS = ["10.213.0.10", "10.213.0.11", "10.213.0.12"]
# --etcd-faults (chaos.py's member_replace): namespaces m3, m4 ready for a
# member that replaces one of the three at a new address
SPARE_IPS = ["10.213.0.13", "10.213.0.14"]
MAIN_IP = "10.213.0.2"
PREFIX = "/fleet"
IMAGES = [f"svc{i}" for i in range(10)]
ALL_SCENARIOS = ["cold", "steady", "churn", "leader", "member", "outage", "kill", "partition",
                 "reload", "policy"]
# the fleet's policy in etcd (scenario policy): outside PREFIX, so that the
# hosts' reports (POLICY_KEY's sibling status/) are not theirs to check
POLICY_KEY = "/fleetpolicy/policy"
POLICY_STATUS = "/fleetpolicy/status/"


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

    def __init__(self, tag, nparts, spares=0):
        self.tag = tag
        self.sw = f"{tag}-sw"
        # endpoint name -> (ip, mac)
        self.ends = {}
        for i, ip in enumerate(ETCD_IPS + SPARE_IPS[:spares]):
            self.ends[f"m{i}"] = (ip, "02:13:00:00:00:%02x" % (0x10 + i))
        self.ends["h"] = (MAIN_IP, "02:13:00:00:00:02")
        for k in range(nparts):
            self.ends[f"p{k}"] = (f"10.213.1.{k + 1}", "02:13:00:00:01:%02x" % (k + 1))
        self.made = []
        self.run_netns_mounted = True  # until setup() knows better
        self.down = set()  # endpoints cut off now

    def ns(self, end):
        return f"{self.tag}-{end}"

    def setup(self):
        self.run_netns_mounted = run_netns_mounted()
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
        made = bool(self.made)
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
        # `ip netns add` bind-mounts /run/netns on itself the first time
        # (to make it shared); once the last namespace is gone that mount
        # is left behind: undone when this run made it and nothing else
        # uses it now
        if made:
            run_netns_unmount(self.run_netns_mounted)


# ---------------------------------------------------------------------------
# etcd (the launcher is tests/integration/toolkit.py's, shared with the tests)
# ---------------------------------------------------------------------------

def etcd_cluster(net, base, extra=None, tls=None):
    """The 3 members, each in its own namespace (<p>-m<i>, ETCD_IPS) with
    etcd's own raft timings, metrics for Counter and room for big fleets
    (extra: other flags instead of that room: chaos.py --etcd-faults;
    tls: toolkit's TLS files, https with client certificates required,
    and this script's requests then go with client_tls())."""
    if extra is None:
        extra = ["--quota-backend-bytes", str(4 << 30)]
    return Cluster(len(ETCD_IPS), ips=ETCD_IPS, netns=[net.ns(f"m{i}") for i in range(len(ETCD_IPS))],
                   base=base, extra=["--metrics", "extensive"] + list(extra), timing=None, tls=tls)


# this script's TLS context for https:// members (chaos.py --etcd-faults
# sets it up: the run's CA and a client certificate of its own)
CLIENT_TLS = None


def client_tls(url):
    """The ssl context for a request to url: CLIENT_TLS for https, else None."""
    return CLIENT_TLS if url.startswith("https:") else None


def etcd_conn(url, timeout):
    """An http.client connection to the member at url (http or https)."""
    u = urllib.parse.urlsplit(url)
    if u.scheme == "https":
        return http.client.HTTPSConnection(u.hostname, u.port, timeout=timeout, context=client_tls(url))
    return http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)


class V3Auth:
    """A user's token for the v3 JSON gateway (etcd with auth on): asked
    for at first use, per member (a simple token is one member's), and
    again when a request with it is refused (a JWT made old by an auth
    change, a member restarted).  headers(url) for a request."""

    def __init__(self, user, password):
        self.user, self.password = user, password
        self.tokens = {}
        self.lock = threading.Lock()

    def headers(self, url, fresh=False):
        with self.lock:
            if fresh or url not in self.tokens:
                body = json.dumps({"name": self.user, "password": self.password}).encode()
                with urllib.request.urlopen(urllib.request.Request(url + "/v3/auth/authenticate", data=body),
                                            timeout=5, context=client_tls(url)) as r:
                    self.tokens[url] = json.loads(r.read())["token"]
            return {"Authorization": self.tokens[url]}


def v3_post(url, path, req, timeout=10, auth=None):
    """POST req (a dict) to the v3 gateway at url; the answer's document.
    With auth (V3Auth) a refused token is renewed and the request sent
    once more."""
    data = json.dumps(req).encode()
    for fresh in (False, True):
        headers = auth.headers(url, fresh) if auth else {}
        try:
            with urllib.request.urlopen(urllib.request.Request(url + path, data=data, headers=headers),
                                        timeout=timeout, context=client_tls(url)) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            if not auth or fresh or e.code not in (400, 401, 403):
                raise


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


BROKEN_POLICY = """-- bench/fleet.py: revision %(rev)s, broken on purpose: it loads (register
-- policy push checks it without inspect documents), but fails on every
-- container, so every host must refuse it and keep its keys
local policy = {}
function policy.prefix(host)
  return "%(prefix)s/" .. host.ip
end
function policy.records(c, host)
  error("bench/fleet.py: revision %(rev)s is broken on purpose")
end
return policy
"""


def bucket(ip):
    """policydoc_bucket(): FNV-1a (32 bits) of the address, mod 100."""
    h = 2166136261
    for c in ip.encode():
        h = ((h ^ c) * 16777619) & 0xFFFFFFFF
    return h % 100


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
        self.cluster = etcd_cluster(net, os.path.join(base, "etcd"), self.etcd_extra(), self.etcd_tls())
        self.auth = None  # V3Auth for this script's reads, once etcd has auth on (chaos.py --etcd-faults)
        self.truth = [dict() for _ in range(self.n)]  # host -> {cid: (image, port)}
        self.procs = [None] * self.n
        self.logs = [os.path.join(base, "logs", f"h{i}.log") for i in range(self.n)]
        os.makedirs(os.path.join(base, "logs"))
        self.naming = ""
        self.host_naming = {}  # host -> its naming, where not self.naming
        self.policy = os.path.join(base, "policy.lua")
        self.write_policy("")
        # scenario policy: every host follows POLICY_KEY from its start;
        # but with --policy-key, SIGHUP reads the key again, not --policy's
        # file (by design), so with reload in the run too the hosts start
        # without it and sc_policy restarts them with it
        self.follow = "policy" in a.scenarios and "reload" not in a.scenarios
        self.restarted = None
        self.sign_key = self.pub_key = None  # made when first needed (policy_keys())
        self.seq = 0
        self.healed_at = None  # when the last cut-off host was healed
        self.lock = threading.Lock()
        self.rng = random.Random(1)
        self.fake = None
        self.counter = None
        self.results = []
        self.problems = []  # hosts that misbehaved (see problem())
        self.told = 0  # how many of them a result holds

    def etcd_extra(self):
        """etcd's flags beyond etcd_cluster()'s own (None: its default)."""
        return None

    def etcd_tls(self):
        """etcd's TLS files (toolkit's dict), or None: plain http."""
        return None

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
        if self.follow:
            self.policy_keys()
            state = os.path.join(self.base, "state", f"h{h}")
            os.makedirs(state, exist_ok=True)
            args += ["--policy-key", POLICY_KEY, "--policy-pubkey", self.pub_key, "--state-dir", state]
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
                naming = self.host_naming.get(h, self.naming)
                for cid, (image, port) in self.truth[h].items():
                    want[f"{PREFIX}/{ip}/{image}/{naming}{cid}"] = value_of(cid, image, port)
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
                                                        timeout=2 if self.n <= 100 else 5, auth=self.auth)[0])
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
        return self.first_answer(lambda m: v3_range(m.url, PREFIX + "/", timeout=2, count_only=True,
                                                    auth=self.auth)[0])

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
        t0 = self.healed_at = time.time()
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
        self.healed_at = time.time()
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

    # ---- the fleet's policy in etcd (scenario policy) ----
    def policy_source(self, rev, naming):
        """Revision rev's source: the fleet's schema with naming, or (naming
        None) one that loads but fails on every container."""
        path = os.path.join(self.base, f"policy-r{rev}.lua")
        with open(path, "w") as f:
            if naming is None:
                f.write(BROKEN_POLICY % {"prefix": PREFIX, "rev": rev})
            else:
                f.write(POLICY % {"prefix": PREFIX, "naming": naming})
        return path

    def policy_keys(self):
        """The signing key pair (Ed25519, in the run's directory)."""
        if not self.sign_key:
            self.sign_key = os.path.join(self.base, "sign.pem")
            self.pub_key = os.path.join(self.base, "sign.pub")
            sh("openssl", "genpkey", "-algorithm", "ed25519", "-out", self.sign_key)
            sh("openssl", "pkey", "-in", self.sign_key, "-pubout", "-out", self.pub_key)

    def policy_cmd(self, *args):
        """register policy ARGS --key POLICY_KEY on this fleet's etcd:
        (exit status, stdout, seconds the command took)."""
        cmd = [self.a.register, "policy", *args, "--key", POLICY_KEY, "--etcd", self.cluster.endpoints(),
               "--etcd-api", self.api]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTER_", "ETCD_"))}
        t = time.time()
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
        except subprocess.TimeoutExpired:
            out(f"[{self.api}] register policy {' '.join(args)}: over 120 s")
            return None, "", time.time() - t
        dt = time.time() - t
        if r.returncode != 0:
            out(f"[{self.api}] register policy {' '.join(args)}: exit {r.returncode}: {r.stderr.strip()}")
        return r.returncode, r.stdout, dt

    def policy_doc(self):
        """The document at POLICY_KEY (a linearizable read: what the last
        command wrote), {} when there is none, None when no member answers."""
        def read(m):
            if self.api == "v3":
                req = {"key": b64(POLICY_KEY)}
                with urllib.request.urlopen(urllib.request.Request(m.url + "/v3/kv/range",
                                                                   data=json.dumps(req).encode()),
                                            timeout=5) as r:
                    kvs = json.loads(r.read()).get("kvs", [])
                v = base64.b64decode(kvs[0].get("value", "")).decode() if kvs else None
            else:
                try:
                    with urllib.request.urlopen(m.url + "/v2/keys" + POLICY_KEY + "?quorum=true", timeout=5) as r:
                        v = json.loads(r.read())["node"]["value"]
                except urllib.error.HTTPError as e:
                    if e.code != 404:
                        raise
                    v = None
            return json.loads(v) if v else {}
        return self.first_answer(read)

    def reports(self):
        """{host ip: its report} under POLICY_STATUS, or None."""
        def read(m):
            if self.api == "v3":
                kv = v3_range(m.url, POLICY_STATUS, timeout=5)[0]
            else:
                kv = v2_tree_index(m.url, POLICY_STATUS.rstrip("/"), timeout=5)[0]
            res = {}
            for k, v in kv.items():
                try:
                    res[k.rsplit("/", 1)[1]] = json.loads(v)
                except ValueError:
                    res[k.rsplit("/", 1)[1]] = {"unreadable": v}
            return res
        return self.first_answer(read)

    @staticmethod
    def report_off(r, want, gen):
        """What is off in report r against want = (state, revision,
        offered) at generation gen, or None."""
        if r is None:
            return "no report"
        got = (r.get("state"), r.get("revision"), r.get("offered"), r.get("generation"))
        if got != (*want, gen):
            return "state %s revision %s offered %s generation %s" % got
        return None

    def etcd_exact(self):
        """(stale, missing) now; v3 first counts the keys (cheap) and reads
        them all only when the count is right (as converge())."""
        if self.api == "v3":
            c = self.key_count()
            if c is not None and c != len(self.expected()):
                return None, None
        return self.diff()

    def wait_step(self, t0, want, gen, timeout):
        """Seconds from t0 until every host reports want(h) at generation
        gen, and until etcd is exact, each from the read that saw it (None:
        not within timeout), polled in two threads so that a slow read of
        one does not delay the other; the hosts off at the last read
        [(h, what)]; the last reports; the last (stale, missing)."""
        deadline = t0 + timeout
        res = {"rep": None, "etcd": None, "off": None, "reps": None, "sm": (None, None)}
        self.not_yet = [None, None]  # the last read that did not see it yet
        pause = 0.05 if self.n <= 100 else 0.1

        def reports():
            while time.time() < deadline:
                t = time.time()
                r = self.reports()
                if r is not None:
                    res["reps"] = r
                    res["off"] = [(h, x) for h in range(self.n)
                                  for x in [self.report_off(r.get(host_ip(h)), want(h), gen)] if x]
                    if not res["off"]:
                        res["rep"] = t - t0
                        return
                    self.not_yet[0] = t - t0
                time.sleep(pause)

        def etcd():
            while time.time() < deadline:
                t = time.time()
                sm = self.etcd_exact()
                res["sm"] = sm
                if sm == (0, 0):
                    res["etcd"] = t - t0
                    return
                self.not_yet[1] = t - t0
                time.sleep(pause)
        th = [threading.Thread(target=f, daemon=True) for f in (reports, etcd)]
        for x in th:
            x.start()
        for x in th:
            x.join(max(0.0, deadline - time.time()) + 15)
        sm = res["sm"] if res["etcd"] is not None else self.diff()
        return res["rep"], res["etcd"], res["off"], res["reps"], sm

    def tree_cpu(self):
        """utime + stime of every running host and its children (the policy
        workers), seconds."""
        tck = os.sysconf("SC_CLK_TCK")

        def cpu(pid):
            try:
                f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
                kids = open(f"/proc/{pid}/task/{pid}/children").read().split()
            except (OSError, ValueError, IndexError):
                return 0.0
            return (int(f[11]) + int(f[12])) / tck + sum(cpu(k) for k in kids)
        return sum(cpu(p.pid) for p in self.procs if p and p.poll() is None)

    @staticmethod
    def busy():
        """(busy, total) jiffies of the machine, all CPUs (/proc/stat)."""
        v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        return sum(v[:8]) - idle, sum(v[:8])

    def etcd_cpu(self):
        """utime + stime of the etcd members, seconds."""
        tot = 0.0
        for m in self.cluster.members:
            try:
                f = open(f"/proc/{m.proc.pid}/stat").read().rsplit(")", 1)[1].split()
                tot += (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
            except (AttributeError, OSError, ValueError, IndexError):
                pass
        return tot

    def decided_after(self, t0, rev, word):
        """Per host that logged "policy revision REV of KEY WORD" after t0,
        seconds from t0 to that line (the host's own view, millisecond
        timestamps), to its next write of its report that etcd
        acknowledged, and to the line before, "... offered" (it has read
        the document); each sorted."""
        pat = f" policy revision {rev} of {POLICY_KEY} {word}"
        offer = f" policy revision {rev} of {POLICY_KEY} offered"
        dec, rep, offered = [], [], []
        for h in range(self.n):
            mine = f" key={POLICY_STATUS}{host_ip(h)} "
            try:
                seen = got = False
                for line in open(self.logs[h], errors="replace"):
                    if not got and offer in line:
                        t = log_time(line)
                        if t >= t0:
                            offered.append(t - t0)
                            got = True
                    elif not seen and pat in line:
                        t = log_time(line)
                        if t >= t0:
                            dec.append(t - t0)
                            seen = True
                    elif seen and mine in line and (" updated " in line or " registered " in line):
                        rep.append(log_time(line) - t0)
                        break
            except (OSError, ValueError, IndexError):
                pass
        return sorted(dec), sorted(rep), sorted(offered)

    def policy_step(self, name, w, args, want, hold=0.0, logged=None):
        """One step: register policy ARGS, then the time until every host
        reports want(h) at the document's new generation and etcd is exact
        (the later of the two; self.expected() must already say what etcd
        should hold).  hold: seconds to watch etcd stay exact after that."""
        v0 = len(w.violations) if w else 0
        cpu0, ecpu0, b0, drv0 = self.tree_cpu(), self.etcd_cpu(), self.busy(), sum(os.times()[:2])
        t0 = time.time()
        rc, stdout, cmd_s = self.policy_cmd(*args)
        doc = self.policy_doc() or {}
        gen = doc.get("generation")
        timeout = 60 + self.n * 0.1
        if rc == 0:
            rep_s, etcd_s, off, reps, sm = self.wait_step(t0, want, gen, timeout)
        else:  # nothing to wait for; etcd should still be exact
            rep_s, off, reps = None, None, None
            etcd_s, sm = self.converge(t0, 10)
        if hold and etcd_s is not None:
            time.sleep(hold)
            sm2 = self.diff()
            if sm2 != (0, 0):
                etcd_s, sm = None, sm2
        t1 = time.time()
        not_yet = getattr(self, "not_yet", [None, None]) if rc == 0 else [None, None]
        cpu1, ecpu1, b1, drv1 = self.tree_cpu(), self.etcd_cpu(), self.busy(), sum(os.times()[:2])
        if reps is None:
            reps = self.reports() or {}
        # logged = (revision, "applied"|"refused"): when the hosts decided,
        # by their own logs
        dec, acked, offered = self.decided_after(t0, *logged) if logged else ([], [], [])
        # the watcher: when the last write under PREFIX came, if in this step
        last_w = (w.last_event - t0) if w and w.last_event and w.last_event > t0 else None
        wrong = self.wrong_keys() if sm != (0, 0) else []
        step = {"step": name, "seconds": None if rep_s is None or etcd_s is None else max(rep_s, etcd_s),
                "reports_s": rep_s, "etcd_s": etcd_s, "command_s": cmd_s, "rc": rc, "generation": gen,
                "stale": sm[0], "missing": sm[1], "violations": (len(w.violations) - v0) if w else None,
                "states": {}, "off": [f"{host_ip(h)}: {x}" for h, x in (off or [])[:5]],
                "n_off": len(off or []), "wrong_keys": wrong,
                "logged": len(dec) if logged else None, "logged_median": dec[len(dec) // 2] if dec else None,
                "logged_max": dec[-1] if dec else None, "wall_s": t1 - t0,
                "reported": len(acked) if logged else None, "reported_max": acked[-1] if acked else None,
                "reported_median": acked[len(acked) // 2] if acked else None, "watch_last_s": last_w,
                "offered_median": offered[len(offered) // 2] if offered else None,
                "offered_max": offered[-1] if offered else None, "driver_cpu_s": drv1 - drv0,
                "reports_not_yet_s": not_yet[0], "etcd_not_yet_s": not_yet[1],
                "host_cpu_s": cpu1 - cpu0, "etcd_cpu_s": ecpu1 - ecpu0,
                "machine_busy": (b1[0] - b0[0]) / max(1, b1[1] - b0[1])}
        for r in reps.values():
            step["states"][r.get("state")] = step["states"].get(r.get("state"), 0) + 1
        errors = sorted({r.get("error") for r in reps.values() if r.get("error")})
        step["errors"] = [e[:200] for e in errors[:3]]
        out(f"[{self.api}] policy {name}: {fmt_s(step['seconds'])} (reports {fmt_s(rep_s)}, etcd {fmt_s(etcd_s)}, "
            f"command {cmd_s:.2f}s, exit {rc}) generation {gen} states {step['states']} "
            f"stale={sm[0]} missing={sm[1]} violations={step['violations']}; "
            + (f"read it (offered) median {fmt_s(step['offered_median'])} max {fmt_s(step['offered_max'])}, "
               f"{len(dec)} hosts logged it, median {fmt_s(step['logged_median'])} max {fmt_s(step['logged_max'])}, "
               f"their reports acknowledged: median {fmt_s(step['reported_median'])} max "
               f"{fmt_s(step['reported_max'])}; " if logged else "")
            + (f"last write under {PREFIX} seen {fmt_s(last_w)}; " if w else "")
            + f"not yet at {fmt_s(not_yet[0])} (reports) and {fmt_s(not_yet[1])} (etcd); " +
            f"CPU in {t1 - t0:.2f}s: hosts {cpu1 - cpu0:.2f}s, etcd {ecpu1 - ecpu0:.2f}s, "
            f"this driver {drv1 - drv0:.2f}s, "
            f"machine {100 * step['machine_busy']:.0f}% busy"
            + (f" off: {step['off']}" if off else "") + (f" keys off: {wrong}" if wrong else ""))
        return step, reps

    def wrong_keys(self, limit=5):
        """Up to limit keys where etcd is off the truth, each with what etcd
        has and what it should have (values shortened)."""
        have, want = self.etcd_state() or {}, self.expected()
        res = []
        for k in sorted(set(have) | set(want)):
            if have.get(k) != want.get(k):
                res.append(f"{k}: etcd {(have.get(k) or 'none')[:60]!r}, truth {(want.get(k) or 'none')[:60]!r}")
                if len(res) >= limit:
                    break
        return res

    def status_check(self, st, reps, want, gen, stable):
        """Where `register policy status --json` (st) disagrees with a
        host's own report (reps) or with the expectation: a list of lines."""
        bad = []
        hosts = st.get("hosts")
        by = hosts if isinstance(hosts, dict) else {x.get("host"): x for x in hosts or [] if isinstance(x, dict)}
        ips = set()
        for h in range(self.n):
            ip = host_ip(h)
            ips.add(ip)
            s, r = by.get(ip), reps.get(ip)
            if s is None:
                bad.append(f"{ip}: not in the status")
                continue
            diff = [f"{k} {s.get(k)!r} (its report: {r.get(k) if r else None!r})"
                    for k in ("state", "revision", "offered", "generation", "keys")
                    if r is None or s.get(k) != r.get(k)]
            x = self.report_off(s, want(h), gen)
            if x:
                diff.append(f"expected {want(h)} at generation {gen}, status says {x}")
            if diff:
                bad.append(f"{ip}: " + ", ".join(diff))
        for ip in set(by) - ips:
            bad.append(f"{ip}: in the status, not in the fleet")
        if st.get("generation") != gen:
            bad.append(f"generation {st.get('generation')!r}, the document's is {gen}")
        if (st.get("stable") or {}).get("revision") != stable:
            bad.append(f"stable {(st.get('stable') or {}).get('revision')!r}, expected {stable}")
        if st.get("canary"):
            bad.append(f"a canary {st.get('canary')!r}, expected none")
        summ = st.get("summary") or {}
        for k, v in (("hosts", self.n), ("refused", 0), ("waiting", 0)):
            if k in summ and summ[k] != v:
                bad.append(f"summary {k} {summ[k]!r}, expected {v}")
        return bad

    def sc_policy(self):
        self.settle()
        self.policy_keys()
        if not self.follow:
            # SIGTERM leaves the keys; each host starts again following
            # POLICY_KEY (none there yet: its own --policy, state waiting)
            t = time.time()
            for h in range(self.n):
                self.stop_host(h, signal.SIGTERM)
            self.follow = True
            for h in range(self.n):
                self.start_host(h)
            ok = self.wait_step(t, lambda h: ("waiting", 0, 0), 0, 60 + self.n * 0.2)[0]
            self.restarted = time.time() - t
            out(f"[{self.api}] policy: every host restarted with --policy-key: reporting after "
                f"{self.restarted:.1f}s" + ("" if ok is not None else " (NOT every host reports waiting)"))
            self.settle()
        # after a partition: requests a host gave up on while it was cut off
        # still sit in its kernel's send queues and reach etcd when the
        # retransmission timer fires after the heal (seconds later; v2 and
        # v3 writes have no compare, so such a put lands as sent); the
        # steps below delete keys, and an old put landing after such a
        # delete would bring a key back that no host owns.  So wait them
        # out here (3 x TTL after the heal) and count what lands meanwhile.
        late = None
        if self.healed_at is not None:
            quiet = self.healed_at + 3 * self.a.ttl - time.time()
            if quiet > 0:
                w = Watcher(self)
                w.start()
                time.sleep(quiet)
                w.stop()
                late = w.events
                out(f"[{self.api}] policy: the {quiet:.1f}s up to 3 x TTL after the last heal: {late} events "
                    f"under {PREFIX} with nothing changing")
                self.settle()
        pct_or_hosts = self.a.policy_canary
        if pct_or_hosts.endswith("%"):
            pct = int(pct_or_hosts[:-1])
            canary = {h for h in range(self.n) if bucket(host_ip(h)) < pct}
        else:
            named = set(pct_or_hosts.split(","))
            canary = {h for h in range(self.n) if host_ip(h) in named}
        old = self.naming
        new = "p2-" if old != "p2-" else "p3-"
        steps = []
        # revision 1, the fleet's naming of now, to every host: the fleet
        # on the fleet's policy before anything is measured
        step, _ = self.policy_step("push r1 (all, same naming)", None,
                                   ["push", self.policy_source(1, old), "--sign", self.sign_key],
                                   lambda h: ("applied", 1, 1), logged=(1, "applied"))
        steps.append(step)
        w = Watcher(self)
        w.start()
        # 1: revision 2, a new naming, to the canary
        self.host_naming = {h: new for h in canary}
        step, _ = self.policy_step(f"canary {pct_or_hosts} ({len(canary)} hosts)", w,
                                   ["push", self.policy_source(2, new), "--sign", self.sign_key,
                                    "--canary", pct_or_hosts],
                                   lambda h: ("applied", 2, 2) if h in canary else ("waiting", 1, 1),
                                   logged=(2, "applied"))
        steps.append(step)
        # 2: promote
        self.naming, self.host_naming = new, {}
        step, _ = self.policy_step("promote", w, ["promote"], lambda h: ("applied", 2, 2),
                                   logged=(2, "applied"))
        steps.append(step)
        # 3: a broken revision to every host: all refuse it, keep their keys
        step, reps = self.policy_step("broken r3 (all)", w,
                                      ["push", self.policy_source(3, None), "--sign", self.sign_key],
                                      lambda h: ("refused", 2, 3), hold=1.0, logged=(3, "refused"))
        refused = sum(1 for h in range(self.n) if (reps.get(host_ip(h)) or {}).get("state") == "refused"
                      and (reps.get(host_ip(h)) or {}).get("offered") == 3)
        keys_lost = (step["missing"] or 0) + (step["stale"] or 0) if step["missing"] is not None else None
        # the reports' key counts against what each host's Docker has
        keys_field_off = sum(1 for h in range(self.n)
                             if (reps.get(host_ip(h)) or {}).get("keys") != len(self.truth[h]))
        step.update(refused=refused, keys_lost=keys_lost, keys_field_off=keys_field_off)
        steps.append(step)
        # 4: rollback to revision 2
        step, reps = self.policy_step("rollback", w, ["rollback"], lambda h: ("applied", 2, 2))
        steps.append(step)
        gen = step["generation"]
        # 5: register policy status --json against every report
        rc, stdout, status_s = self.policy_cmd("status", "--json")
        reps = self.reports() or {}
        try:
            st = json.loads(stdout) if rc == 0 else None
        except ValueError as e:
            st = None
            out(f"[{self.api}] policy status --json: not JSON ({e}): {stdout[:300]!r}")
        status_off = (self.status_check(st, reps, lambda h: ("applied", 2, 2), gen, 2) if st is not None
                      else ["no status (exit %s)" % rc])
        status_correct = not status_off
        steps.append({"step": "status --json", "seconds": status_s if rc == 0 else None,
                      "command_s": status_s, "rc": rc, "status_correct": status_correct,
                      "off": status_off[:5], "n_off": len(status_off)})
        out(f"[{self.api}] policy status --json: {status_s:.2f}s exit {rc}, "
            f"{'agrees with every report' if status_correct else status_off[:5]}")
        time.sleep(0.5)
        w.stop()
        sm = self.diff()
        measured = steps[1:5]
        violations = len(w.violations)
        for s in measured:
            if s["seconds"] is None:
                self.problems.append(f"policy: step {s['step']} did not converge (command exit {s['rc']}; "
                                     f"{s['n_off']} hosts off, "
                                     f"e.g. {s['off'][:2]}; stale {s['stale']} missing {s['missing']})")
        if steps[0]["seconds"] is None:
            self.problems.append(f"policy: revision 1 never applied everywhere (e.g. {steps[0]['off'][:2]})")
        if violations or w.error:
            self.problems.append(f"policy: watcher: {violations} make-before-break violations "
                                 f"{w.violations[:3]} {w.error or ''}")
        if refused != self.n:
            self.problems.append(f"policy: broken revision refused by {refused} of {self.n} hosts")
        if keys_lost:
            self.problems.append(f"policy: {keys_lost} keys lost or changed at the broken revision")
        if not status_correct:
            self.problems.append(f"policy: status --json disagrees on {len(status_off)} points: {status_off[:3]}")
        converged = all(s["seconds"] is not None for s in steps)
        promote = steps[2]["seconds"]
        self.record("policy", promote if converged else None, sm,
                    f"canary {pct_or_hosts} = {len(canary)} hosts; watcher {w.events} events, "
                    f"{violations} violations; broken revision refused by {refused}/{self.n}, "
                    f"{keys_lost} keys lost; status --json {'correct' if status_correct else 'WRONG'} "
                    f"({status_s:.2f}s); time: promote's (steps below)"
                    + (f"; the hosts restarted with --policy-key first ({self.restarted:.1f}s)" if self.restarted else "")
                    + (f"; {late} events under {PREFIX} (nothing changing) up to 3 x TTL after the last heal"
                       if late else ""),
                    steps=steps, violations=violations, watch_events=w.events, watch_error=w.error,
                    refused=refused, keys_lost=keys_lost, status_correct=status_correct,
                    status_seconds=status_s, canary_hosts=len(canary), converged=converged,
                    keys_field_off=keys_field_off, late_writes=late, restarted=self.restarted)

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


def net_spares(a):
    return len(SPARE_IPS) if getattr(a, "etcd_faults", False) else 0


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


def v3_range(url, prefix, timeout=10, count_only=False, auth=None):
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    # serializable: the member's own committed state, answered without a
    # leader (a linearizable read hangs while there is none)
    req = {"key": b64(prefix), "range_end": b64(end), "serializable": True}
    if count_only:
        req["count_only"] = True
    doc = v3_post(url, "/v3/kv/range", req, timeout, auth)
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
        self.last_event = None  # when the last event came (time.time())
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
        self.last_event = time.time()
        return svc

    def run(self):
        try:
            self.conn = etcd_conn(self.url, 3600)
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
           "steady": "v3: <= 1 per host per TTL/3", "policy": "promote <= 3 s (500 hosts)",
           "policy: promote": "<= 3 s (500 hosts)"}


def step_rows(r):
    """The policy scenario's steps, a row each below its own."""
    rows = []
    for s in r.get("steps", []):
        name = "policy: " + s["step"]
        if "status_correct" in s:
            note = (f"the command took {s['command_s']:.2f}s (exit {s['rc']}); "
                    + ("agrees with every host's report and the expectation" if s["status_correct"]
                       else f"**disagrees** on {s['n_off']}: {'; '.join(s['off'])}"))
            rows.append(f"| {r['api']} | {name} | {fmt_s(s['seconds'])} | - | - | | {note} |")
            continue
        note = (f"reports {fmt_s(s['reports_s'])} (not yet at {fmt_s(s['reports_not_yet_s'])}), etcd exact "
                f"{fmt_s(s['etcd_s'])} (not yet at {fmt_s(s['etcd_not_yet_s'])}) after the command, which "
                f"took {s['command_s']:.2f}s (exit {s['rc']}); generation {s['generation']}; states {s['states']}; "
                f"violations {'-' if s['violations'] is None else s['violations']}")
        if s.get("logged") is not None:
            note += (f"; the hosts read it (\"offered\" in their logs) after {fmt_s(s['offered_median'])} "
                     f"(median), {fmt_s(s['offered_max'])} (last)")
            note += (f"; {s['logged']} hosts logged it (median {fmt_s(s['logged_median'])}, last "
                     f"{fmt_s(s['logged_max'])}), their reports acknowledged (median {fmt_s(s['reported_median'])}, "
                     f"last {fmt_s(s['reported_max'])})")
        if s.get("watch_last_s"):
            note += f"; the watcher's last event {fmt_s(s['watch_last_s'])}"
        note += (f"; CPU in those {s['wall_s']:.1f}s: hosts {s['host_cpu_s']:.1f}s, etcd {s['etcd_cpu_s']:.1f}s, "
                 f"this script {s['driver_cpu_s']:.1f}s, "
                 f"the machine {100 * s['machine_busy']:.0f}% busy")
        if "refused" in s:
            note += (f"; refused by {s['refused']}, keys lost {s['keys_lost']}, "
                     f"reports' keys off the truth on {s['keys_field_off']} hosts; "
                     f"their error: {(s['errors'] or ['-'])[0][:160]}")
        if s["n_off"]:
            note += f"; **{s['n_off']} hosts off**, e.g. {'; '.join(s['off'][:3])}"
        rows.append(f"| {r['api']} | {name} | {fmt_s(s['seconds'])} | {s['stale']} | {s['missing']} | "
                    f"{TARGETS.get(name, '')} | {note} |")
    return rows


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
        lines += step_rows(r)
    return "\n".join(lines)


def inner(a):
    net = Net(a.tag, net_parts(a), net_spares(a))
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
    p.add_argument("--policy-canary", default="10%",
                   help="'policy': the canary of revision 2 (register policy push --canary: N%% or IP,IP,...)")
    p.add_argument("--scenarios", default=",".join(ALL_SCENARIOS))
    p.add_argument("--json", help="write the results here too")
    p.add_argument("--log-level", default="info")
    p.add_argument("--register", default=os.environ.get("REGISTER_BIN",
                                                        os.path.join(SRC, "build", "register")))
    p.add_argument("--fakedocker")
    p.add_argument("--chaos", type=float, metavar="SECONDS", help="a seeded chaos run instead (bench/chaos.py)")
    p.add_argument("--seed", type=int, help="--chaos: the seed (drawn at random if not given)")
    p.add_argument("--etcd-faults", action="store_true",
                   help="--chaos, v3 only: etcd with auth (JWT tokens, a user per host), a small quota, "
                        "TLS with a client certificate per host and room for a new member; etcd-side faults "
                        "drawn too: perm_revoke, jwt_change, passwd_rotate, nospace, snapshot_restore, "
                        "member_replace, cert_expire (a host's client certificate expired, then renewed; "
                        "bench/chaos.py)")
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


def run_outside(a, what, extra_argv=()):
    """The part of a run outside the namespaces: checks what it needs, builds
    the network, runs this script inside it (--inner) and cleans up, also on
    Ctrl-C or SIGTERM.  (None, the inner run's results), or (exit code,
    None) when it cannot run or failed (said, prefixed with what)."""
    if os.geteuid() != 0:
        out(f"{what}: needs root (network namespaces)")
        return 77, None
    for exe in (a.register, a.fakedocker):
        if not os.access(exe, os.X_OK):
            out(f"{what}: {exe} missing (build it: cmake --build build)")
            return 2, None
    if not shutil.which(etcd_binary()):
        out(f"{what}: etcd missing (Debian etcd-server)")
        return 77, None
    tag = f"rf{os.getpid() % 100000}"
    base = tempfile.mkdtemp(prefix=f"{what}-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    net = Net(tag, net_parts(a), net_spares(a))
    results_path = os.path.join(base, "results.json")
    child = None

    def on_signal(sig, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_signal)
    try:
        net.setup()
        argv = list(sys.argv[1:]) + list(extra_argv)
        child = subprocess.Popen(["ip", "netns", "exec", net.ns("h"), sys.executable,
                                  os.path.abspath(__file__), *argv, "--inner", "--tag", tag,
                                  "--base", base, "--results", results_path, "--register", a.register,
                                  "--fakedocker", a.fakedocker])
        rc = child.wait()
        if rc != 0 or not os.path.exists(results_path):
            out(f"{what}: the run failed ({rc})")
            return 1, None
        with open(results_path) as fh:
            return None, json.load(fh)
    except KeyboardInterrupt:
        out(f"{what}: interrupted; cleaning up")
        return 130, None
    finally:
        if child and child.poll() is None:
            child.send_signal(signal.SIGINT)
            try:
                child.wait(5)
            except subprocess.TimeoutExpired:
                child.kill()
        net.cleanup()
        if os.environ.get("FLEET_KEEP"):
            out(f"{what}: logs kept in", base)
        else:
            shutil.rmtree(base, ignore_errors=True)


def main():
    a = parse()
    if a.chaos is not None:  # bench/chaos.py, which builds on this file
        os.execv(sys.executable, [sys.executable, os.path.join(HERE, "chaos.py"), *sys.argv[1:]])
    if a.inner:
        inner(a)
        return 0
    load_before = os.getloadavg()[0]
    rc, results = run_outside(a, "fleet")
    if rc is not None:
        return rc
    print(table(results, a, load_before, os.getloadavg()[0]))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(results, fh, indent=1)
    bad = [r for r in results if r["stale"] != 0 or r["missing"] != 0 or r.get("problems")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""A seeded chaos run of the fleet (issue 22): bench/fleet.py --chaos SECONDS [--seed N].

The fleet is bench/fleet.py's (real register hosts, one fake Docker API
process, a 3-member etcd cluster in private network namespaces).  The run
is a sequence of epochs.  Each epoch is a storm of a few seconds in which
1-4 faults start at random moments and heal by its end (they may overlap),
then a quiet point: every fault healed, then the checks:

  converged   etcd equals every live host's truth (nothing stale, nothing
              missing) within QUIET_BUDGET seconds
  policy      every host runs the policy file in force (a SIGHUP refused
              while Docker was away is sent again, as an operator would,
              and counted)
  mbb         the watcher saw no running container lose its last key while
              its host was not excused (make-before-break, per container:
              a reload's new key comes before the old one goes; a key may
              only vanish while its host is killed, stopped, cut off, or
              etcd has no quorum, and TTL + GRACE after that heals)
  killed      a host killed for longer than TTL + KILL_MARGIN has no key left
              then (checked only when no etcd fault overlapped its TTL)
  healthz     every host answers 200 on /healthz
  idle        no host uses more than IDLE_CPU of a core while nothing happens
  leaks       per process, RssAnon and open fds do not grow beyond noise
              from one quiet point to the next (RSS_STEP_KB + RSS_STEP_FRAC,
              FD_STEP) nor from its first quiet point (RSS_TOTAL_KB +
              RSS_TOTAL_FRAC, FD_TOTAL) for fds other than sockets;
              TCP sockets are curl's connection cache for etcd (idle
              connections kept, up to CURLMOPT_MAXCONNECTS 65): at most
              TCP_MAX; unix sockets the Docker API's (32 idle kept until
              a quiet sync trims them): at most UNIX_MAX
  alive       no host exited on its own

The faults (random.Random(seed) draws every one of them, with its time,
length and target; the member a leader kill hits is whichever leads then):
  member_kill  an etcd member killed -9, restarted after a while
  leader_kill  the etcd leader killed -9, restarted after a while
  outage       every member killed -9, restarted after a while
  member_cut   an etcd member's network port down (packets dropped)
  host_cut     a partition namespace's hosts cut off
  docker_restart  the fake Docker API killed (every host's stream and
               socket gone), back with the same containers after a while
  stream_cut   one host's Docker event stream closed
  host_kill    a register killed -9, restarted after a while
  host_stop    a register SIGSTOPped, SIGCONTed after a while
  reload       the policy file switched to the other key naming, SIGHUP to
               every host
  churn        containers stopped and started at a few per second

The seed is printed first; the same seed replays the same schedule.  A
failure prints the seed, the schedule so far (what ran, when), the broken
invariant and the hosts' log tails, and stops the run (exit 1).
"""
import hashlib
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import fleet  # noqa: E402
from fleet import (PREFIX, Fleet, Net, Watcher, b64, host_ip, net_parts, out, res_index,  # noqa: E402
                   v2_tree, v3_range)

QUIET_BUDGET = 30.0    # s: from the last heal (and quorum) until etcd must equal the truth
GRACE = 3.0            # s: a host stays excused TTL + GRACE after its fault healed
KILL_MARGIN = 2.0      # s: a killed host's keys are gone TTL + this after the kill
IDLE_CPU = 0.15        # of one core, over IDLE_WINDOW s at a quiet point
IDLE_WINDOW = 2.0
HEALTHZ_WAIT = 10.0
# leak noise, per process (a restarted host starts over)
RSS_STEP_KB, RSS_STEP_FRAC = 1024, 0.10
RSS_TOTAL_KB, RSS_TOTAL_FRAC = 2048, 0.25
FD_STEP, FD_TOTAL = 3, 6   # fds other than sockets
TCP_MAX = 65 + 4           # TCP sockets: curl's connection cache (app.c: CURLMOPT_MAXCONNECTS 65) + a few
# unix sockets: the Docker API's connection cache (app.c: DOCKER_CONNS 32
# idle connections, trimmed only once in sync and quiet), its event stream,
# the policy worker's socketpair, sd_notify
UNIX_MAX = 32 + 4
METRICS_PORT = 9400

KINDS = ["member_kill", "leader_kill", "outage", "member_cut", "host_cut", "docker_restart",
         "stream_cut", "host_kill", "host_stop", "reload", "churn"]
WEIGHTS = [1.0, 1.0, 0.6, 0.8, 1.0, 0.6, 0.8, 1.2, 1.0, 0.7, 1.5]
MEMBER_FAULTS = ("member_kill", "leader_kill", "member_cut")
ETCD_FAULTS = MEMBER_FAULTS + ("outage",)


# ---------------------------------------------------------------------------
# the schedule: drawn from the seed only, never from what the run sees
# ---------------------------------------------------------------------------

class Fault:
    def __init__(self, kind, start, dur, **p):
        self.kind, self.start, self.dur, self.p = kind, start, dur, p

    def end(self):
        return self.start + self.dur

    def __str__(self):
        what = " ".join(f"{k}={v}" for k, v in sorted(self.p.items()) if k != "changes")
        if "changes" in self.p:
            what += f" changes={len(self.p['changes'])}"
        length = f" for {self.dur:.2f}s" if self.dur else ""
        return f"+{self.start:5.2f}s {self.kind}{' ' + what if what else ''}{length}"


def draw_epoch(rng, n, nparts, ttl):
    """One storm: (length, [Fault]).  Only rng decides; conflicting faults
    (the same target twice at once, a fourth member fault, an outage beside
    a member fault) are dropped, deterministically."""
    length = rng.uniform(3.0, 12.0)
    k = rng.randint(1, 4)
    faults = []

    def overlaps(f, g):
        return f.start < g.end() + 0.2 and g.start < f.end() + 0.2

    for _ in range(k):
        kind = rng.choices(KINDS, WEIGHTS)[0]
        start = rng.uniform(0.0, length * 0.7)
        room = length - start
        p = {}
        if kind in ("member_kill", "member_cut"):
            p["member"] = rng.randrange(3)
            dur = rng.uniform(0.5, 6.0)
        elif kind == "leader_kill":
            dur = rng.uniform(0.5, 6.0)
        elif kind == "outage":
            dur = rng.uniform(1.0, 2 * ttl + 2)
        elif kind == "host_cut":
            p["part"] = rng.randrange(nparts)
            dur = rng.uniform(0.5, 2 * ttl + 2)
        elif kind == "docker_restart":
            dur = rng.uniform(0.3, 3.0)
        elif kind == "stream_cut":
            p["host"] = rng.randrange(n)
            dur = 0.0
        elif kind == "host_kill":
            p["host"] = rng.randrange(n)
            dur = rng.uniform(0.5, 2 * ttl + 4)
        elif kind == "host_stop":
            p["host"] = rng.randrange(n)
            dur = rng.uniform(0.3, 2 * ttl)
        elif kind == "reload":
            dur = 0.0
        else:  # churn
            dur = rng.uniform(1.0, 6.0)
            rate = rng.uniform(2.0, 15.0)
            p["rate"] = round(rate, 1)
            p["changes"] = [(rng.uniform(0, min(dur, room)), rng.randrange(n), rng.choice("acr"))
                            for _ in range(max(1, int(rate * min(dur, room))))]
        if kind != "host_kill":
            dur = min(dur, room)
        # a kill may outlast the storm (which waits for its heal): a host
        # down past TTL + KILL_MARGIN is what the "killed" check needs, and
        # a storm is 12 s at most
        f = Fault(kind, start, dur, **p)
        clash = False
        for g in faults:
            if not overlaps(f, g):
                continue
            if kind == g.kind and kind in ("docker_restart", "reload", "churn", "outage"):
                clash = True
            if {kind, g.kind} & {"outage"} and {kind, g.kind} & set(MEMBER_FAULTS):
                clash = True
            if kind in ("member_kill", "member_cut") and g.kind in ("member_kill", "member_cut") \
                    and f.p["member"] == g.p["member"]:
                clash = True
            if kind in ("host_kill", "host_stop") and g.kind in ("host_kill", "host_stop") \
                    and f.p["host"] == g.p["host"]:
                clash = True
            if kind == g.kind == "host_cut" and f.p["part"] == g.p["part"]:
                clash = True
        if kind == "reload" and any(g.kind == "reload" for g in faults):
            clash = True  # one a storm: a second SIGHUP during a reload is ignored by design
        if kind in MEMBER_FAULTS:
            at_once = [g for g in faults if g.kind in MEMBER_FAULTS and overlaps(f, g)]
            if len(at_once) >= 2:
                clash = True
        if not clash:
            faults.append(f)
    faults.sort(key=lambda f: f.start)
    return length, faults


# ---------------------------------------------------------------------------
# a watcher that checks make-before-break per container, and survives etcd
# ---------------------------------------------------------------------------

class ChaosWatcher(Watcher):
    """Counts keys per container (its id is the key's last component, after
    the naming); a running container whose last key goes while its host is
    not excused is a violation.  The watch moves to another member when
    its member goes (v3: from the next revision; v2: from the next index,
    or a fresh read when etcd's 1000-event history no longer has it: a gap,
    counted, checked against the read)."""

    def __init__(self, chaos):
        super().__init__(chaos)
        self.c = chaos
        self.cnt = {}       # cid -> keys in etcd
        self.where = {}     # cid -> host
        self.gaps = 0
        self.reconnects = 0
        self.last = 0
        self.ip_host = {host_ip(h): h for h in range(chaos.n)}

    @staticmethod
    def cid_of(key):
        parts = key.split("/")
        if len(parts) < 5:
            return None, None
        return parts[4].rsplit("-", 1)[-1], parts[2]

    def member(self):
        for m in self.c.cluster.members:
            if m.proc and m.name not in self.c.net.down and m.healthy():
                return m
        return None

    def read_all(self, m):
        if self.c.api == "v3":
            kv, rev = v3_range(m.url, PREFIX + "/")
            return set(kv), rev
        tree = v2_tree(m.url, PREFIX)
        return set(tree), res_index[m.url]

    def resync(self, m):
        """A fresh read replaces what the watch knew."""
        keys, last = self.read_all(m)
        gone = self.keys - keys
        self.keys = set()
        self.cnt = {}
        for k in keys:
            self.apply("put", k)
        self.last = last
        lost = set()
        for k in gone:
            cid, ip = self.cid_of(k)
            if cid and self.cnt.get(cid, 0) == 0:
                lost.add(cid)
        self.check(lost, "gone in a watch gap")

    def drift(self):
        """At a quiet point: the keys the watch knows against a fresh read
        (from the member it would use): keys it missed or still holds."""
        m = self.member()
        if m is None:
            return None
        keys, _ = self.read_all(m)
        time.sleep(1.0)  # what the watch may still be delivering
        keys2, _ = self.read_all(m)
        if keys2 != keys:
            return None  # still moving: not a quiet point
        return len(keys ^ self.keys)

    def start(self):
        deadline = time.time() + 30
        m = None
        while time.time() < deadline and not (m := self.member()):
            time.sleep(0.2)
        if not m:
            raise RuntimeError("watcher: no etcd member answers")
        self.keys = set()
        self.resync(m)
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def apply(self, kind, key):
        cid, ip = self.cid_of(key)
        if cid is None:
            return None
        if kind == "put":
            if key not in self.keys:
                self.keys.add(key)
                self.cnt[cid] = self.cnt.get(cid, 0) + 1
                self.where[cid] = self.ip_host.get(ip)
        elif key in self.keys:
            self.keys.discard(key)
            self.cnt[cid] -= 1
        self.events += 1
        return cid

    def check(self, cids, how="delete"):
        now = time.time()
        for cid in cids:
            if self.cnt.get(cid, 0) > 0:
                continue
            h = self.where.get(cid)
            if h is None:
                continue
            with self.c.lock:
                running = cid in self.c.truth[h]
            if running and not self.c.excused(h, now):
                self.violations.append((round(now - self.c.t_start, 2), f"h{h}", cid[:12], how))
                self.c.note(f"watcher: h{h}'s running container {cid[:12]} has no key left "
                            f"({how}, at etcd index/revision {self.last}; host not excused)")

    def run(self):
        while not self.stopping:
            m = self.member()
            if m is None:
                time.sleep(0.2)
                continue
            try:
                self.watch(m)
            except Exception:
                pass
            if not self.stopping:
                self.reconnects += 1
                time.sleep(0.05)

    def watch(self, m):
        host, port = m.url[len("http://"):].split(":")
        # a short timeout: a member killed while cut off never resets the
        # connection; an idle watch just starts again from where it was
        self.conn = http.client.HTTPConnection(host, int(port), timeout=3)
        try:
            if self.c.api == "v3":
                body = json.dumps({"create_request": {"key": b64(PREFIX + "/"), "range_end": b64(PREFIX + "0"),
                                                      "start_revision": self.last + 1}})
                self.conn.request("POST", "/v3/watch", body=body)
                for doc in self.stream(self.conn.getresponse()):
                    res = doc.get("result", {})
                    if res.get("canceled") or res.get("compact_revision"):
                        self.gaps += 1
                        self.resync(m)
                        return
                    byrev = {}
                    for ev in res.get("events", []):
                        byrev.setdefault(int(ev["kv"].get("mod_revision", 0)), []).append(ev)
                    for rev in sorted(byrev):
                        touched = set()
                        for ev in byrev[rev]:
                            k = base64_dec(ev["kv"]["key"])
                            s = self.apply("del" if ev.get("type") == "DELETE" else "put", k)
                            if s:
                                touched.add(s)
                        self.check(touched)
                        self.last = max(self.last, rev)
            else:
                # a restarted member's v2 event history starts empty, and a
                # watch from an index it no longer has waits silently for
                # later ones: read afresh at every reconnect, watch from there
                before = set(self.keys)
                self.resync(m)
                if self.keys != before:
                    self.gaps += 1
                self.conn.request("GET", f"/v2/keys{PREFIX}?wait=true&recursive=true&stream=true"
                                  f"&waitIndex={self.last + 1}")
                for doc in self.stream(self.conn.getresponse()):
                    if "errorCode" in doc:
                        if doc["errorCode"] == 401:  # history cleared: read afresh
                            self.gaps += 1
                            self.resync(m)
                            return
                        raise RuntimeError(f"v2 watch: {doc}")
                    act = doc.get("action")
                    node = doc.get("node", {})
                    kind = "put" if act in ("set", "create", "update", "compareAndSwap") else (
                        "del" if act in ("delete", "expire", "compareAndDelete") else None)
                    if kind and not node.get("dir"):
                        s = self.apply(kind, node.get("key", ""))
                        if s:
                            self.check([s], act)
                    elif kind == "del" and node.get("dir"):
                        # a directory gone takes its keys
                        pre = node.get("key", "") + "/"
                        touched = {self.apply("del", k) for k in [k for k in self.keys if k.startswith(pre)]}
                        self.check(touched - {None})
                    self.last = max(self.last, int(node.get("modifiedIndex", 0)))
        finally:
            try:
                self.conn.close()
            except Exception:
                pass


def base64_dec(s):
    import base64
    return base64.b64decode(s).decode()


# ---------------------------------------------------------------------------
# the chaos fleet
# ---------------------------------------------------------------------------

class ChaosFleet(Fleet):
    def __init__(self, a, net, base):
        super().__init__(a, net, base)
        self.seed = a.seed
        # the churn's own choices (which container goes, which image comes)
        self.rng = random.Random(a.seed * 1000003 + (2 if a.api == "v3" else 1))
        self.started = [0.0] * self.n     # when each host's process started
        self.stopped = set()              # SIGSTOPped hosts
        self.excuses = []                 # [hosts or None for all, start, end or None]
        self.etcd_faults = []             # [start, end or None]
        self.faulted_members = {}         # member index -> kind
        self.fake_gen = 0
        self.fake_next = None
        self.actions = []                 # (t, text): what ran, when
        self.rows = []
        self.failures = []
        self.hist = {}                    # pid -> [(rss_kb, fds)]
        self.reload_mark = {}             # host -> log size at its last SIGHUP
        self.reloads_repeated = 0
        self.kill_checks = [0, 0, 0]      # done, skipped (etcd fault overlapped), failed
        self.t_start = time.time()
        self.later = []                   # (time, fn): deferred SIGHUPs
        self.quorum_excuse = None

    # ---- bookkeeping ----
    def note(self, text):
        t = time.time() - self.t_start
        self.actions.append((t, text))
        if self.a.log_level == "debug" or os.environ.get("CHAOS_VERBOSE"):
            out(f"[{self.api}] {t:7.2f}s {text}")

    def excuse(self, hosts):
        e = [hosts, time.time(), None]
        self.excuses.append(e)
        return e

    def unexcuse(self, e):
        e[2] = time.time() + self.a.ttl + GRACE

    def excused(self, h, t):
        for hosts, s, e in list(self.excuses):
            if s <= t and (e is None or t <= e) and (hosts is None or h in hosts):
                return True
        return False

    def etcd_fault_in(self, t0, t1):
        return any(s <= t1 and (e is None or e >= t0) for s, e in self.etcd_faults)

    # ---- hosts: with /metrics and /healthz ----
    def metrics_addr(self, h):
        if h in self.part_hosts:
            return f"10.213.1.{self.part_hosts.index(h) + 1}:{METRICS_PORT + h}"
        return f"127.0.0.1:{METRICS_PORT + h}"

    def start_host(self, h):
        # fleet.py's start_host, with --metrics
        args = [self.a.register, "--host-ip", host_ip(h), "--etcd", self.cluster.endpoints(),
                "--etcd-api", self.api, "--ttl", str(self.a.ttl),
                "--docker", f"unix://{self.sockdir}/h{h}.sock", "--policy", self.policy,
                "--log-level", self.a.log_level, "--metrics", self.metrics_addr(h)]
        if h in self.part_hosts:
            args = ["ip", "netns", "exec", self.net.ns(f"p{self.part_hosts.index(h)}")] + args
        env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_HOST", "ETCD_ENDPOINT")}
        self.procs[h] = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                         stderr=open(self.logs[h], "ab"), env=env)
        self.started[h] = time.time()

    def http_get(self, h, path, timeout=2):
        try:
            with urllib.request.urlopen(f"http://{self.metrics_addr(h)}{path}", timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")
        except Exception as e:
            return None, f"{type(e).__name__}: {e}"

    def catches_hup(self, h):
        p = self.procs[h]
        try:
            for line in open(f"/proc/{p.pid}/status"):
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & (1 << (signal.SIGHUP - 1)))
        except OSError:
            pass
        return False

    # ---- the fake Docker, restarted with the same containers ----
    def docker_down(self):
        self.fake_gen += 1
        d = os.path.join(self.base, f"docker{self.fake_gen}")
        os.makedirs(d)
        new = subprocess.Popen([self.a.fakedocker, "--fleet", d, str(self.n)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=open(os.path.join(self.base, "fakedocker.log"), "ab"),
                               text=True, bufsize=1)
        assert new.stdout.readline().strip() == "ready"
        with self.lock:
            old, self.fake = self.fake, new
            for h in range(self.n):
                for cid, (image, port) in self.truth[h].items():
                    self.cmd(f"a {h} {cid} {image} {port}")
        self.barrier()
        old.kill()
        old.wait()
        self.fake_next = d

    def docker_up(self):
        d, self.fake_next = self.fake_next, None
        for h in range(self.n):  # atomically, socket by socket
            os.rename(os.path.join(d, f"h{h}.sock"), os.path.join(self.sockdir, f"h{h}.sock"))

    # ---- faults: start and heal ----
    def begin(self, f):
        k, p = f.kind, f.p
        if k == "member_kill" or k == "member_cut" or k == "leader_kill":
            if k == "leader_kill":
                m = next((m for m in self.cluster.members
                          if self.members_free(m) and m.proc and m.is_leader()), None)
                if m is None:
                    m = next((m for m in self.cluster.members if self.members_free(m)), None)
                    if m is None:
                        self.note(f"{k}: no member left to fault; skipped")
                        return None
                    self.note(f"{k}: no leader found; {m.name} instead")
            else:
                m = self.cluster.members[p["member"]]
                if not self.members_free(m):
                    m = next((x for x in self.cluster.members if self.members_free(x)), None)
                    if m is None:
                        self.note(f"{k}: no member left to fault; skipped")
                        return None
            i = self.cluster.members.index(m)
            self.faulted_members[i] = k
            ef = [time.time(), None]
            self.etcd_faults.append(ef)
            if k == "member_cut":
                self.net.cut(m.name)
            else:
                m.kill()
            q = self.quorum_check()
            self.note(f"{k} {m.name}")
            return ("member", i, ef, q)
        if k == "outage":
            ef = [time.time(), None]
            self.etcd_faults.append(ef)
            self.cluster.kill()
            self.note("outage: every member killed -9")
            return ("outage", ef, self.excuse(None))
        if k == "host_cut":
            e = f"p{p['part']}"
            hosts = {self.part_hosts[p["part"]]}
            self.net.cut(e)
            self.note(f"host_cut {e} (h{self.part_hosts[p['part']]})")
            return ("cut", e, self.excuse(hosts))
        if k == "docker_restart":
            self.docker_down()
            self.note("docker_restart: the fake Docker API killed")
            return ("docker",)
        if k == "stream_cut":
            self.cmd(f"x {p['host']}")
            self.fake.stdin.flush()
            self.note(f"stream_cut h{p['host']}")
            return None
        if k == "host_kill":
            h = p["host"]
            ex = self.excuse({h})
            t = time.time()
            self.stop_host(h)
            self.note(f"host_kill h{h}")
            return ("hkill", h, ex, t)
        if k == "host_stop":
            h = p["host"]
            if not self.procs[h]:
                return None
            ex = self.excuse({h})
            self.procs[h].send_signal(signal.SIGSTOP)
            self.stopped.add(h)
            self.note(f"host_stop h{h}")
            return ("hstop", h, ex)
        if k == "reload":
            self.write_policy("n2-" if self.naming == "" else "")
            self.note(f"reload: policy naming {self.naming!r}, SIGHUP to every host")
            for h in range(self.n):
                self.hup(h)
            return None
        raise AssertionError(k)

    def hup(self, h, tries=0):
        p = self.procs[h]
        if not p or p.poll() is not None:
            return  # it starts with the file as it is
        if not self.catches_hup(h):  # still starting: SIGHUP would kill it
            if tries < 50:
                self.later.append((time.time() + 0.1, lambda: self.hup(h, tries + 1)))
            return
        try:
            self.reload_mark[h] = os.path.getsize(self.logs[h])
        except OSError:
            self.reload_mark[h] = 0
        p.send_signal(signal.SIGHUP)

    def members_free(self, m):
        return self.cluster.members.index(m) not in self.faulted_members

    def quorum_check(self):
        """Two members faulted or more: no quorum, every host excused."""
        if len(self.faulted_members) >= 2 and self.quorum_excuse is None:
            self.quorum_excuse = self.excuse(None)
        elif len(self.faulted_members) < 2 and self.quorum_excuse is not None:
            self.unexcuse(self.quorum_excuse)
            self.quorum_excuse = None

    def end(self, f, st):
        if st is None:
            return
        kind = st[0]
        if kind == "member":
            _, i, ef, _ = st
            m = self.cluster.members[i]
            if f.kind == "member_cut":
                self.net.heal(m.name)
            else:
                m.start(wait=False)
            del self.faulted_members[i]
            ef[1] = time.time()
            self.quorum_check()
            self.note(f"{f.kind} {m.name} healed")
        elif kind == "outage":
            _, ef, ex = st
            for m in self.cluster.members:
                m.start(wait=False)
            ef[1] = time.time()
            self.unexcuse(ex)
            self.note("outage healed: every member restarted")
        elif kind == "cut":
            _, e, ex = st
            self.net.heal(e)
            self.unexcuse(ex)
            self.note(f"host_cut {e} healed")
        elif kind == "docker":
            self.docker_up()
            self.note("docker_restart: the fake Docker API back")
        elif kind == "hkill":
            _, h, ex, t = st
            self.start_host(h)
            self.unexcuse(ex)
            self.note(f"host_kill h{h}: restarted after {time.time() - t:.2f}s")
        elif kind == "hstop":
            _, h, ex = st
            if self.procs[h]:
                self.procs[h].send_signal(signal.SIGCONT)
            self.stopped.discard(h)
            self.unexcuse(ex)
            self.note(f"host_stop h{h}: SIGCONT")

    def kill_check(self, h, t_kill):
        """The killed host h is still down TTL + KILL_MARGIN after the kill:
        none of its keys may be left."""
        if self.procs[h] is not None:
            return
        if self.etcd_fault_in(t_kill - self.a.ttl, time.time()):
            self.kill_checks[1] += 1
            self.note(f"kill check h{h}: skipped (an etcd fault overlapped its TTL)")
            return
        st = self.etcd_state()
        if st is None:
            self.kill_checks[1] += 1
            return
        left = [k for k in st if k.split("/")[2] == host_ip(h)]
        self.kill_checks[0] += 1
        if left:
            self.kill_checks[2] += 1
            self.failures.append(f"killed: h{h} killed -9 {time.time() - t_kill:.1f}s ago "
                                 f"(TTL {self.a.ttl}s) still has {len(left)} keys: {left[:2]}")
        self.note(f"kill check h{h}: {len(left)} keys left")

    def change_one(self, h, op):
        if op == "a" or not self.truth[h]:
            self.add(h)
        elif op == "r":
            self.remove(h)
        else:
            self.change(h)

    # ---- one epoch ----
    def storm(self, length, faults):
        t0 = time.time()
        evs = []  # (t, order, fn)
        for i, f in enumerate(faults):
            if f.kind == "churn":
                for (dt, h, op) in f.p["changes"]:
                    evs.append((f.start + dt, 2, lambda h=h, op=op: self.change_one(h, op)))
                evs.append((f.start, 1, lambda f=f: self.note(f"churn: {len(f.p['changes'])} changes "
                                                              f"over {f.dur:.2f}s")))
                continue
            slot = {}
            evs.append((f.start, 1, lambda f=f, slot=slot: slot.update(st=self.begin(f))))
            if f.dur:
                evs.append((f.end(), 0, lambda f=f, slot=slot: self.end(f, slot.get("st"))))
                if f.kind == "host_kill" and f.dur > self.a.ttl + KILL_MARGIN + 0.5:
                    evs.append((f.start + self.a.ttl + KILL_MARGIN, 1,
                                lambda f=f, slot=slot: slot.get("st") and
                                self.kill_check(f.p["host"], slot["st"][3])))
        evs.sort(key=lambda e: (e[0], e[1]))
        self.later = []
        i = 0
        while i < len(evs) or self.later:
            now = time.time() - t0
            due = [x for x in self.later if x[0] <= time.time()]
            for x in due:
                self.later.remove(x)
                x[1]()
            if i < len(evs) and evs[i][0] <= now:
                evs[i][2]()
                i += 1
                continue
            nxt = evs[i][0] if i < len(evs) else now + 0.1
            time.sleep(max(0.0, min(0.05, nxt - now)))
            self.fake.stdin.flush()
        self.fake.stdin.flush()
        rest = t0 + length - time.time()
        if rest > 0:
            time.sleep(rest)

    # ---- the quiet point ----
    def quiet(self, epoch, faults):
        fails = self.failures
        t0 = time.time()  # "converged after" counts from the heal
        # every fault healed: the storm healed its own; make sure of it
        for e in list(self.net.down):
            self.net.heal(e)
        for h in list(self.stopped):
            self.procs[h].send_signal(signal.SIGCONT)
        self.stopped.clear()
        for m in self.cluster.members:
            if not m.proc:
                m.start(wait=False)
        try:
            self.cluster.wait_healthy(60)
        except RuntimeError:
            fails.append("etcd: the cluster did not become healthy within 60 s of the heal")
        self.check_hosts()
        for h in range(self.n):
            if self.procs[h] is None:
                self.start_host(h)
        self.barrier()
        # a SIGHUP refused while Docker was away: sent again, as an operator would
        want_sha = hashlib.sha256(open(self.policy, "rb").read()).hexdigest()
        for h in self.policy_off(want_sha, wait=3):
            try:
                with open(self.logs[h], errors="replace") as log:
                    log.seek(self.reload_mark.get(h, 0))
                    refused = "policy reload failed" in log.read()
            except OSError:
                refused = False
            if refused:
                self.reloads_repeated += 1
                self.note(f"h{h}: its reload was refused (Docker away?); SIGHUP again")
                self.hup(h)
        deadline = time.time() + 6
        while self.later and time.time() < deadline:
            t, fn = self.later.pop(0)
            time.sleep(max(0, t - time.time()))
            fn()
        conv, sm = self.converge(t0, QUIET_BUDGET)
        for h in self.policy_off(want_sha, wait=5):
            self.problem(h, f"runs another policy than {self.policy} (naming {self.naming!r})")
            fails.append(f"policy: h{h} does not run the policy file in force")
        if conv is None:
            fails.append(f"converged: etcd != truth {QUIET_BUDGET:.0f}s after the heal "
                         f"(stale {sm[0]}, missing {sm[1]})")
        # the watcher (it has had the convergence time to catch up)
        w = self.watcher
        drift = w.drift()
        if drift:
            fails.append(f"watcher: its view differs from etcd's by {drift} keys at the quiet point "
                         f"(it missed events; its make-before-break verdicts are not to be trusted)")
        new_v = w.violations[self.seen_v:]
        self.seen_v = len(w.violations)
        if new_v:
            fails.append(f"mbb: {len(new_v)} running containers lost their last key: {new_v[:5]}")
        # /healthz
        unhealthy = {}
        deadline = time.time() + HEALTHZ_WAIT
        for h in range(self.n):
            while True:
                code, body = self.http_get(h, "/healthz")
                if code == 200 or time.time() > deadline:
                    break
                time.sleep(0.3)
            if code != 200:
                unhealthy[h] = f"{code} {body[:300]}"
        for h, why in unhealthy.items():
            self.problem(h, f"/healthz: {why}")
            fails.append(f"healthz: h{h} answers {why}")
        # idle CPU
        pids = {h: self.procs[h].pid for h in range(self.n) if self.procs[h]}
        c0 = {h: self.cpu_of(pid) for h, pid in pids.items()}
        time.sleep(IDLE_WINDOW)
        busy = {}
        for h, pid in pids.items():
            c1 = self.cpu_of(pid)
            if c0[h] is not None and c1 is not None:
                busy[h] = (c1 - c0[h]) / IDLE_WINDOW
        for h, b in busy.items():
            if b > IDLE_CPU:
                self.problem(h, f"busy with nothing happening: {100 * b:.0f}% of a core")
                fails.append(f"idle: h{h} uses {100 * b:.0f}% of a core at the quiet point")
        # leaks
        rss, fds = {}, {}
        for h, pid in pids.items():
            r, nf = self.rss_of(pid), self.fds_of(pid)
            if r is None or nf is None:
                continue
            tcp, nunix, n = nf
            rss[h], fds[h] = r, tcp + nunix + n
            hist = self.hist.setdefault(pid, [])
            bad = []
            if tcp > TCP_MAX:
                bad.append(f"{tcp} TCP connections open, over curl's cache ({TCP_MAX})")
            if nunix > UNIX_MAX:
                bad.append(f"{nunix} unix sockets open, over the Docker API's cache ({UNIX_MAX})")
            if hist:
                (r0, n0), (rp, np_) = hist[0], hist[-1]
                if r > rp + RSS_STEP_KB + RSS_STEP_FRAC * rp:
                    bad.append(f"RssAnon {rp} -> {r} kB since the last quiet point")
                if r > r0 + RSS_TOTAL_KB + RSS_TOTAL_FRAC * r0:
                    bad.append(f"RssAnon {r0} -> {r} kB since its first quiet point")
                if n > np_ + FD_STEP:
                    bad.append(f"fds (not sockets) {np_} -> {n} since the last quiet point")
                if n > n0 + FD_TOTAL:
                    bad.append(f"fds (not sockets) {n0} -> {n} since its first quiet point")
            hist.append((r, n))
            for b in bad:
                fails.append(f"leaks: h{h} {b}")
            if bad:
                self.problem(h, "; ".join(bad) + "; fds: " + self.fd_detail(pid))
        self.check_hosts()
        fails += [f"alive: {p}" for p in self.problems[self.told:] if "exited on its own" in p]
        self.told = len(self.problems)
        row = {"api": self.api, "epoch": epoch, "faults": [f.kind for f in faults],
               "converged": conv, "stale": sm[0], "missing": sm[1],
               "watch_events": w.events, "violations": len(new_v), "gaps": w.gaps, "drift": drift,
               "unhealthy": len(unhealthy), "cpu_max": max(busy.values() or [0]),
               "rss_max_kb": max(rss.values() or [0]), "fds_max": max(fds.values() or [0]),
               "kill_checks": list(self.kill_checks), "failures": list(fails)}
        self.rows.append(row)
        self.failures = []
        out(f"[{self.api}] quiet point {epoch}: {', '.join(row['faults'])}: converged "
            f"{fleet.fmt_s(conv)}, watcher {w.events} events {w.gaps} gaps, "
            f"cpu max {100 * row['cpu_max']:.1f}%, RssAnon max {row['rss_max_kb']} kB, "
            f"fds max {row['fds_max']}" + ("" if not fails else "  FAILED: " + "; ".join(fails)))
        return not fails

    def policy_off(self, want, wait=0):
        deadline = time.time() + wait
        while True:
            off = []
            for h in range(self.n):
                code, body = self.http_get(h, "/metrics")
                if code != 200 or f'register_policy_info{{sha256="{want}"}}' not in body:
                    off.append(h)
            if not off or time.time() >= deadline:
                return off
            time.sleep(0.5)

    @staticmethod
    def cpu_of(pid):
        try:
            f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None

    @staticmethod
    def rss_of(pid):
        try:
            return int(open(f"/proc/{pid}/status").read().split("RssAnon:", 1)[1].split()[0])
        except (OSError, ValueError, IndexError):
            return None

    @staticmethod
    def fds_of(pid):
        """(TCP sockets, unix sockets, every other fd) of pid, or None."""
        try:
            links = []
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
                except OSError:
                    pass
            unix = set()
            for line in open(f"/proc/{pid}/net/unix").readlines()[1:]:
                unix.add(line.split()[6])
        except (OSError, IndexError):
            return None
        # a socket that is not a unix one is TCP: one whose peer reset it
        # (a member killed) is no longer listed in /proc/net/tcp, but curl
        # keeps it in its cache until it tries to reuse it
        n_tcp = sum(1 for x in links if x.startswith("socket:[") and x[8:-1] not in unix)
        n_unix = sum(1 for x in links if x.startswith("socket:[") and x[8:-1] in unix)
        return n_tcp, n_unix, len(links) - n_tcp - n_unix

    @staticmethod
    def fd_detail(pid):
        """What pid's fds are: a count by kind, TCP sockets by state and peer."""
        states = {"01": "ESTABLISHED", "02": "SYN_SENT", "06": "TIME_WAIT", "07": "CLOSE",
                  "08": "CLOSE_WAIT", "0A": "LISTEN", "09": "LAST_ACK", "04": "FIN_WAIT1", "05": "FIN_WAIT2"}
        tcp = {}
        for name in ("tcp", "tcp6"):
            try:
                for line in open(f"/proc/{pid}/net/{name}").readlines()[1:]:
                    f = line.split()
                    ip, port = f[2].split(":")
                    peer = ".".join(str(int(ip[i:i + 2], 16)) for i in (6, 4, 2, 0)) if len(ip) == 8 else ip
                    tcp[f[9]] = f"tcp {states.get(f[3], f[3])} {peer}:{int(port, 16)}"
            except OSError:
                pass
        unix = set()
        try:
            unix = {line.split()[6] for line in open(f"/proc/{pid}/net/unix").readlines()[1:]}
        except (OSError, IndexError):
            pass
        kinds = {}
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    x = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if x.startswith("socket:["):
                    ino = x[8:-1]
                    x = "socket (unix)" if ino in unix else tcp.get(ino, "tcp (reset, not yet closed)")
                elif x.startswith("/"):
                    x = "file " + x
                else:
                    x = x.split(":")[0] + ":" + x.split(":", 1)[1][:6] if ":" in x else x
                kinds[x] = kinds.get(x, 0) + 1
        except OSError:
            pass
        return ", ".join(f"{v} x {k}" for k, v in sorted(kinds.items()))

    # ---- the run ----
    def fail_report(self, epoch):
        lines = ["", f"chaos: FAILED at quiet point {epoch} ({self.api}); seed {self.seed}",
                 f"replay: bench/fleet.py --chaos {self.a.chaos:g} --seed {self.seed} --hosts {self.n} "
                 f"--containers {self.a.containers} --api {self.api} --ttl {self.a.ttl}",
                 "invariants broken:"] + ["  " + x for x in self.rows[-1]["failures"]]
        lines += ["schedule so far (seconds since the chaos began):"]
        lines += [f"  {t:7.2f}s {x}" for t, x in self.actions]
        out("\n".join(lines))
        # the log tails of the hosts named
        named = set()
        for x in self.rows[-1]["failures"]:
            for word in x.replace(":", " ").replace("'", " ").split():
                if word.startswith("h") and word[1:].isdigit():
                    named.add(int(word[1:]))
        if any(x.startswith("converged") for x in self.rows[-1]["failures"]):
            self.name_off_hosts()
        for h in sorted(named):
            out(f"--- h{h} ({host_ip(h)}) log tail ---")
            try:
                out("\n".join(open(self.logs[h], errors="replace").read().splitlines()[-25:]))
            except OSError:
                pass

    def run(self):
        self.start_fake()
        self.cluster.start(quorum=True)
        self.counter = fleet.Counter(self.cluster, self.api)
        self.quorum_excuse = None
        self.sc_cold()
        self.results = []
        self.seen_v = 0
        self.watcher = ChaosWatcher(self)
        self.watcher.start()
        # the epochs come from their own generator: the same seed, the same
        # storms, whatever the run did
        sched = random.Random(self.seed)
        self.t_start = time.time()
        ok = True
        epoch = 0
        while time.time() - self.t_start < self.a.chaos:
            epoch += 1
            length, faults = draw_epoch(sched, self.n, self.nparts, self.a.ttl)
            self.note(f"epoch {epoch}: storm of {length:.2f}s: " + "; ".join(str(f) for f in faults))
            self.storm(length, faults)
            self.note(f"epoch {epoch}: quiet point")
            if not self.quiet(epoch, faults):
                self.fail_report(epoch)
                ok = False
                break
        self.watcher.stop()
        for h in range(self.n):
            if self.procs[h]:
                self.procs[h].send_signal(signal.SIGCONT)
            self.stop_host(h, signal.SIGTERM)
        if self.problems[self.told:]:
            ok = False
            self.rows.append({"api": self.api, "epoch": "stop", "faults": [], "converged": None,
                              "stale": None, "missing": None, "watch_events": 0, "violations": 0,
                              "gaps": 0, "unhealthy": 0, "cpu_max": 0, "rss_max_kb": 0, "fds_max": 0,
                              "kill_checks": list(self.kill_checks),
                              "failures": self.problems[self.told:]})
        self.cluster.kill()
        self.fake.stdin.close()
        self.fake.wait()
        return ok


# ---------------------------------------------------------------------------
# inner (in the <p>-h namespace) and outer
# ---------------------------------------------------------------------------

def inner(a):
    net = Net(a.tag, net_parts(a))
    rows, ok = [], True
    extra = {}
    for api in a.apis:
        a.api = api
        base = tempfile.mkdtemp(prefix=f"chaos-{api}-", dir=a.base)
        f = ChaosFleet(a, net, base)
        try:
            ok = f.run() and ok
        finally:
            rows += f.rows
            extra[api] = {"reloads_repeated": f.reloads_repeated, "kill_checks": f.kill_checks,
                          "watch_reconnects": f.watcher.reconnects if hasattr(f, "watcher") else 0}
            for h in range(f.n):
                try:
                    if f.procs[h]:
                        f.procs[h].send_signal(signal.SIGCONT)
                    f.stop_host(h)
                except Exception:
                    pass
            f.cluster.kill()
            if f.fake and f.fake.poll() is None:
                f.fake.kill()
        for e in net.ends:
            net.heal(e)
        if not ok:
            break
    with open(a.results, "w") as fh:
        json.dump({"rows": rows, "ok": ok, "extra": extra}, fh)
    return 0


def table(res, a):
    lines = ["", f"register chaos run, seed {a.seed}", "machine: " + fleet.machine(),
             "command: " + " ".join(sys.argv),
             f"fleet: {a.hosts} hosts x {a.containers} containers, TTL {a.ttl}s, chaos {a.chaos:g}s per API; "
             f"quiet point: converged within {QUIET_BUDGET:.0f}s, idle <= {100 * IDLE_CPU:.0f}% of a core, "
             f"RssAnon +{RSS_STEP_KB} kB+{100 * RSS_STEP_FRAC:.0f}% a step / +{RSS_TOTAL_KB} kB+"
             f"{100 * RSS_TOTAL_FRAC:.0f}% in all, fds other than sockets +{FD_STEP} a step / +{FD_TOTAL} in all, "
             f"TCP sockets <= {TCP_MAX}, unix sockets <= {UNIX_MAX}", "",
             "| api | quiet point | faults in the storm | converged after | stale | missing | watch events | "
             "mbb violations | watch gaps | unhealthy | max CPU | max RssAnon | max fds | kill checks "
             "(done/skipped/failed) | result |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['api']} | {r['epoch']} | {' '.join(r['faults'])} | {fleet.fmt_s(r['converged'])} | "
                     f"{r['stale']} | {r['missing']} | {r['watch_events']} | {r['violations']} | {r['gaps']} | "
                     f"{r['unhealthy']} | {100 * r['cpu_max']:.1f}% | {r['rss_max_kb'] / 1024:.2f} MB | "
                     f"{r['fds_max']} | {'/'.join(map(str, r['kill_checks']))} | "
                     f"{'ok' if not r['failures'] else '**' + '; '.join(r['failures'])[:300] + '**'} |")
    for api, x in res.get("extra", {}).items():
        lines.append(f"\n{api}: reloads sent again after a refusal: {x['reloads_repeated']}; "
                     f"watch reconnects: {x['watch_reconnects']}")
    lines.append(f"\nresult: {'every invariant held at every quiet point' if res['ok'] else 'FAILED'} "
                 f"(seed {a.seed})")
    return "\n".join(lines)


def main(a):
    if a.seed is None:
        a.seed = random.SystemRandom().randrange(1, 1 << 31)
    if a.inner:
        return inner(a)
    print(f"chaos: seed {a.seed}", flush=True)
    out(f"chaos: seed {a.seed}")
    rc, res = fleet.run_outside(a, "chaos", ["--seed", str(a.seed)])
    if rc is not None:
        out(f"chaos: seed {a.seed}")
        return rc
    print(table(res, a), flush=True)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(dict(res, seed=a.seed), fh, indent=1)
    return 0 if res["ok"] else 1


if __name__ == "__main__":  # through bench/fleet.py --chaos (its arguments)
    sys.exit(main(fleet.parse()))

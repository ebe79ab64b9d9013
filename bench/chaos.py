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

With --etcd-faults (v3 only) etcd runs with auth on (JWT tokens, RS256,
valid JWT_TTL), root and, per host, a user h<i> whose role r<i> may read
and write PREFIX/<ip>/ only; each host gets --etcd-user h<i> and
--etcd-password-file (a file of its own); this script reads as root.  The
quota is QUOTA (8 MiB).  The members serve clients over TLS and require a
client certificate (--client-cert-auth; a CA made for the run, a server
certificate for every member address, the spares too; peers stay on
http); each host gets --etcd-cacert, --etcd-cert and --etcd-key, files of
its own (a certificate of its own, O=register OU=h<i>, no CN: etcd's
gateway refuses one with a CN once auth is on; valid CERT_DAYS),
and this script has a certificate of its own for every request, watch and
etcdctl call.  The etcd-side failures seen in production are drawn too:
  perm_revoke  a host's role loses its permission on its prefix (a
               container of that host changes meanwhile), granted back
  jwt_change   a user added (an auth change: every token is "old"), a
               container changes, the user deleted (old again)
  passwd_rotate  a host's password changed in etcd, a container of that
               host changes, the new password written to its file (a new
               file renamed over) after a while
  nospace      512 KiB values (FILL_PREFIX, as root) until etcd raises
               NOSPACE, a container changes, held, then healed: the filler
               deleted, compacted, every member defragmented, alarms
               disarmed
  snapshot_restore  a snapshot saved, containers change on two hosts,
               then every member stopped, restored from the snapshot
               (etcdctl snapshot restore, same names and peer URLs) and
               started: etcd goes back in time (keys, leases, revision)
  member_replace  a member added at an address none has (namespaces
               m3, m4, then the longest free), started, and after a
               while the old one removed and stopped; the hosts learn it
               from etcd's member list
  cert_expire  a host's client certificate file replaced (a new file
               renamed over) by an expired one (the same CA and key), a
               container of that host changes; at its end a fresh
               certificate and a new key renamed over (as cert-manager
               renews); etcd refuses the host meanwhile: it is excused as
               a host cut off is
Each heals itself at its end; a heal etcd refuses (no quorum) is tried
again every 0.5 s from the storm's loop, and whatever is still not done
at the quiet point is finished there first (said in the schedule).  The
quiet-point invariants are the same; etcd faults conflict as draw_epoch()
says.

The seed is printed first; the same seed replays the same schedule.  A
failure prints the seed, the schedule so far (what ran, when), the broken
invariant and the hosts' log tails, and stops the run (exit 1).
"""
import base64
import hashlib
import json
import os
import random
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import fleet  # noqa: E402
from fleet import (PREFIX, Fleet, Net, V3Auth, Watcher, b64, host_ip, net_parts, net_spares, out,  # noqa: E402
                   res_index, v2_tree, v3_post, v3_range)
from toolkit import Etcd, issue_cert, make_ca  # noqa: E402

QUIET_BUDGET = 30.0    # s: from the last heal (and quorum) until etcd must equal the truth
# how long the watcher may take to catch up with etcd at a quiet point
WATCH_CATCHUP = 8.0
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
# --etcd-faults: the etcd-side failures seen in production (issue 22),
# drawn beside the others (the list grows only with the option, so that a
# seed without it replays exactly what it did before)
ETCD_KINDS = ["perm_revoke", "jwt_change", "passwd_rotate", "nospace", "snapshot_restore", "member_replace",
              "cert_expire"]
ETCD_WEIGHTS = [1.0, 0.6, 1.0, 0.6, 0.5, 0.5, 1.0]
AUTH_FAULTS = ("perm_revoke", "jwt_change", "passwd_rotate")
# cluster-wide: none of these overlaps another of them, a member fault or an
# outage (a defrag needs every member, a restore replaces every member's
# data, a member add or remove needs every member connected)
CLUSTER_FAULTS = ("nospace", "snapshot_restore", "member_replace")
QUOTA = 8 << 20            # --quota-backend-bytes with --etcd-faults
FILL_PREFIX = "/chaosfill/"  # nospace's filler keys (outside PREFIX, written as root)
ROOT_PW = "rootpw"
JWT_TTL = "1m"             # the hosts' tokens expire (and are renewed) during a run
CERT_DAYS = 2              # the hosts' client certificates (and their renewals) are valid this long


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


def draw_epoch(rng, n, nparts, ttl, etcd_faults=False):
    """One storm: (length, [Fault]).  Only rng decides; conflicting faults
    (the same target twice at once, a fourth member fault, an outage beside
    a member fault; with etcd_faults: a cluster-wide etcd fault beside
    another or beside a member fault or an outage, an auth change beside an
    outage or a snapshot restore, which would rewind it) are dropped,
    deterministically."""
    kinds, weights = (KINDS + ETCD_KINDS, WEIGHTS + ETCD_WEIGHTS) if etcd_faults else (KINDS, WEIGHTS)
    length = rng.uniform(3.0, 12.0)
    k = rng.randint(1, 4)
    faults = []

    def overlaps(f, g):
        return f.start < g.end() + 0.2 and g.start < f.end() + 0.2

    for _ in range(k):
        kind = rng.choices(kinds, weights)[0]
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
        elif kind == "perm_revoke":
            p["host"] = rng.randrange(n)
            dur = rng.uniform(1.0, 2 * ttl + 2)
        elif kind == "cert_expire":
            # the time the host's certificate file holds an expired one
            p["host"] = rng.randrange(n)
            dur = rng.uniform(1.0, 2 * ttl + 2)
        elif kind == "passwd_rotate":
            # the time between the change in etcd and the new file
            p["host"] = rng.randrange(n)
            dur = rng.uniform(0.2, 4.0)
        elif kind == "jwt_change":
            p["host"] = rng.randrange(n)  # the host whose container changes then
            dur = rng.uniform(0.3, 3.0)
        elif kind == "nospace":
            p["host"] = rng.randrange(n)  # the host whose container changes while etcd is full
            dur = rng.uniform(1.0, 6.0)
        elif kind == "snapshot_restore":
            # the snapshot at the start, the restore at the end; a container
            # changes on each of these hosts in between
            p["hosts"] = sorted(rng.sample(range(n), min(n, 2)))
            dur = rng.uniform(2.0, 8.0)
        elif kind == "member_replace":
            # the new member added at the start, the old one removed at the end
            p["member"] = rng.randrange(3)
            dur = rng.uniform(2.0, 6.0)
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
            pair = {kind, g.kind}
            if pair & set(CLUSTER_FAULTS) and (pair & set(ETCD_FAULTS) or kind == g.kind
                                               or len(pair & set(CLUSTER_FAULTS)) == 2):
                clash = True
            if pair & set(AUTH_FAULTS) and pair & {"outage", "snapshot_restore"}:
                clash = True
            if kind == g.kind and kind in ("perm_revoke", "passwd_rotate", "cert_expire") \
                    and f.p["host"] == g.p["host"]:
                clash = True
            if kind == g.kind == "jwt_change":
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
        # snapshot_restore: set once every member is down for the restore;
        # the next connection reads afresh and the keys the rewind took are
        # not violations (see resync())
        self.rewind_pending = False
        self.rewound = 0
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
            kv, rev = v3_range(m.url, PREFIX + "/", auth=self.c.auth)
            return set(kv), rev
        tree = v2_tree(m.url, PREFIX)
        return set(tree), res_index[m.url]

    def resync(self, m, rewound=False):
        """A fresh read replaces what the watch knew.  rewound: the read
        after a snapshot restore.  The keys it lacks against the watch's view
        are the ones the rewind took (written after the snapshot: a
        container started since, a reload's new names), taken by etcd, not
        by register: those alone are not checked, here only.  What register
        deletes from then on (the snapshot's stale keys, the old naming it
        brought back) is checked as everywhere; the hosts' excuse for the
        downtime itself is the outage's (restore())."""
        keys, last = self.read_all(m)
        gone = self.keys - keys
        back = keys - self.keys
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
        if rewound:
            self.rewound += len(gone)
            self.c.note(f"watcher: etcd went back in time to revision {last}: {len(gone)} keys gone, "
                        f"{len(back)} back; {len(lost)} containers without a key for now "
                        f"(the rewind's, not checked)")
            return
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
        # a watch that lags is not one that missed events: after an outage
        # its stream may still be on a member catching up, or waiting out
        # its 3 s timeout before it moves (seen: 9 keys behind 1.5 s after
        # convergence, seed 263985073, and equal a moment later).  Missed
        # events never come: the view stays wrong (a resync on reconnect
        # repairs it, counted as a gap, its lost containers checked).
        t0 = time.time()
        while keys ^ self.keys and time.time() - t0 < WATCH_CATCHUP:
            time.sleep(0.1)
        if not keys ^ self.keys and time.time() - t0 > 0.5:
            self.c.note(f"watcher: caught up {time.time() - t0:.1f} s after the quiet point's read")
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
                if self.rewind_pending:  # cleared once the read succeeded
                    self.resync(m, rewound=True)
                    self.rewind_pending = False
                self.watch(m)
            except Exception:
                pass
            if not self.stopping:
                self.reconnects += 1
                time.sleep(0.05)

    def watch(self, m):
        # a short timeout: a member killed while cut off never resets the
        # connection; an idle watch just starts again from where it was
        self.conn = fleet.etcd_conn(m.url, 3)
        try:
            if self.c.api == "v3":
                body = json.dumps({"create_request": {"key": b64(PREFIX + "/"), "range_end": b64(PREFIX + "0"),
                                                      "start_revision": self.last + 1}})
                auth = self.c.auth
                self.conn.request("POST", "/v3/watch", body=body, headers=auth.headers(m.url) if auth else {})
                for doc in self.stream(self.conn.getresponse()):
                    res = doc.get("result", {})
                    if auth and ("error" in doc or (res.get("canceled") and not res.get("compact_revision"))):
                        auth.headers(m.url, fresh=True)  # a token made old: a new one for the next watch
                        return
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
        self.later = []                   # (time, fn): deferred SIGHUPs, etcd heals tried again
        self.quorum_excuse = None
        # --etcd-faults
        self.efaults = bool(getattr(a, "etcd_faults", False))
        self.root = None                  # V3Auth as root (this script's reads and the faults)
        self.revoked = set()              # hosts whose role may not write (not yet granted back)
        self.pw_pending = {}              # host -> a new password in etcd, not yet in its file
        self.pwgen = 0
        self.jwt_users = set()            # users jwt_change added, not yet deleted
        self.nusers = 0
        self.replacing = []               # member_replace states not yet finished
        # the member namespaces free for a new member: the spares first,
        # then the removed members' (the longest free first), so that a
        # new member comes at an address no member had lately
        self.free_ends = [e for e in net.ends if e.startswith("m") and int(e[1:]) >= len(fleet.ETCD_IPS)]
        self.ngen = 0                     # new members and snapshots made
        self.etcd_counts = {}             # fault kind -> how many took effect
        self.expired = {}                 # host -> its excuse: its certificate file holds an expired one

    # ---- --etcd-faults: etcd's set-up and its admin requests ----
    def etcd_extra(self):
        """With --etcd-faults: JWT tokens (RS256, a key pair made here) and a
        small quota, instead of fleet.py's room for big fleets."""
        if not getattr(self.a, "etcd_faults", False):
            return None
        d = os.path.join(self.base, "jwt")
        os.makedirs(d)
        priv, pub = os.path.join(d, "jwt.key"), os.path.join(d, "jwt.pub")
        fleet.sh("openssl", "genrsa", "-out", priv, "2048")
        fleet.sh("openssl", "rsa", "-in", priv, "-pubout", "-out", pub)
        return ["--quota-backend-bytes", str(QUOTA),
                "--auth-token", f"jwt,pub-key={pub},priv-key={priv},sign-method=RS256,ttl={JWT_TTL}"]

    def etcd_tls(self):
        """With --etcd-faults: a CA made for the run; a server certificate
        for every member address (the spares too: member_replace) that
        etcd's gateway also presents to etcd itself (clientAuth); this
        script's client certificate; per host its own CA, certificate and
        key files (tls/h<i>/), which cert_expire replaces.  The client
        certificates have no CN (cert_subject()); the server's is none of
        etcd's users (its gateway presents it to etcd)."""
        if not getattr(self.a, "etcd_faults", False):
            return None
        d = os.path.join(self.base, "tls")
        ca, ca_key = make_ca(d, "chaos")
        self.ca = (ca, ca_key)
        ips = [ip for end, (ip, _) in self.net.ends.items() if end.startswith("m")]
        srv, srv_key = issue_cert(ca, ca_key, os.path.join(d, "server.pem"), "/CN=chaos etcd", days=CERT_DAYS,
                                  usage="serverAuth,clientAuth", ips=ips)
        cli, cli_key = issue_cert(ca, ca_key, os.path.join(d, "driver.pem"), "/O=chaos driver", days=CERT_DAYS)
        ctx = ssl.create_default_context(cafile=ca)
        ctx.load_cert_chain(cli, cli_key)
        fleet.CLIENT_TLS = ctx
        self.driver_tls = {"ca": ca, "client": cli, "client-key": cli_key}
        for h in range(self.n):
            os.makedirs(self.tls_dir(h))
            shutil.copy(ca, self.tls_file(h, "ca"))
            issue_cert(ca, ca_key, self.tls_file(h, "cert"), self.cert_subject(h), days=CERT_DAYS)
        return {"ca": ca, "server": srv, "server-key": srv_key, "client": cli, "client-key": cli_key}

    @staticmethod
    def cert_subject(h):
        # no CN: with auth on, etcd 3.4's JSON gateway refuses a request
        # made with a client certificate that has one (HTTP 400 "CommonName
        # of client sending a request against gateway will be ignored")
        return f"/O=register/OU=h{h}"

    def tls_dir(self, h):
        return os.path.join(self.base, "tls", f"h{h}")

    def tls_file(self, h, what):
        """Host h's CA bundle, certificate or key file."""
        return os.path.join(self.tls_dir(h), {"ca": "ca.pem", "cert": "cert.pem", "key": "cert-key.pem"}[what])

    def write_cert(self, h, expired):
        """Host h's certificate file replaced as an operator's tooling does
        (written beside it, renamed over): expired, an expired one for its
        key (valid from a day ago until a minute ago), else a fresh one
        for a new key (the key renamed first; register takes the two once
        they match)."""
        ca, ca_key = self.ca
        cert, key = self.tls_file(h, "cert"), self.tls_file(h, "key")
        t = time.time()
        if expired:
            issue_cert(ca, ca_key, cert + ".new", self.cert_subject(h), key=key, not_before=t - 86400,
                       not_after=t - 60)
        else:
            _, new_key = issue_cert(ca, ca_key, cert + ".new", self.cert_subject(h), days=CERT_DAYS)
            os.replace(new_key, key)
        os.replace(cert + ".new", cert)

    @staticmethod
    def host_prefix(h):
        return f"{PREFIX}/{host_ip(h)}/"

    def pw_file(self, h):
        return os.path.join(self.base, "pw", f"h{h}")

    def write_pw(self, h, pw):
        """A new file renamed over the old one, as an operator's tool does."""
        tmp = self.pw_file(h) + ".new"
        with open(tmp, "w") as fh:
            fh.write(pw + "\n")
        os.replace(tmp, self.pw_file(h))

    def live_members(self):
        return [m for m in self.cluster.members if m.proc and m.name not in self.net.down]

    def admin(self, path, req, timeout=3):
        """A v3 request as root (before auth is on: as nobody) to the first
        live member that takes it; RuntimeError with etcd's answer if none."""
        err = "no member runs"
        for m in self.live_members():
            try:
                return v3_post(m.url, path, req, timeout, self.root)
            except urllib.error.HTTPError as e:
                err = f"{m.name}: HTTP {e.code} {e.read()[:200].decode(errors='replace')}"
            except Exception as e:
                err = f"{m.name}: {type(e).__name__}: {e}"
        raise RuntimeError(f"{path}: {err}")

    def setup_auth(self):
        """Auth on: root, and per host a user h<i> whose role r<i> may read
        and write that host's keys (PREFIX/<ip>/) and its write fence, and
        nothing else; each
        host's password in a file of its own (--etcd-password-file)."""
        os.makedirs(os.path.join(self.base, "pw"))
        self.admin("/v3/auth/user/add", {"name": "root", "password": ROOT_PW})
        self.admin("/v3/auth/role/add", {"name": "root"})
        self.admin("/v3/auth/user/grant", {"user": "root", "role": "root"})
        for h in range(self.n):
            self.admin("/v3/auth/role/add", {"name": f"r{h}"})
            self.grant(h)
            # the host's write fence (--etcd-fence's default), as README's
            # RBAC example grants it
            self.admin("/v3/auth/role/grant", {"name": f"r{h}", "perm": {
                "permType": "READWRITE", "key": b64(f"/register/fence/{host_ip(h)}")}})
            self.admin("/v3/auth/user/add", {"name": f"h{h}", "password": f"pw-h{h}-0"})
            self.admin("/v3/auth/user/grant", {"user": f"h{h}", "role": f"r{h}"})
            self.write_pw(h, f"pw-h{h}-0")
        self.admin("/v3/auth/enable", {})
        self.root = self.auth = V3Auth("root", ROOT_PW)
        self.note(f"etcd: auth on (JWT), a user and role per host, quota {QUOTA >> 20} MiB")

    def cred_args(self, h):
        if not self.efaults:
            return []
        return ["--etcd-user", f"h{h}", "--etcd-password-file", self.pw_file(h),
                "--etcd-cacert", self.tls_file(h, "ca"), "--etcd-cert", self.tls_file(h, "cert"),
                "--etcd-key", self.tls_file(h, "key")]

    def etcdctl_tls(self):
        """etcdctl's flags for this script's certificate."""
        t = self.driver_tls
        return ["--cacert", t["ca"], "--cert", t["client"], "--key", t["client-key"]]

    def retry(self, what, fn, tries=40):
        """fn() until it does not raise: now, then every 0.5 s from the
        storm's loop (self.later), which goes on meanwhile; what is still
        not done at the quiet point, heal_etcd() does.  what (if not None)
        goes to the schedule once done."""
        try:
            fn()
            if what:
                self.note(what)
            return
        except Exception as e:
            err = e
        if tries <= 0:
            self.note(f"{what or fn}: still failing ({err}); left to the quiet point")
            return
        self.later.append((time.time() + 0.5, lambda: self.retry(what, fn, tries - 1)))

    def count(self, kind):
        self.etcd_counts[kind] = self.etcd_counts.get(kind, 0) + 1

    def grant(self, h):
        pfx = self.host_prefix(h)
        self.admin("/v3/auth/role/grant", {"name": f"r{h}", "perm": {
            "permType": "READWRITE", "key": b64(pfx), "range_end": b64(pfx[:-1] + "0")}})
        self.revoked.discard(h)

    def del_user(self, u):
        try:
            self.admin("/v3/auth/user/delete", {"name": u})
        except RuntimeError as e:
            if "not found" not in str(e):  # an add that never went through
                raise
        self.jwt_users.discard(u)

    def rotate_done(self, h, new):
        """etcd has the new password (a change that timed out may not have
        gone through: made again then), then the host's file has it."""
        try:
            V3Auth(f"h{h}", new).headers(self.live_members()[0].url)
        except Exception:
            self.admin("/v3/auth/user/changepw", {"name": f"h{h}", "password": new})
        self.write_pw(h, new)
        self.pw_pending.pop(h, None)

    def renew_cert(self, h):
        """cert_expire's heal: a fresh certificate (and key) in h's files;
        h stays excused TTL + GRACE more (register reads the files within
        CREDS_POLL_MS + CREDS_SETTLE_MS, 2.5 s, and writes again)."""
        self.write_cert(h, expired=False)
        self.unexcuse(self.expired.pop(h))

    def fill(self, st):
        """nospace: 512 KiB values under FILL_PREFIX until etcd refuses one
        for want of space (its NOSPACE alarm is raised then)."""
        val = base64.b64encode(os.urandom(512 << 10)).decode()
        errors = 0
        for i in range(4 * QUOTA // (512 << 10)):
            try:
                self.admin("/v3/kv/put", {"key": b64(f"{FILL_PREFIX}{i}"), "value": val}, timeout=10)
                st["puts"] = i + 1
            except RuntimeError as e:
                if "space exceeded" in str(e):
                    st["full"] = True
                    self.note(f"nospace: etcd full after {i} puts of 512 KiB (NOSPACE alarm)")
                    return
                errors += 1
                if errors > 20:
                    break
                time.sleep(0.2)
        self.note(f"nospace: etcd not full after {st.get('puts', 0)} puts")

    def free_space(self):
        """nospace's heal: the filler deleted, the history compacted,
        every member defragmented, the alarms disarmed."""
        deadline = time.time() + 60
        while True:
            try:
                doc = self.admin("/v3/kv/deleterange", {"key": b64(FILL_PREFIX),
                                                        "range_end": b64(FILL_PREFIX[:-1] + "0")})
                rev = int(doc["header"]["revision"])
                try:
                    self.admin("/v3/kv/compaction", {"revision": rev, "physical": True}, timeout=20)
                except RuntimeError as e:
                    if "compacted" not in str(e):
                        raise
                for m in list(self.cluster.members):
                    if m.proc:
                        v3_post(m.url, "/v3/maintenance/defragment", {}, 30, self.root)
                alarms = self.admin("/v3/maintenance/alarm", {"action": "GET"}).get("alarms", [])
                for x in alarms:
                    self.admin("/v3/maintenance/alarm", {"action": "DEACTIVATE", "memberID": x["memberID"],
                                                         "alarm": x["alarm"]})
                self.note(f"nospace healed: filler deleted, compacted at {rev}, every member defragmented, "
                          f"{len(alarms)} alarms disarmed")
                return True
            except Exception as e:
                if time.time() > deadline:
                    self.note(f"nospace: freeing space failed for 60 s: {e}")
                    return False
                time.sleep(0.5)

    def add_member(self, st):
        """member_replace: the new member added (etcd refuses while a member
        has not been connected for a while: tried again) and started."""
        if st["cancel"] or st["new"]:
            return
        ip = self.net.ends[st["end"]][0]
        peer = f"http://{ip}:2380"
        members = self.admin("/v3/cluster/member/list", {}).get("members", [])
        if not any(peer in x.get("peerURLs", []) for x in members):  # an add that timed out may be in
            members = self.admin("/v3/cluster/member/add", {"peerURLs": [peer]}, timeout=5)["members"]
        init = ",".join(f"{x.get('name') or st['end']}={x['peerURLs'][0]}" for x in members)
        self.ngen += 1
        old = st["old"]
        new = Etcd(st["end"], init, 2379, 2380, data_dir=os.path.join(self.base, "etcd", f"{st['end']}-{self.ngen}"),
                   tls=old.tls, extra=old.extra + ["--initial-cluster-state", "existing"], ip=ip,
                   netns=self.net.ns(st["end"]), timing=None)
        new.start(wait=False)
        self.cluster.members.append(new)
        st["new"] = new
        self.note(f"member_replace: {new.name} ({new.url}) added and started beside {old.name}")

    def remove_member(self, st):
        """member_replace's end: the old member removed, stopped, its data
        gone; the new one takes its place in the list."""
        if st.get("done"):
            return
        old, new = st["old"], st["new"]
        members = self.admin("/v3/cluster/member/list", {}).get("members", [])
        x = next((x for x in members if old.peer_url in x.get("peerURLs", [])), None)
        if x:
            self.admin("/v3/cluster/member/remove", {"ID": x["ID"]}, timeout=5)
        old.kill()
        shutil.rmtree(old.dir, ignore_errors=True)
        self.free_ends.append(old.name)
        ms = self.cluster.members
        ms.remove(new)
        ms[ms.index(old)] = new
        self.faulted_members.pop(st["i"], None)
        self.replacing.remove(st)
        st["ef"][1] = time.time()
        st["done"] = True
        self.count("member_replace")
        self.note(f"member_replace: {old.name} removed and stopped; the members now "
                  f"{', '.join(m.name for m in ms)}")
        # a new member replays the raft log, a nospace's filler with it, but
        # not the defragmentation that followed (it is each member's own):
        # its backend passes the quota and it raises NOSPACE for the whole
        # cluster (seed 1870946746).  An operator defragments it and
        # disarms; so does this.
        if self.admin("/v3/maintenance/alarm", {"action": "GET"}).get("alarms"):
            self.note(f"member_replace: {new.name} raised an alarm catching up (the log's filler, no defrag)")
            self.free_space()

    def restore(self, snap):
        """snapshot_restore's end: every member stopped, its data replaced
        by the snapshot's (etcdctl snapshot restore, the same names, peer
        URLs and cluster token), restarted: etcd is back at the snapshot's
        revision, with the keys, leases and auth store it had then."""
        ef = [time.time(), None]
        self.etcd_faults.append(ef)
        # What make-before-break excuses here, and why.  (1) The members are
        # down for the restore: nobody can write or keep a lease alive, as
        # in an outage, so every host gets the outage's excuse, which ends
        # TTL + GRACE after the restart: the snapshot's leases come back
        # with a full TTL, and one that no host keeps alive any more (a
        # host restarted since the snapshot holds another, which etcd no
        # longer knows) expires then, taking keys that its host can only
        # write again once it has heard that its own lease is gone.  (2)
        # The rewind deletes, at once, every key written after the
        # snapshot; register never deleted them: the watcher leaves those
        # keys out at its first read after the restart (resync(rewound=True))
        # and nothing else.  Past that window every delete is checked as
        # anywhere: the stale keys the snapshot brought back and an old
        # naming are register's to delete, new keys first.  NOSPACE,
        # permissions, passwords and JWT changes delete nothing: no excuse.
        ex = self.excuse(None)
        self.cluster.kill()
        self.watcher.rewind_pending = True
        members = self.cluster.members
        init = ",".join(f"{m.name}={m.peer_url}" for m in members)
        for m in members:
            data = os.path.join(m.dir, "data")
            shutil.rmtree(data, ignore_errors=True)
            r = subprocess.run(["etcdctl", "snapshot", "restore", snap, "--name", m.name, "--data-dir", data,
                                "--initial-cluster", init, "--initial-advertise-peer-urls", m.peer_url,
                                "--initial-cluster-token", "etcd-cluster"], env=dict(os.environ, ETCDCTL_API="3"),
                               capture_output=True, text=True, timeout=60)
            if r.returncode != 0:
                raise RuntimeError(f"etcdctl snapshot restore for {m.name}: {r.stderr.strip()}")
        for m in members:
            m.start(wait=False)
        try:
            self.cluster.wait_healthy(60)
        except RuntimeError:
            self.note("snapshot_restore: the restored cluster is not healthy after 60 s")
        ef[1] = time.time()
        self.unexcuse(ex)
        self.count("snapshot_restore")
        self.note("snapshot_restore: every member restored from the snapshot and restarted "
                  "(etcd went back in time)")

    def heal_etcd(self):
        """At the quiet point: whatever etcd fault a storm could not finish
        healing is healed now (said in the schedule); failures returned."""
        fails = []
        steps = [(f"r{h} granted back", lambda h=h: self.grant(h)) for h in sorted(self.revoked)]
        steps += [(f"h{h}'s new password in its file", lambda h=h, pw=pw: self.rotate_done(h, pw))
                  for h, pw in sorted(self.pw_pending.items())]
        steps += [(f"user {u} deleted", lambda u=u: self.del_user(u)) for u in sorted(self.jwt_users)]
        steps += [(f"h{h}'s fresh certificate in its files", lambda h=h: self.renew_cert(h))
                  for h in sorted(self.expired)]
        for st in list(self.replacing):
            if st["new"] is None:
                st["cancel"] = True
                self.free_ends.insert(0, st["end"])
                self.replacing.remove(st)
                self.faulted_members.pop(st["i"], None)
                st["ef"][1] = time.time()
            else:
                steps.append((f"{st['old'].name} removed", lambda st=st: self.remove_member(st)))
        for what, fn in steps:
            for _ in range(40):
                try:
                    fn()
                    self.note(f"quiet point: {what} (its storm could not)")
                    break
                except Exception as e:
                    err = e
                    time.sleep(0.5)
            else:
                fails.append(f"etcd: could not heal: {what}: {err}")
        # the members may still be starting (an outage just healed): asked
        # until one answers
        deadline = time.time() + 60
        while True:
            try:
                alarms = self.admin("/v3/maintenance/alarm", {"action": "GET"}).get("alarms")
                break
            except RuntimeError as e:
                if time.time() > deadline:
                    fails.append(f"etcd: alarm list: {e}")
                    return fails
                time.sleep(0.3)
        if alarms:
            self.note("quiet point: an alarm is still raised; freeing space")
            if not self.free_space():
                fails.append("etcd: the NOSPACE alarm could not be disarmed")
        return fails

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
                "--log-level", self.a.log_level, "--metrics", self.metrics_addr(h)] + self.cred_args(h)
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
        return self.begin_etcd(f)

    def begin_etcd(self, f):
        """The --etcd-faults kinds' start; their state for end_etcd()."""
        k, p = f.kind, f.p
        if k == "perm_revoke":
            h = p["host"]
            pfx = self.host_prefix(h)
            self.revoked.add(h)  # first: a revoke that times out may still go through
            try:
                self.admin("/v3/auth/role/revoke", {"role": f"r{h}", "key": b64(pfx),
                                                    "range_end": b64(pfx[:-1] + "0")})
                self.count(k)
                self.note(f"perm_revoke h{h}: role r{h} may no longer read or write {pfx}")
            except RuntimeError as e:
                self.note(f"perm_revoke h{h}: the revoke failed ({e}); granted back at its end all the same")
            self.change(h)  # something for h to write while it may not
            return ("perm", h)
        if k == "jwt_change":
            self.nusers += 1
            u = f"chaos{self.nusers}"
            self.jwt_users.add(u)
            try:
                self.admin("/v3/auth/user/add", {"name": u, "password": "x"})
                self.count(k)
                self.note(f"jwt_change: user {u} added (every token signed before is old now)")
            except RuntimeError as e:
                self.note(f"jwt_change: user add failed ({e})")
            self.change(p["host"])  # a write with an old token
            return ("jwt", u)
        if k == "passwd_rotate":
            h = p["host"]
            self.pwgen += 1
            new = f"pw-h{h}-{self.pwgen}"
            self.pw_pending[h] = new
            try:
                self.admin("/v3/auth/user/changepw", {"name": f"h{h}", "password": new})
                self.count(k)
                self.note(f"passwd_rotate h{h}: password changed in etcd, its file has the old one")
            except RuntimeError as e:
                self.note(f"passwd_rotate h{h}: the change failed ({e}); made at its end with the file")
            self.change(h)  # a write: a login with the old password
            return ("pw", h, new)
        if k == "nospace":
            st = {}
            self.fill(st)  # about a second
            self.change(p["host"])  # a write etcd refuses
            return ("nospace", st)
        if k == "snapshot_restore":
            # a member back from a cut may have started an election just now
            # (etcd 3.4 has no pre-vote): no member is healthy for a moment
            deadline = time.time() + 10
            while not (m := next((m for m in self.live_members() if m.healthy()), None)) \
                    and time.time() < deadline:
                time.sleep(0.2)
            if m is None:
                self.note("snapshot_restore: no healthy member to save a snapshot from for 10 s; skipped")
                return None
            self.ngen += 1
            snap = os.path.join(self.base, f"snap{self.ngen}.db")
            r = subprocess.run(["etcdctl", "--endpoints", m.url, "--user", f"root:{ROOT_PW}", *self.etcdctl_tls(),
                                "--command-timeout=20s", "snapshot", "save", snap],
                               env=dict(os.environ, ETCDCTL_API="3"), capture_output=True, text=True, timeout=60)
            if r.returncode != 0:
                self.note(f"snapshot_restore: snapshot save failed ({r.stderr.strip()[:200]}); skipped")
                return None
            self.note(f"snapshot_restore: snapshot saved from {m.name}")
            for h in p["hosts"]:
                self.change(h)  # keys the restore takes away, and keys it brings back
            return ("restore", snap)
        if k == "cert_expire":
            h = p["host"]
            # the host cannot reach etcd until the renewal: its keys may
            # expire, as a host's cut off from etcd
            self.expired[h] = self.excuse({h})  # first: a file replaced before a failure is renewed all the same
            try:
                self.write_cert(h, expired=True)
                self.count(k)
                self.note(f"cert_expire h{h}: its client certificate file holds an expired certificate")
            except Exception as e:
                self.note(f"cert_expire h{h}: the expired certificate could not be written ({e})")
            self.change(h)  # something for h to write while etcd refuses it
            return ("cert", h)
        if k == "member_replace":
            i = p["member"]
            old = self.cluster.members[i]
            end = self.free_ends[0] if self.free_ends else None
            if not self.members_free(old) or len(self.cluster.members) != 3 or end is None:
                self.note(f"member_replace: {old.name} is busy or a replacement is under way; skipped")
                return None
            ef = [time.time(), None]
            self.etcd_faults.append(ef)  # a new leader may renew every lease: no kill check over it
            self.free_ends.pop(0)
            st = {"i": i, "old": old, "end": end, "new": None, "cancel": False, "ef": ef}
            self.faulted_members[i] = k
            self.replacing.append(st)
            self.retry(None, lambda: self.add_member(st), tries=16)
            return ("replace", st)
        raise AssertionError(k)

    def end_etcd(self, f, st):
        kind = st[0]
        if kind == "perm":
            h = st[1]
            self.retry(f"perm_revoke h{h}: r{h} granted back", lambda: self.grant(h))
        elif kind == "jwt":
            u = st[1]
            self.retry(f"jwt_change: user {u} deleted (tokens old again)", lambda: self.del_user(u))
        elif kind == "pw":
            _, h, new = st
            self.retry(f"passwd_rotate h{h}: the new password in its file", lambda: self.rotate_done(h, new))
        elif kind == "nospace":
            if st[1].get("full"):
                self.count("nospace")
            self.free_space()
        elif kind == "cert":
            h = st[1]
            self.retry(f"cert_expire h{h}: a fresh certificate and key in its files", lambda: self.renew_cert(h))
        elif kind == "restore":
            self.restore(st[1])
        elif kind == "replace":
            rs = st[1]
            rs["cancel"] = True
            if rs["new"] is None:
                self.free_ends.insert(0, rs["end"])
                self.replacing.remove(rs)
                self.faulted_members.pop(rs["i"], None)
                rs["ef"][1] = time.time()
                self.note(f"member_replace: etcd did not take a new member in time; {rs['old'].name} stays")
            else:
                self.retry(None, lambda: self.remove_member(rs))

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
        else:
            self.end_etcd(f, st)

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
        if self.efaults:
            # first: a raised alarm makes every member's /health false
            fails += self.heal_etcd()
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
                 f"--containers {self.a.containers} --api {self.api} --ttl {self.a.ttl}"
                 + (" --etcd-faults" if self.efaults else ""),
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
        if self.efaults:
            self.setup_auth()
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
            length, faults = draw_epoch(sched, self.n, self.nparts, self.a.ttl, self.efaults)
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
    net = Net(a.tag, net_parts(a), net_spares(a))
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
                          "watch_reconnects": f.watcher.reconnects if hasattr(f, "watcher") else 0,
                          "etcd_faults": f.etcd_counts,
                          "rewound_keys": f.watcher.rewound if hasattr(f, "watcher") else 0}
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
             f"fleet: {a.hosts} hosts x {a.containers} containers, TTL {a.ttl}s, chaos {a.chaos:g}s per API"
             + (f", etcd faults (auth with JWT, a user per host, quota {QUOTA >> 20} MiB, TLS with a client "
                f"certificate per host)" if a.etcd_faults else "")
             + "; "
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
        if a.etcd_faults:
            done = ", ".join(f"{k} {v}" for k, v in sorted(x.get("etcd_faults", {}).items())) or "none"
            lines.append(f"{api}: etcd faults that took effect: {done}; keys a restore rewound away "
                         f"(not checked for make-before-break): {x.get('rewound_keys', 0)}")
    lines.append(f"\nresult: {'every invariant held at every quiet point' if res['ok'] else 'FAILED'} "
                 f"(seed {a.seed})")
    return "\n".join(lines)


def main(a):
    if a.seed is None:
        a.seed = random.SystemRandom().randrange(1, 1 << 31)
    if a.etcd_faults and a.apis != ["v3"]:
        out("chaos: --etcd-faults needs --api v3 (its faults are the v3 API's: auth, alarms, snapshots)")
        return 2
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

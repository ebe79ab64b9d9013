#!/usr/bin/env python3
"""A soak on a real engine: one register, a real dockerd, a long time.

    bench/soak.py                      30 minutes, 50 starts and stops per second
    bench/soak.py --minutes 5 --rate 20

register (the daemon, with the health-checks example policy) follows a
dockerd of its own and writes to a real etcd 3.4.  Meanwhile:
  - containers are started and removed at --rate per second (each start and
    each removal counts), through the Engine API on its socket (the docker
    CLI costs more than the engine);
  - a third of them flip their health check: their TCP listener comes and
    goes every few seconds, so register adds and removes their keys;
  - every minute register gets a SIGHUP, alternating between two policies
    that name the keys differently (every container re-keyed,
    make-before-break).

register's RssAnon (daemon and policy worker), open file descriptors and
CPU time are read at quiet points: the churn pauses (--quiet-every, 5
minutes) until etcd is exact and register has trimmed (it closes idle
connections and returns freed memory 2 s after a sync), so that each
reading is of the same state and not of whatever is in flight.  The first
quiet point is after the first minute, the last one at the end; growth
from the first to the last beyond 5 % (file descriptors: beyond 5 % or 2)
is reported as a failure.  The readings at every quiet point are printed.  At the end
the churn stops, the flipping containers go, and etcd must equal what the
engine runs (the default schema of every remaining, healthy container).

The rate the engine sustains is measured and printed: on a small machine
with the vfs storage driver, a container start costs the engine more than
1/50 s, so the achieved rate may be below --rate (the table says so).

Needs root (dockerd), etcd-server.  Not a test: a measurement; prints a
table and writes --json.
"""
import argparse
import http.client
import json
import os
import random
import signal
import socket
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(SRC, "tests", "integration"))
os.environ.setdefault("REGISTER_BIN", os.path.join(SRC, "build", "register"))

from harness import Dockerd, Etcd, Register, docker_truth, free_port, tmpdir, wait_for  # noqa: E402
from toolkit import remove_tmpdirs  # noqa: E402

IP = "10.21.9.9"
PREFIX = f"/registered/{IP}"


def out(*a):
    print(*a, file=sys.stderr, flush=True)


class Api:
    """The Engine API on a unix socket, one connection per call."""

    def __init__(self, sock):
        self.sock = sock

    def call(self, method, path, body=None, timeout=60):
        class Conn(http.client.HTTPConnection):
            def connect(s):
                s.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.sock.settimeout(timeout)
                s.sock.connect(self.sock)
        c = Conn("docker", timeout=timeout)
        data = json.dumps(body).encode() if body is not None else None
        c.request(method, path, body=data, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        text = r.read()
        c.close()
        if r.status >= 300:
            raise RuntimeError(f"{method} {path}: {r.status} {text[:200]!r}")
        return json.loads(text) if text else None

    def run(self, cmd, labels):
        spec = {"Image": "bbx", "Cmd": ["sh", "-c", cmd], "Labels": labels,
                "ExposedPorts": {"80/tcp": {}},
                "HostConfig": {"PortBindings": {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}}}
        cid = self.call("POST", "/v1.41/containers/create", spec)["Id"]
        self.call("POST", f"/v1.41/containers/{cid}/start")
        return cid

    def rm(self, cid):
        self.call("DELETE", f"/v1.41/containers/{cid}?force=true&v=true")


HOLD = "exec nc -ll -p 80 -e cat"  # a TCP check passes
FLIP = "while true; do timeout 4 nc -ll -p 80 -e cat; sleep 4; done"  # passes, fails, ...
CHECK = {"SERVICE_CHECK_TCP": "true", "SERVICE_CHECK_INTERVAL": "1s",
         "SERVICE_CHECK_TIMEOUT": "1s", "SERVICE_CHECK_FALL": "1", "SERVICE_CHECK_RISE": "1"}

POLICY = """\
local register = require "register"
local default = require "register.default"
local policy = { prefix = default.prefix }
function policy.checks(c, host) return register.checks(c) end
function policy.records(c, host)
  if not c.healthy then return nil end
  local recs = default.records(c, host)
  %s
end
return policy
"""
# the same keys, or every key with a suffix (a re-keying reload; not
# "/r": in v2 a key cannot also be the directory of another)
PLAIN = POLICY % "return recs"
SUFFIX = POLICY % "if not recs then return nil end; local o = {}; for k, v in pairs(recs) do o[k .. '-r'] = v end; return o"


def proc_stats(pid):
    """RssAnon kB, open fds, CPU seconds of one process."""
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                rss = int(line.split()[1])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return rss, fds, cpu


def worker_pid(pid):
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    st = f.read()
                if int(st.rsplit(")", 1)[1].split()[1]) == pid and "register-worke" in st:
                    return int(p)
            except (OSError, ValueError, IndexError):
                pass
    return None


def sample(pid):
    d = proc_stats(pid)
    w = worker_pid(pid)
    ws = proc_stats(w) if w else (0, 0, 0.0)
    return {"rss_daemon_kb": d[0], "rss_worker_kb": ws[0], "rss_kb": d[0] + ws[0],
            "fds": d[1], "cpu_s": d[2] + ws[2], "t": time.time()}


def on_sigterm(sig, frame):
    raise KeyboardInterrupt  # as ^C: the finally blocks clean up


def main():
    signal.signal(signal.SIGTERM, on_sigterm)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--rate", type=float, default=50, help="starts and removals per second")
    ap.add_argument("--pool", type=int, default=60, help="containers running at most")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--quiet-every", type=float, default=5, help="minutes between quiet points")
    ap.add_argument("--json", help="write the result here")
    a = ap.parse_args()
    seed = a.seed if a.seed is not None else random.randrange(1 << 31)
    out(f"soak: seed {seed}, {a.minutes} min, target {a.rate}/s, pool {a.pool}")
    rnd = random.Random(seed)

    work = tmpdir("rsk")
    etcd = Etcd().start()
    d = Dockerd().start()
    r = None
    try:
        d.images()
        d.clean()
        pols = [os.path.join(work, "plain.lua"), os.path.join(work, "suffix.lua")]
        for p, text in zip(pols, (PLAIN, SUFFIX)):
            with open(p, "w") as f:
                f.write(text)
        live = os.path.join(work, "policy.lua")
        with open(live, "w") as f:
            f.write(PLAIN)
        port = free_port()
        r = Register("--etcd", etcd.url, "--docker", d.host, "--policy", live, "--ttl", "20",
                     "--metrics", f"127.0.0.1:{port}", "--log-level", "warn", host_ip=IP).start()
        api = Api(d.sock)
        running = []  # (id, flips)
        lock = threading.Lock()
        stop = threading.Event()
        counts = {"starts": 0, "removals": 0, "errors": 0, "reloads": 0}
        go = threading.Event()  # cleared: the churn pauses (a quiet point)
        go.set()
        busy = [0]  # churn calls in progress

        def churn():
            gap = 1.0 / a.rate
            nxt = time.time()
            while not stop.is_set():
                if not go.is_set():
                    go.wait()
                    nxt = time.time()
                with lock:
                    busy[0] += 1
                nxt += gap
                try:
                    with lock:
                        grow = len(running) < a.pool // 2 or (len(running) < a.pool and rnd.random() < 0.5)
                        victim = None if grow else running.pop(rnd.randrange(len(running)))
                        flips = rnd.random() < 1 / 3
                    if victim:
                        api.rm(victim[0])
                        counts["removals"] += 1
                    else:
                        cid = api.run(FLIP if flips else HOLD, CHECK)
                        with lock:
                            running.append((cid, flips))
                        counts["starts"] += 1
                except Exception as e:  # the engine said no: counted, the soak goes on
                    counts["errors"] += 1
                    if counts["errors"] <= 3:
                        out("engine:", e)
                with lock:
                    busy[0] -= 1
                delay = nxt - time.time()
                if delay > 0:
                    time.sleep(delay)
                else:
                    nxt = time.time()  # behind: as fast as the engine goes

        def quiet_point(label):
            """Churn paused, flipping containers' checks may still flip:
            etcd exact is not waited for here (the end does); in flight
            settles, register syncs and trims (2 s after), then a reading."""
            go.clear()
            wait_for(lambda: busy[0] == 0, 120, interval=0.1, what="the churn to pause")
            time.sleep(8)
            s = sample(r.proc.pid)
            s["label"] = label
            quiet.append(s)
            out(f"quiet point {label}: RssAnon {s['rss_daemon_kb']} + {s['rss_worker_kb']} kB, "
                f"fds {s['fds']}, CPU {s['cpu_s']:.1f} s, {counts['starts'] + counts['removals']} "
                "starts and removals so far")
            go.set()
            return s

        quiet = []
        threads = [threading.Thread(target=churn, daemon=True) for _ in range(4)]
        t0 = time.time()
        for t in threads:
            t.start()
        end = t0 + a.minutes * 60
        first = None
        next_reload = t0 + 60
        next_quiet = t0 + 60
        paused = 0.0
        which = 0
        while time.time() < end + paused:
            time.sleep(min(1, max(0.1, end + paused - time.time())))
            if r.proc.poll() is not None:
                raise AssertionError("register exited:\n" + r.output()[-3000:])
            if time.time() >= next_quiet and time.time() < end + paused - 30:
                tq = time.time()
                s = quiet_point(f"{(tq - t0 - paused) / 60:.0f} min")
                first = first or s
                paused += time.time() - tq
                next_quiet = time.time() + a.quiet_every * 60
            if time.time() >= next_reload:
                which ^= 1
                with open(live, "w") as f:
                    f.write(SUFFIX if which else PLAIN)
                r.proc.send_signal(signal.SIGHUP)
                counts["reloads"] += 1
                next_reload += 60
        stop.set()
        go.set()
        for t in threads:
            t.join(60)
        secs = time.time() - t0 - paused
        achieved = (counts["starts"] + counts["removals"]) / secs
        out(f"churn over: {counts}, {achieved:.1f}/s")
        # the end: only steady containers, every one healthy, etcd exact
        for cid, flips in list(running):
            if flips:
                api.rm(cid)
        with open(live, "w") as f:
            f.write(PLAIN)
        r.proc.send_signal(signal.SIGHUP)

        def exact():
            return etcd.tree(PREFIX) == docker_truth(d, IP)
        t1 = time.time()
        try:
            wait_for(exact, 120, interval=0.5, what="etcd to equal the engine's truth")
            exact_ok, exact_s = True, time.time() - t1
        except AssertionError:
            exact_ok, exact_s = False, None
        time.sleep(8)  # register trims 2 s after the sync
        last = sample(r.proc.pid)
        last["label"] = "end"
        quiet.append(last)
        if first is None:
            first = quiet[0]
        growth = {k: (last[k] - first[k]) / first[k] * 100 if first[k] else 0.0
                  for k in ("rss_kb", "fds")}
        fd_ok = last["fds"] - first["fds"] <= max(2, first["fds"] * 0.05)
        rss_ok = growth["rss_kb"] <= 5.0
        cpu = last["cpu_s"] - first["cpu_s"]
        res = {"seed": seed, "minutes": a.minutes, "target_rate": a.rate,
               "achieved_rate": round(achieved, 1), **counts,
               "first": first, "last": last, "growth_pct": growth,
               "cpu_s_after_first_minute": round(cpu, 1),
               "cpu_pct": round(cpu / max(1, last["t"] - first["t"]) * 100, 1),
               "etcd_exact": exact_ok, "exact_after_s": exact_s, "quiet_points": quiet,
               "rss_ok": rss_ok, "fds_ok": fd_ok}
        print(f"| soak ({a.minutes:g} min, seed {seed}) | value |")
        print("|---|---|")
        print(f"| starts + removals | {counts['starts']} + {counts['removals']} "
              f"({achieved:.1f}/s achieved, {a.rate:g}/s asked; {counts['errors']} refused by the engine) |")
        print(f"| reloads (re-keying every container) | {counts['reloads']} |")
        print("| RssAnon daemon + worker at each quiet point (kB) | " +
              ", ".join(f"{q['label']}: {q['rss_daemon_kb']} + {q['rss_worker_kb']}" for q in quiet) + " |")
        print("| open fds at each quiet point | " +
              ", ".join(f"{q['label']}: {q['fds']}" for q in quiet) + " |")
        print(f"| RssAnon daemon + worker, after 1 min -> end | {first['rss_daemon_kb']} + "
              f"{first['rss_worker_kb']} -> {last['rss_daemon_kb']} + {last['rss_worker_kb']} kB "
              f"({growth['rss_kb']:+.1f} %) {'ok' if rss_ok else 'OVER 5 %'} |")
        print(f"| open fds, after 1 min -> end | {first['fds']} -> {last['fds']} "
              f"{'ok' if fd_ok else 'GREW'} |")
        print(f"| CPU (daemon + worker) after the first minute | {cpu:.1f} s ({res['cpu_pct']} % of one core) |")
        print(f"| etcd exact at the end | {'yes' if exact_ok else 'NO'}"
              f"{f', {exact_s:.1f} s after the churn' if exact_ok else ''} |")
        if a.json:
            with open(a.json, "w") as f:
                json.dump(res, f, indent=1)
        ok = exact_ok and rss_ok and fd_ok
        if not ok:
            out(r.output()[-3000:])
        return 0 if ok else 1
    finally:
        if r:
            r.cleanup()
        try:
            d.clean()
        except Exception:
            pass
        d.cleanup()
        etcd.cleanup()


if __name__ == "__main__":
    rc = main()
    if rc == 0:  # a failure's directories stay, with the logs
        remove_tmpdirs()
    sys.exit(rc)

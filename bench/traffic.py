#!/usr/bin/env python3
"""Zero failed requests, measured at a real haproxy: one command, prints a table.

    bench/traffic.py                      every scenario, 10 backends, 100 requests/s
    bench/traffic.py --backends 4 --rate 200 --scenarios deploy,stop
    bench/run.py traffic                  the same, from the bench suite (its build)
    bench/traffic.py --registrator BIN    registrator (bench/registrator.sh) in register's place

register (the daemon) follows a real dockerd of its own and writes the
default schema to a 3-member etcd 3.4 cluster (on tmpfs, loopback);
`register watch` renders haproxy 2.6's config from the keys (the renderer
of tests/integration/traffic.py: no retries, no redispatch), checks it
with `haproxy -c` and reloads haproxy's master (-W) with SIGUSR2.  An
open-loop client sends a fixed rate of requests through haproxy, each on
a new connection, and counts every one that is not a 2xx (refused, reset,
timeout, 5xx).  Backends are busybox httpd (a file names the container
that answers), registered once their health check passes
(SERVICE_CHECK_HTTP, every second, 1 s timeout, fall 2).  "graceful" backends serve 2 s
more after SIGTERM, then stop accepting, finish what is in flight and exit;
"abrupt" ones stop accepting at SIGTERM.

Scenarios (--scenarios, in this order; each runs under load, with 1 s of
load before it and 1.5 s after):
  deploy        rolling deploy of N graceful backends: start a new one, wait
                until haproxy routes to it, `docker stop` an old one
  deploy-abrupt the same with backends that stop accepting at SIGTERM (what
                it costs; no target)
  deploy-nocheck the same as deploy with backends that ask for no health
                check: registered at their start event, before httpd may
                listen (what it costs; no target)
  scale-down    N backends to 3, the others stopped at once
  scale-down-kill the same with `kill -USR2` alone as the reload command:
                haproxy 2.6's master drops a SIGUSR2 that comes while it
                reloads, so a change right after another waits for the next
                one (what it costs; no target).  Everywhere else the reload
                command waits until the master takes signals again
  stop          `docker stop` of one backend of 3
  check         one backend of 3 starts answering 404 (its health check
                fails); failures counted after fall x interval + 1 s
  policy        SIGHUP to register with a policy that names keys otherwise
                (and back): make-before-break, haproxy never loses a server
  restart       register stopped (SIGTERM) and started again; then killed
                (-9) and started again
  leader        the etcd leader killed -9, a backend replaced while it is
                down, the member started again
  etcd-down     every etcd member stopped for 5 s, then started; then a
                backend replaced (changes flow again)

Key -> reload: for each key event that changed haproxy's servers, the time
from its arrival at a v2 watch of /registered (within a millisecond or two
of the write) to the "Loading success." that haproxy's master prints when
the new worker of the first reload that began after the config with the
change was written is up (its stderr lines are time-stamped as they
arrive).  That is the debounce of register watch (--wait, default
20ms:250ms), the render, `haproxy -c` and haproxy's re-exec.

With --registrator, gliderlabs/registrator v7 (built by bench/registrator.sh)
registers the same backends in its own layout (/services/<name>/<id> =
ip:port; no TTL, deregistration at `die`, as it runs by default), and
register watch renders them with register.render.registrator_haproxy: the
same haproxy, load and measures, side by side.  Its scenarios are those
that do not need what registrator lacks (health checks, policies): deploy,
deploy-abrupt, scale-down, stop, restart, leader, etcd-down.

Needs root (dockerd), haproxy, etcd-server.  Not a test: the timings here
are measurements; tests/integration/test_traffic.py runs a deploy and a
stop and asserts no request fails.
"""
import argparse
import os
import signal
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(SRC, "tests", "integration"))

from toolkit import Cluster, log, remove_tmpdirs, wait_for  # noqa: E402
from trafficrig import ABRUPT, GRACEFUL, Rig, table  # noqa: E402

# the health checks: every second, 1 s timeout, two failures in a row
CHECKS = {"interval": 1.0, "timeout": 1.0, "fall": 2}

# registrator has no health checks of its own (etcd backend) and no policy
REGISTRATOR_SCENARIOS = ["deploy", "deploy-abrupt", "scale-down", "stop", "restart", "leader", "etcd-down"]
ALL = ["deploy", "deploy-abrupt", "deploy-nocheck", "scale-down", "scale-down-kill", "stop", "check", "policy",
       "restart", "leader", "etcd-down"]

DEFAULT_POLICY = 'return require "register.default"\n'
# the same records under other keys: <id>-v2 instead of <id>
RENAMED_POLICY = '''local default = require "register.default"
local policy = { prefix = default.prefix, checks = default.checks, key_order = default.key_order }
function policy.records(c, host)
  local recs = default.records(c, host)
  if not recs then return nil end
  local out = {}
  for k, v in pairs(recs) do out[k .. "-v2"] = v end
  return out
end
return policy
'''


class Bench:
    def __init__(self, a, register_bin):
        self.a = a
        self.bin = register_bin
        self.cleanups = []

    def defer(self, fn):
        self.cleanups.append(fn)

    def setup(self):
        from harness import Dockerd
        base = "/dev/shm" if os.path.isdir("/dev/shm") else "/tmp"
        etcd_base = tempfile.mkdtemp(prefix="rtraffic", dir=base)
        self.defer(lambda: __import__("shutil").rmtree(etcd_base, ignore_errors=True))
        self.cluster = Cluster(3, base=etcd_base)
        self.defer(self.cluster.cleanup)
        self.cluster.start(quorum=True)
        self.d = Dockerd()
        self.defer(self.d.cleanup)
        self.d.start()
        self.d.images()
        self.d.clean()
        self.policy = os.path.join(tempfile.mkdtemp(prefix="rtp"), "policy.lua")
        self.defer(lambda: __import__("shutil").rmtree(os.path.dirname(self.policy), ignore_errors=True))
        with open(self.policy, "w") as f:
            f.write(DEFAULT_POLICY)
        self.rig = Rig(self.d, self.cluster.endpoints(), self.bin, policy=self.policy, rate=self.a.rate,
                       checks=CHECKS, watch_extra=["--wait", self.a.wait] if self.a.wait else [],
                       watch_check=not self.a.no_check, shipped=self.a.shipped_renderer,
                       registrator=self.a.registrator)
        self.defer(self.rig.cleanup)
        self.rig.start()

    def cleanup(self):
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception as e:  # noqa: BLE001
                log("cleanup failed:", e)

    # -- helpers --
    def have(self, n, script=GRACEFUL, checks=True):
        """Exactly n backends of this kind, routed to (others removed)."""
        r = self.rig
        if r.backends:
            r.remove_all()
        for _ in range(n):
            r.backend(script, checks)

    def roll(self, script=GRACEFUL, checks=True):
        r = self.rig
        old = list(r.backends)
        new = []
        for cid in old:
            new.append(r.backend(script, checks))
            r.stop_backend(cid)
        return old, new

    def served(self, row, cids):
        got = set(row["backends"])
        return sum(1 for c in cids if c[:12] in got)

    # -- scenarios --
    def sc_deploy(self, name="deploy", script=GRACEFUL, checks=True, what="graceful"):
        n = self.a.backends
        self.have(n, script, checks)
        box = {}

        def act():
            box["old"], box["new"] = self.roll(script, checks)
        row = self.rig.scenario(f"{name} ({n})", act)
        row["note"] = (f"{n} {what} backends replaced one by one; the new ones answered: "
                       f"{self.served(row, box['new'])}/{n}")

    def sc_deploy_abrupt(self):
        self.sc_deploy("deploy, abrupt backends", ABRUPT, True, "abrupt (stop accepting at SIGTERM)")

    def sc_deploy_nocheck(self):
        self.sc_deploy("deploy, no health check", GRACEFUL, False, "graceful, unchecked")

    def sc_scale_down_kill(self):
        self.rig.start_watch(wait=False)
        try:
            self.sc_scale_down(" (reload: kill -USR2 alone)")
        finally:
            self.rig.start_watch()

    def sc_scale_down(self, what=""):
        n = max(self.a.backends, 4)
        self.have(n)

        def act():
            gone = self.rig.backends[: n - 3]
            ts = [threading.Thread(target=self.rig.stop_backend, args=(c,)) for c in gone]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
        row = self.rig.scenario(f"scale down ({n} → 3){what}", act)
        row["note"] = f"{n - 3} graceful backends stopped at once (docker stop)"
        if row["key_events_not_loaded"]:
            row["note"] += (f"; {row['key_events_not_loaded']} removals reached haproxy only with a later change "
                            f"(its reload was lost)")

    def sc_stop(self):
        self.have(3)
        row = self.rig.scenario("docker stop (1 of 3)", lambda: self.rig.stop_backend(self.rig.backends[0]))
        row["note"] = "graceful backend"

    def sc_check(self):
        self.have(3)
        sick = self.rig.backends[0]
        window = CHECKS["fall"] * CHECKS["interval"] + 1

        def act():
            t = time.time()
            self.d.docker("exec", sick, "rm", "/www/app")
            self.rig.wait_out(sick)
            return {"from": t + window}
        row = self.rig.scenario("health check fails (1 of 3)", act)
        row["note"] = (f"one backend answers 404 from t (its check fails); fall {CHECKS['fall']} x interval "
                       f"{CHECKS['interval']:g} s: failures before t + {window:g} s are expected")
        self.rig.stop_backend(sick, ("rm", "-f"))  # gone from haproxy already

    def sc_policy(self):
        self.have(3)

        def reload(text):
            with open(self.policy, "w") as f:
                f.write(text)
            out = self.rig.reg.output
            n = out().count(" reloaded: ")
            self.rig.reg.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: out().count(" reloaded: ") > n, 20, what="the policy reloaded")

        def act():
            reload(RENAMED_POLICY)
            wait_for(lambda: all(k.endswith("-v2") for k in self.cluster_keys()), 20, what="keys renamed")
            time.sleep(1)
            reload(DEFAULT_POLICY)
            wait_for(lambda: not any(k.endswith("-v2") for k in self.cluster_keys()), 20, what="keys back")
        row = self.rig.scenario("policy reload, keys renamed (and back)", act)
        row["note"] = (f"SIGHUP with a policy naming keys <id>-v2, then back; make-before-break: "
                       f"{len(row['keyless'])} moments with a running backend without a key")

    def cluster_keys(self):
        from toolkit import v2_tree
        for m in self.cluster.members:
            if m.proc:
                try:
                    return list(v2_tree(m.url, "/registered"))
                except OSError:
                    continue
        return []

    def sc_restart(self):
        self.have(3)

        def act():
            self.rig.reg.stop()
            self.rig.reg.cleanup()
            self.rig.start_register()
            time.sleep(2)
            self.rig.reg.kill9()
            self.rig.reg.cleanup()
            self.rig.start_register()
            time.sleep(2)
        who = "registrator" if self.a.registrator else "register"
        row = self.rig.scenario(f"{who} restarted (TERM, then -9)", act)
        row["note"] = f"3 backends{'' if self.a.registrator else ' (checked)'}; {who} stopped and started twice"

    def sc_leader(self):
        self.have(3)

        def act():
            leader = self.cluster.leader()
            leader.kill()
            old, new = self.roll_one()
            leader.start(wait=False)
            self.cluster.wait_healthy()
            return {"note": f"leader {leader.name} killed -9; one backend replaced meanwhile"}
        self.rig.scenario("etcd leader killed", act)

    def roll_one(self):
        old = self.rig.backends[0]
        new = self.rig.backend()
        self.rig.stop_backend(old)
        return old, new

    def sc_etcd_down(self):
        self.have(3)

        def act():
            for m in self.cluster.members:
                m.stop()
            time.sleep(5)
            self.cluster.start(quorum=True)
            self.roll_one()
            return {"note": "every member stopped 5 s; then one backend replaced"}
        self.rig.scenario("etcd down 5 s", act)

    def run(self):
        for name in self.a.scenarios:
            log(f"== {name}")
            n = len(self.rig.rows)
            getattr(self, "sc_" + name.replace("-", "_"))()
            if self.a.registrator:
                for row in self.rig.rows[n:]:
                    row["scenario"] = "registrator v7: " + row["scenario"]
        self.rig.remove_all()
        return self.rig.rows


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backends", type=int, default=10, help="N of the deploy and scale-down (10)")
    p.add_argument("--rate", type=float, default=100, help="requests per second (100)")
    p.add_argument("--scenarios", default=",".join(ALL), help="comma-separated, of: " + ",".join(ALL))
    p.add_argument("--wait", help="register watch's --wait MIN[:MAX] (its default: 20ms:250ms)")
    p.add_argument("--shipped-renderer", action="store_true",
                   help="render with register.render.haproxy (its defaults) instead of the rig's own renderer")
    p.add_argument("--registrator", metavar="BINARY",
                   help="gliderlabs/registrator (bench/registrator.sh builds v7) registers instead of register, "
                        "in its etcd layout (/services/<name>/<id> = ip:port), rendered by register watch with "
                        "register.render.registrator_haproxy; scenarios: " + ",".join(REGISTRATOR_SCENARIOS))
    p.add_argument("--no-check", action="store_true",
                   help="no --check (haproxy -c) before a reload: haproxy's own reload keeps the old worker "
                        "when the new config does not load")
    a = p.parse_args(argv)
    a.scenarios = [s for s in a.scenarios.split(",") if s]
    if a.registrator and a.scenarios == ALL:
        a.scenarios = REGISTRATOR_SCENARIOS
    bad = [s for s in a.scenarios if s not in (REGISTRATOR_SCENARIOS if a.registrator else ALL)]
    if bad:
        p.error(f"unknown scenario {', '.join(bad)}")
    return a


def run(register_bin, argv=None):
    """Runs the scenarios; returns the rows (without their requests)."""
    a = parse(argv)
    b = Bench(a, register_bin)
    try:
        b.setup()
        rows = b.run()
    finally:
        b.cleanup()
    log(f"rate {a.rate:g} requests/s; register watch --wait {a.wait or '(default)'}"
        f"{', no --check' if a.no_check else ''}"
        f"{', the shipped renderer' if a.shipped_renderer else ''}; load average {os.getloadavg()[0]:.2f}")
    return [{k: v for k, v in r.items() if k != "_recs"} for r in rows]


def on_sigterm(sig, frame):
    # as ^C: the finally blocks stop dockerd, haproxy, etcd and register
    # watch and remove the bridge (the default SIGTERM left them running)
    raise KeyboardInterrupt


def main():
    signal.signal(signal.SIGTERM, on_sigterm)
    binary = os.environ.get("REGISTER_BIN", os.path.join(SRC, "build", "register"))
    rows = run(binary, sys.argv[1:])
    print(table(rows))
    # its registers' directories (harness: they stay until the end, for
    # their logs); a run that failed leaves them
    remove_tmpdirs()


if __name__ == "__main__":
    main()

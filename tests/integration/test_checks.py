"""Active health checks on a real dockerd (issue 11), with the default
policy: a container that carries SERVICE_CHECK_* labels is registered only
while its checks pass; one without them is registered exactly as before.

busybox httpd serves a health file that `docker exec` removes and restores;
`nc -ll -e cat` accepts and holds (a TCP check); `nc -ll -e sleep`
accepts and never answers (a timeout); a published port nothing listens on
refuses.  Timing targets are in bench/checks_bench.c, not here: these tests
wait generously.
"""
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import (Dockerd, Etcd, Register, Suite, default_value,  # noqa: E402
                     inspect_bindings, wait_converged, wait_for)

IP = "10.3.3.3"
suite = Suite()
etcd = Etcd().start()
suite.defer(etcd.cleanup)
d = Dockerd().start()
suite.defer(d.cleanup)
d.images()
d.clean()

# half-second checks; two results in a row change the state
FAST = ["-l", "SERVICE_CHECK_INTERVAL=500ms", "-l", "SERVICE_CHECK_TIMEOUT=400ms",
        "-l", "SERVICE_CHECK_RISE=2", "-l", "SERVICE_CHECK_FALL=2"]
HTTPD = "busybox mkdir -p /www && busybox touch /www/health && exec busybox httpd -f -p 80 -h /www"
HOLD = "exec nc -ll -p 80 -e cat"  # accepts, keeps the connection until we close
SILENT = "exec nc -ll -p 80 -e sleep 3600"


def register():
    d.clean()
    etcd.etcdctl("rm", "--recursive", "/registered", check=False)
    r = Register("--etcd", etcd.url, "--docker", d.host, "--hostname", "node3", host_ip=IP).start()
    suite.defer(r.cleanup)
    r.wait_log("in sync")
    return r


def run(cmd, *args):
    """A bbx container publishing 80 on 127.0.0.1, running `sh -c cmd`."""
    return d.docker("run", "-d", "-p", "127.0.0.1::80", *args, "bbx", "sh", "-c", cmd)


def key(cid):
    return f"/registered/{IP}/bbx/{cid}"


def registered(cid):
    return key(cid) in etcd.tree()


def check_lines(r, cid):
    return [l for l in r.output().splitlines() if "check " in l and f"container={cid[:12]}" in l]


@suite.test
def http_check_follows_the_health_file():
    r = register()
    cid = run(HTTPD, *FAST, "-l", "SERVICE_CHECK_HTTP=/health")
    wait_for(lambda: registered(cid), 20, what="registered once the check passes")
    # the same bytes as without checks
    assert etcd.tree()[key(cid)] == default_value(cid, "bbx", inspect_bindings(d, cid))
    d.docker("exec", cid, "rm", "/www/health")
    wait_for(lambda: not registered(cid), 20, what="removed once the check fails")
    lines = check_lines(r, cid)
    assert any("check failing" in l and 'reason="HTTP 404"' in l and "port=80/tcp" in l
               and "GET /health" in l for l in lines), lines
    d.docker("exec", cid, "touch", "/www/health")
    wait_for(lambda: registered(cid), 20, what="back once the check passes again")
    assert any("check passing" in l and "was=failing" in l for l in check_lines(r, cid))
    d.docker("rm", "-f", cid)
    wait_for(lambda: not registered(cid), 20, what="removed with the container")
    r.stop()


@suite.test
def tcp_check_against_nc():
    r = register()
    cid = run("nc -ll -p 80 -e cat & echo $! > /nc.pid; exec sleep 3600", *FAST,
              "-l", "SERVICE_CHECK_TCP=true")
    wait_for(lambda: registered(cid), 20, what="registered while nc accepts")
    d.docker("exec", cid, "sh", "-c", "kill $(cat /nc.pid)")
    wait_for(lambda: not registered(cid), 20, what="removed once nothing listens")
    lines = check_lines(r, cid)
    # docker-proxy holds the published port: it accepts, then closes at once
    # when the container refuses
    assert any("check failing" in l and "check=tcp" in l and
               ("closed at once" in l or "refused" in l) for l in lines), lines
    r.stop()


@suite.test
def timeout_and_refused_are_never_registered():
    r = register()
    silent = run(SILENT, *FAST, "-l", "SERVICE_CHECK_HTTP=/")
    closed = run("exec sleep 3600", *FAST, "-l", "SERVICE_CHECK_HTTP=/")
    plain = run("exec sleep 3600")  # no labels: registered as always
    wait_for(lambda: registered(plain), 20, what="the container without checks")
    wait_for(lambda: any("check failing" in l for l in check_lines(r, silent)), 20,
             what="the silent server's check to fail")
    wait_for(lambda: any("check failing" in l for l in check_lines(r, closed)), 20,
             what="the refused port's check to fail")
    assert any('reason="timeout after 400 ms"' in l for l in check_lines(r, silent)), check_lines(r, silent)
    # through docker-proxy, which accepts and then resets: "Connection reset
    # by peer" (or closes: "without a response"); without it, refused
    assert any("without a response" in l or "reset by peer" in l or "refused" in l
               or "cannot connect" in l for l in check_lines(r, closed)), check_lines(r, closed)
    time.sleep(2)  # several more runs: still failing, still not registered
    assert not registered(silent) and not registered(closed)
    assert etcd.tree()[key(plain)] == default_value(plain, "bbx", inspect_bindings(d, plain))
    r.stop()


@suite.test
def containers_removed_while_their_check_is_in_flight():
    r = register()
    # the check hangs 2.5 s of every 3 s: removal almost always finds it in flight
    slow = ["-l", "SERVICE_CHECK_HTTP=/", "-l", "SERVICE_CHECK_INTERVAL=3s", "-l", "SERVICE_CHECK_TIMEOUT=2500ms"]
    rnd = random.Random(11)
    for _ in range(6):
        cid = run(SILENT, *slow)
        time.sleep(rnd.uniform(0.2, 3.0))
        d.docker("rm", "-f", cid)
    # still working: a new container with a passing check is registered
    cid = run(HTTPD, *FAST, "-l", "SERVICE_CHECK_HTTP=/health")
    wait_for(lambda: registered(cid), 20, what="registered after the removals")
    assert r.proc.poll() is None
    r.stop()  # exit 0: under ASan, no leak


@suite.test
def many_containers_with_checks_while_events_flow():
    r = register()
    checked = [run(HOLD, *FAST, "-l", "SERVICE_CHECK_TCP=true") for _ in range(15)]
    churn = []
    for i in range(15):
        churn.append(run("exec sleep 3600"))
        if i % 3 == 2:
            d.docker("rm", "-f", churn.pop(0))
    for cid in checked:
        wait_for(lambda: registered(cid), 30, what="every checked container registered")
    # everything running is registered, byte for byte
    wait_converged(etcd, d, IP, timeout=30)
    d.clean()
    wait_for(lambda: etcd.tree(f"/registered/{IP}") == {}, 30, what="all removed")
    r.stop()


suite.run()

"""Graceful drain on a real dockerd: a container's keys go when Docker
sends it its stop signal, while it still runs and serves (a load balancer
drains it), not at its die; a stop signal that did not stop it is undone
after its stop timeout and a margin; other signals change nothing."""
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from fake_docker import FakeDocker  # noqa: E402
from harness import LazyDockerd, Etcd, Register, Suite, tmpdir, wait_for  # noqa: E402

IP = "10.4.4.4"
suite = Suite()
etcd = Etcd().start()
suite.defer(etcd.cleanup)


d = LazyDockerd(suite)
# a service that, like a well-made one, goes on for 2 s after SIGTERM
GRACEFUL = ["sh", "-c", "trap 'sleep 2; exit 0' TERM; while :; do sleep 0.1; done"]
# one that ignores SIGTERM altogether
DEAF = ["sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"]


def key(cid):
    return f"/registered/{IP}/{d.image('bbx').replace('/', '::')}/{cid}"


def register():
    d.clean()
    etcd.etcdctl("rm", "--recursive", "/registered", check=False)
    r = Register("--etcd", etcd.url, "--docker", d.host, host_ip=IP).start()
    suite.defer(r.cleanup)
    r.wait_log("in sync")
    return r


def running(cid):
    return d.docker("inspect", "-f", "{{.State.Running}}", cid, check=False) == "true"


@suite.test
def docker_stop_drains_before_the_process_exits():
    r = register()
    cid = d.docker("run", "-d", "-p", "127.0.0.1::80", "bbx", *GRACEFUL)
    wait_for(lambda: key(cid) in etcd.tree(), what="registered")
    stopper = threading.Thread(target=d.docker, args=("stop", cid))
    t0 = time.time()
    stopper.start()
    # the key goes while the container still runs (its 2 s of grace)
    wait_for(lambda: key(cid) not in etcd.tree(), 5, interval=0.05, what="the key gone at the stop signal")
    gone_after = time.time() - t0
    assert running(cid), "the key went only at die"
    assert gone_after < 1.5, gone_after
    stopper.join()
    assert not running(cid)
    assert key(cid) not in etcd.tree()
    out = r.output()
    assert "stop signal: draining" in out and cid in out, out[-2000:]
    r.stop()


@suite.test
def a_stop_signal_that_did_not_stop_is_undone():
    r = register()
    cid = d.docker("run", "-d", "-p", "127.0.0.1::80", "--stop-timeout", "1", "bbx", *DEAF)
    wait_for(lambda: key(cid) in etcd.tree(), what="registered")
    value = etcd.tree()[key(cid)]
    d.docker("kill", "-s", "TERM", cid)
    wait_for(lambda: key(cid) not in etcd.tree(), 5, interval=0.05, what="drained at SIGTERM")
    assert running(cid)
    # its stop timeout (1 s) and the margin (5 s): registered again, as it was
    wait_for(lambda: key(cid) in etcd.tree(), 15, what="registered again")
    assert etcd.tree()[key(cid)] == value
    assert "still running after its stop signal: registered again" in r.output()
    # another signal is not a stop: nothing changes
    d.docker("kill", "-s", "HUP", cid)
    time.sleep(1)
    assert key(cid) in etcd.tree()
    # SIGKILL is always a stop
    d.docker("kill", cid)
    wait_for(lambda: key(cid) not in etcd.tree(), 5, what="gone at SIGKILL")
    r.stop()


@suite.test
def the_policy_sees_stopping():
    """A policy may keep a key while its container drains (here: marks it)."""
    pol = os.path.join(tmpdir("rp"), "p.lua")
    with open(pol, "w") as f:
        f.write('''local default = require "register.default"
return { prefix = default.prefix, records = function(c, host)
  return { ["/registered/" .. host.ip .. "/state/" .. c.id] = c.stopping and "draining" or "up" }
end }
''')
    d.clean()
    etcd.etcdctl("rm", "--recursive", "/registered", check=False)
    r = Register("--etcd", etcd.url, "--docker", d.host, "--policy", pol, host_ip=IP).start()
    suite.defer(r.cleanup)
    r.wait_log("in sync")
    cid = d.docker("run", "-d", "bbx", *GRACEFUL)
    k = f"/registered/{IP}/state/{cid}"
    wait_for(lambda: etcd.tree().get(k) == "up", what="up")
    stopper = threading.Thread(target=d.docker, args=("stop", cid))
    stopper.start()
    wait_for(lambda: etcd.tree().get(k) == "draining", 5, interval=0.05, what="draining")
    stopper.join()
    wait_for(lambda: k not in etcd.tree(), 5, what="gone at die")
    r.stop()


@suite.test
def stop_signals_by_any_name():
    """Config.StopSignal as Docker reads it: any Linux name, in any case,
    with or without SIG, RTMIN+n / RTMAX-n (systemd images stop with
    SIGRTMIN+3), or a number.  The fake Docker API: no dockerd needed."""
    fake = FakeDocker(os.path.join(tmpdir("rs"), "d.sock")).start()
    suite.defer(fake.stop)
    etcd.etcdctl("rm", "--recursive", "/registered", check=False)
    cases = [("SIGRTMIN+3", 37), ("rtmin+3", 37), ("SIGALRM", 14), ("tstp", 20), ("Sigwinch", 28),
             ("RTMAX-2", 62), ("SIGRTMAX", 64), ("30", 30)]
    cids = []
    for name, _ in cases:
        cid = fake.add(image="bbx")
        fake.containers[cid]["Config"]["StopSignal"] = name
        cids.append(cid)
    # a systemd image sent SIGTERM: not its stop signal, its key stays
    other = fake.add(image="bbx")
    fake.containers[other]["Config"]["StopSignal"] = "SIGRTMIN+3"
    r = Register("--etcd", etcd.url, "--docker", fake.host, host_ip=IP).start()
    suite.defer(r.cleanup)
    r.wait_log("in sync")

    def keyed(cid):
        return any(cid in k for k in etcd.tree())

    wait_for(lambda: all(keyed(c) for c in cids + [other]), what="registered")
    fake.emit(fake.event("kill", other, attrs={"signal": "15"}))
    for cid, (name, n) in zip(cids, cases):
        fake.emit(fake.event("kill", cid, attrs={"signal": str(n)}))
        wait_for(lambda: not keyed(cid), 5, interval=0.05, what=f"drained at {name} ({n})")
    assert keyed(other), "SIGTERM taken for a SIGRTMIN+3 image's stop signal"
    r.stop()


suite.run()

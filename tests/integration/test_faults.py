"""Never stale, never missing: real dockerd and real etcd broken on purpose.
etcd must end equal to Docker's truth after every fault."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import (Cluster, Dockerd, Etcd, Register, Suite,  # noqa: E402
                     docker_truth, wait_converged, wait_for)

IP = "10.6.6.6"
PREFIX = f"/registered/{IP}"
suite = Suite()
d = Dockerd().start()
suite.defer(d.cleanup)
d.images()
d.clean()
IMG = d.image("bbx").replace("/", "::")  # podman: localhost::bbx:latest


def register(etcd_url, *extra):
    r = Register("--etcd", etcd_url, "--docker", d.host, *extra, host_ip=IP).start()
    suite.defer(r.cleanup)
    return r


def new_etcd():
    e = Etcd().start()
    suite.defer(e.cleanup)
    return e


@suite.test
def dockerd_killed_and_restarted_while_containers_come_and_go():
    etcd = new_etcd()
    r = register(etcd.url)
    r.wait_log("in sync")
    a = d.run("--restart", "always", "-p", "127.0.0.1::80")
    b = d.run("-p", "127.0.0.1::80")
    c = d.run("-p", "127.0.0.1::80", "-p", "127.0.0.1::53/udp")
    wait_converged(etcd, d, IP)
    d.kill9()
    r.wait_log("Docker event stream ended")
    time.sleep(1)
    d.start()
    # containers come and go while register reconnects
    e = d.run("-p", "127.0.0.1::80")
    d.docker("rm", "-f", c, check=False)
    r.wait_log("docker: connected", count=2, timeout=30)
    wait_converged(etcd, d, IP, timeout=30)
    assert f"{PREFIX}/{IMG}/{e}" in etcd.tree()
    assert f"{PREFIX}/{IMG}/{c}" not in etcd.tree()
    # b had no restart policy: Docker stopped it when it came back
    assert (f"{PREFIX}/{IMG}/{b}" in etcd.tree()) == (b in d.docker("ps", "-q", "--no-trunc"))
    d.clean()
    wait_converged(etcd, d, IP)
    r.stop()


@suite.test
def etcd_stopped_while_containers_change_then_back():
    etcd = new_etcd()
    r = register(etcd.url)
    r.wait_log("in sync")
    a = d.run("-p", "127.0.0.1::80")
    b = d.run("-p", "127.0.0.1::80")
    wait_converged(etcd, d, IP)
    etcd.stop()
    d.docker("rm", "-f", a)
    c = d.run("-p", "127.0.0.1::80")
    r.wait_log("etcd: cannot write")
    for _ in range(5):  # an event storm during the outage: state, not a log
        x = d.run("-p", "127.0.0.1::80")
        d.docker("rm", "-f", x)
    time.sleep(2)
    etcd.start()
    wait_converged(etcd, d, IP, timeout=20)
    assert r.output().count("etcd: cannot") == 1, r.output()  # said once
    r.wait_log("etcd reachable again")
    d.clean()
    wait_converged(etcd, d, IP)
    r.stop()


@suite.test
def etcd_data_wiped_keys_come_back():
    etcd = new_etcd()
    r = register(etcd.url, "--ttl", "3")
    r.wait_log("in sync")
    d.run("-p", "127.0.0.1::80")
    d.run("-p", "127.0.0.1::80")
    wait_converged(etcd, d, IP)
    node = etcd.v2(next(iter(docker_truth(d, IP))))[0]["node"]
    assert 0 < node["ttl"] <= 3, node
    # a key that vanishes without any outage: the next refresh finds it gone
    gone = next(iter(docker_truth(d, IP)))
    etcd.etcdctl("rm", gone)
    r.wait_log("key vanished from etcd; writing it again")
    wait_converged(etcd, d, IP, timeout=5)
    # etcd restarted with no data at all; a key register never writes shows
    # the data went (register may write its own keys again at once)
    etcd.etcdctl("set", "/wiped-or-not", "here")
    etcd.wipe()
    etcd.start()
    assert etcd.v2("/wiped-or-not")[0].get("errorCode") == 100, "etcd kept its data"
    wait_converged(etcd, d, IP, timeout=15)
    d.clean()
    wait_converged(etcd, d, IP)
    r.stop()


@suite.test
def keys_deleted_by_hand_come_back_by_resync():
    etcd = new_etcd()
    r = register(etcd.url, "--resync", "1")
    r.wait_log("in sync")
    cid = d.run("-p", "127.0.0.1::80")
    wait_converged(etcd, d, IP)
    etcd.etcdctl("rm", f"{PREFIX}/{IMG}/{cid}")          # someone deletes a key
    etcd.etcdctl("set", f"{PREFIX}/{IMG}/{'e' * 64}", "stale")  # someone adds junk
    wait_converged(etcd, d, IP, timeout=10)
    d.clean()
    wait_converged(etcd, d, IP)
    r.stop()


@suite.test
def three_member_cluster_one_member_killed():
    cl = Cluster(3).start()
    suite.defer(cl.cleanup)
    r = register(cl.endpoints())
    r.wait_log("in sync")
    a = d.run("-p", "127.0.0.1::80")
    wait_for(lambda: f"{PREFIX}/{IMG}/{a}" in cl.members[1].tree(PREFIX), what="registered")
    cl.members[0].kill()  # the first endpoint, the one in use
    b = d.run("-p", "127.0.0.1::80")
    d.docker("rm", "-f", a)
    reader = cl.members[2]
    wait_for(lambda: reader.tree(PREFIX) == docker_truth(d, IP), 20,
             what="registration through the surviving members")
    out = reader.etcdctl("ls", "--recursive", PREFIX)
    assert f"{PREFIX}/{IMG}/{b}" in out, out
    d.clean()
    wait_for(lambda: reader.tree(PREFIX) == {}, 20, what="removal through the others")
    r.stop()


@suite.test
def register_killed_with_ttl_keys_expire_restart_has_no_gap():
    etcd = new_etcd()
    r = register(etcd.url, "--ttl", "4")
    r.wait_log("in sync")
    keep = d.run("-p", "127.0.0.1::80")
    going = d.run("-p", "127.0.0.1::80")
    wait_converged(etcd, d, IP)
    # kill -9 and start again at once: the keys never vanish, and a key
    # whose container went meanwhile is removed at start
    idx = etcd.index()
    r.kill9()
    d.docker("rm", "-f", going)
    r2 = register(etcd.url, "--ttl", "4")
    r2.wait_log("in sync")
    wait_converged(etcd, d, IP)
    time.sleep(5)  # longer than the TTL: refreshes keep it alive
    wait_converged(etcd, d, IP)
    evs = etcd.events_since(idx, PREFIX)  # the whole history, or an error
    lost = [e for e in evs if e["action"] in ("expire", "delete") and keep in e["node"]["key"]]
    assert not lost, lost
    assert any(e["action"] == "delete" and going in e["node"]["key"] for e in evs), evs
    # kill -9 and stay dead: every key of the host expires
    r2.kill9()
    wait_for(lambda: etcd.tree(PREFIX) == {}, 10, what="keys to expire")
    r3 = register(etcd.url, "--ttl", "4")
    r3.wait_log("in sync")
    wait_converged(etcd, d, IP)
    d.clean()
    wait_converged(etcd, d, IP)
    r3.stop()


suite.run()

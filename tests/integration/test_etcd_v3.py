"""etcd v3 through the JSON gateway: the same keys and values as v2, one
lease per daemon (expiry after kill -9, kept across a quick restart,
replaced when lost), paginated listings, one-request prefix deletion."""
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from fake_docker import FakeDocker  # noqa: E402
from harness import Etcd, Register, Suite, tmpdir, wait_for  # noqa: E402

IP = "10.8.8.8"
PREFIX = f"/registered/{IP}"
suite = Suite()
etcd = Etcd().start()
suite.defer(etcd.cleanup)
fake = FakeDocker(os.path.join(tmpdir("rf"), "d.sock")).start()
suite.defer(fake.stop)


def v3_tree(prefix=PREFIX):
    """{key: value} via etcdctl (v3), independent of register."""
    out = etcd.etcdctl("get", "--prefix", prefix + "/", "-w", "json", api="3")
    doc = json.loads(out)
    import base64
    return {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv["value"]).decode()
            for kv in doc.get("kvs", [])}


def v3_leases(prefix=PREFIX):
    out = etcd.etcdctl("get", "--prefix", prefix + "/", "-w", "json", api="3")
    return {kv.get("lease", 0) for kv in json.loads(out).get("kvs", [])}


def revision():
    return json.loads(etcd.etcdctl("get", "/", "-w", "json", api="3"))["header"]["revision"]


def register(*extra):
    r = Register("--etcd", etcd.url, "--docker", fake.host, *extra, host_ip=IP).start()
    suite.defer(r.cleanup)
    return r


def reset():
    for c in list(fake.containers):
        fake.remove(c)
    etcd.etcdctl("del", "--prefix", "/registered", api="3", check=False)
    etcd.etcdctl("rm", "--recursive", "/registered", check=False)


@suite.test
def v3_output_equals_v2_output():
    reset()
    fake.add(ports=[("53/udp", [("127.0.0.1", "5353")]), ("80/tcp", [("127.0.0.1", "1"), ("127.0.0.2", "2")])])
    fake.add(image="localhost:5000/team/web:1.2", ports=[("8080/tcp", [("0.0.0.0", "40000")])])
    fake.add(image="quote\"back\\slash", ports=[("80/tcp", [("127.0.0.1", "3")])])
    r2 = register("--etcd-api", "v2")
    r3 = register("--etcd-api", "v3")
    r2.wait_log("in sync")
    r3.wait_log("in sync")
    wait_for(lambda: len(v3_tree()) == 3, what="v3 keys")
    v2 = etcd.tree(PREFIX)
    assert len(v2) == 3
    # etcdctl for both: v2 "ls"/"get" and v3 "get --prefix"
    for key in v2:
        assert etcd.etcdctl("get", key).rstrip("\n") == v2[key]
    assert v3_tree() == v2, (v3_tree(), v2)
    r2.stop()
    r3.stop()


@suite.test
def lease_expires_after_kill_9_and_restart_keeps_it():
    reset()
    a = fake.add()
    r = register("--etcd-api", "v3", "--ttl", "4")
    r.wait_log("in sync")
    wait_for(lambda: len(v3_tree()) == 1, what="registered")
    leases = v3_leases()
    assert len(leases) == 1 and 0 not in leases, leases
    # kill -9 and start again at once: the lease is still alive and kept,
    # so nothing is written again (no watcher sees anything)
    r.kill9()
    rev = revision()
    r2 = register("--etcd-api", "v3", "--ttl", "4")
    r2.wait_log("in sync")
    r2.wait_log("of the previous run")
    time.sleep(5)  # longer than the TTL: keep-alives work for the adopted lease
    assert len(v3_tree()) == 1 and v3_leases() == leases
    assert revision() == rev, "a restart with the lease alive must write nothing"
    # kill -9 and stay dead: the lease expires and the keys with it
    r2.kill9()
    wait_for(lambda: v3_tree() == {}, 10, what="keys to expire with the lease")
    # started again: a new lease, keys back
    r3 = register("--etcd-api", "v3", "--ttl", "4")
    r3.wait_log("in sync")
    wait_for(lambda: len(v3_tree()) == 1, what="registered again")
    assert v3_leases() != leases
    fake.remove(a)
    r3.stop()


@suite.test
def restart_with_a_write_outside_the_prefix_keeps_the_lease():
    """A write that needs the lease before the previous run's lease is
    adopted (the fleet policy's report, outside the prefix, goes at once)
    waits for the adoption: a grant meanwhile replaced the lease the
    listed keys hang on, they expired with it and were never written
    again (the fleet benchmark found it)."""
    reset()
    a = fake.add()
    args = ("--etcd-api", "v3", "--ttl", "4", "--policy-key", "/v3restart/policy",
            "--policy-unsigned", "--state-dir", tmpdir("rst"))
    r = register(*args)
    r.wait_log("in sync")
    wait_for(lambda: len(v3_tree()) == 1, what="registered")
    leases = v3_leases()
    for _ in range(3):  # the race is in the order of two answers: try it thrice
        r.stop()
        r = register(*args)
        r.wait_log("in sync")
        time.sleep(6)  # past the TTL: the keys' lease is kept alive
        assert len(v3_tree()) == 1, (v3_tree(), r.output()[-2000:])
        assert v3_leases() == leases, (v3_leases(), leases)
        status = etcd.etcdctl("get", "/v3restart/status/" + IP, "-w", "json", api="3")
        assert [kv["lease"] for kv in json.loads(status)["kvs"]] == [list(leases)[0]], status
    fake.remove(a)
    r.stop()
    etcd.etcdctl("del", "--prefix", "/v3restart", api="3", check=False)


@suite.test
def lost_lease_is_replaced_and_keys_rewritten():
    reset()
    fake.add()
    fake.add()
    r = register("--etcd-api", "v3", "--ttl", "3")
    r.wait_log("in sync")
    wait_for(lambda: len(v3_tree()) == 2, what="registered")
    (lease,) = v3_leases()
    etcd.etcdctl("lease", "revoke", "%x" % int(lease), api="3")
    assert v3_tree() == {}  # revoking deletes the keys
    r.wait_log("is gone (expired or revoked)", timeout=10)
    wait_for(lambda: len(v3_tree()) == 2, 10, what="keys written again")
    assert v3_leases() != {lease}
    r.stop()


@suite.test
def ttl_off_makes_leased_keys_permanent():
    reset()
    fake.add()
    r = register("--etcd-api", "v3", "--ttl", "5")
    r.wait_log("in sync")
    wait_for(lambda: len(v3_tree()) == 1)
    r.kill9()
    r2 = register("--etcd-api", "v3")  # no TTL now: the keys must not expire
    r2.wait_log("in sync")
    wait_for(lambda: v3_leases() == {0}, what="keys without a lease")
    r2.stop()


@suite.test
def large_prefix_is_listed_in_pages():
    reset()
    for i in range(1500):
        fake.add(ports=[("80/tcp", [("127.0.0.1", str(10000 + i))])])
    r = register("--etcd-api", "v3")
    r.wait_log("in sync", timeout=60)
    wait_for(lambda: len(v3_tree()) == 1500, 30, what="1500 keys")
    r.stop()
    rev = revision()
    r2 = register("--etcd-api", "v3")
    r2.wait_log("in sync", timeout=60)
    assert "etcd: 1500 keys under" in r2.output(), r2.output()[-2000:]
    assert revision() == rev, "a restart must not rewrite what is listed"
    # a stale key beyond the first page is found and removed
    stale = f"{PREFIX}/bbx/{'f' * 64}"
    etcd.etcdctl("put", stale, "stale", api="3")
    r2.stop()
    r3 = register("--etcd-api", "v3", "--deregister-on-exit")
    r3.wait_log("in sync", timeout=60)
    wait_for(lambda: stale not in v3_tree(), what="stale key removed")
    assert "write fence" in etcd.etcdctl("get", "/register/fence/" + IP, api="3")  # r3 wrote
    r3.stop()  # deregister: the whole prefix in one request
    assert "deleted " + PREFIX + " in one request" in r3.output()
    assert v3_tree() == {}
    # and the host's write fence after it: nothing of the host is left
    assert etcd.etcdctl("get", "/register/fence/" + IP, api="3") == ""
    for c in list(fake.containers):
        fake.remove(c)


suite.run()

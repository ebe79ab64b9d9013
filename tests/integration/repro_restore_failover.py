"""A reproduction, not a test (no ctest entry): a snapshot restore that
register does not notice when, during the restore's downtime, it fails over
to a member it has never heard from and then only keeps its lease alive
(found by bench/chaos.py --etcd-faults, seed 595391108; docs/fleet.md).

One register (v3, --etcd naming the first member only, so that every
request goes there; the member list adds the other two), two containers.
A snapshot is saved; one container stops (register deletes its key through
the first member, at a revision above the snapshot's); every member is
stopped and restored from the snapshot; the second and third are started,
the first stays down.  register's keep-alives move to the second member:
its lease is in the snapshot, so they succeed, and nothing else is sent.
Expected: `etcd went back in time` and the stopped container's key deleted
again within 15 s.  What register does (2026-12-06): nothing; the key the
restore brought back stays until the 5-minute audit.

Exit 0 when register noticed (the bug is fixed), 1 when it did not.
`sudo` is not needed; loopback only; about 30 s."""
import base64
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from fake_docker import FakeDocker  # noqa: E402
from harness import Cluster, Register, log, sh, tmpdir, wait_for  # noqa: E402

IP = "10.22.22.23"
PREFIX = f"/registered/{IP}"


def tree(member):
    out = member.etcdctl("get", "--prefix", PREFIX + "/", "-w", "json", api="3")
    return {base64.b64decode(kv["key"]).decode() for kv in json.loads(out).get("kvs", [])}


def main():
    cluster = Cluster(3)
    fdir = tmpdir("rf")
    fake = FakeDocker(os.path.join(fdir, "d.sock"))
    r = None
    try:
        cluster.start()
        fake.start()
        m0, m1, m2 = cluster.members
        keep, gone = fake.add(), fake.add()
        r = Register("--etcd", m0.url, "--docker", fake.host, "--etcd-api", "v3", "--ttl", "10",
                     "--log-level", "debug", host_ip=IP).start()
        r.wait_log("in sync")
        r.wait_log("from the member list")
        wait_for(lambda: len(tree(m0)) == 2, 10, what="both keys")
        snap = os.path.join(fdir, "snap.db")
        m0.etcdctl("snapshot", "save", snap, api="3")
        fake.die(gone)  # its key deleted through m0, after the snapshot
        wait_for(lambda: len(tree(m0)) == 1, 10, what="the stopped container's key deleted")
        # every member restored from the snapshot; m0 stays down
        init = ",".join(f"{m.name}={m.peer_url}" for m in cluster.members)
        for m in cluster.members:
            m.stop()
        for m in cluster.members:
            data = os.path.join(m.dir, "data")
            shutil.rmtree(data)
            sh("etcdctl", "snapshot", "restore", snap, "--name", m.name, "--data-dir", data,
               "--initial-cluster", init, "--initial-advertise-peer-urls", m.peer_url,
               "--initial-cluster-token", "etcd-cluster", env=dict(os.environ, ETCDCTL_API="3"))
        m1.start(wait=False)
        m2.start(wait=False)
        m1.wait_ready(30)
        back = tree(m1)
        log(f"restored: {len(back)} keys (the stopped container's is back: "
            f"{any(gone in k for k in back)})")
        t0 = time.time()
        noticed = False
        while time.time() - t0 < 15:
            if "went back in time" in r.output() and not any(gone in k for k in tree(m1)):
                noticed = True
                break
            time.sleep(0.5)
        lines = [ln for ln in r.output().splitlines() if ln > "" and ("etcd" in ln)][-12:]
        log("register's last etcd lines:\n" + "\n".join(lines))
        if noticed:
            log(f"register noticed the restore and deleted the key again after {time.time() - t0:.1f} s")
            return 0
        log("REPRODUCED: 15 s after the restore register has not noticed it; the stopped "
            f"container's key is {'still back' if any(gone in k for k in tree(m1)) else 'gone'}")
        return 1
    finally:
        if r:
            r.cleanup()
        fake.stop()
        cluster.cleanup()
        shutil.rmtree(fdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

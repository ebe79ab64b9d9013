"""Issue 22: the etcd failures that lose keys, on a real etcd 3.4 with the
fake Docker API: a snapshot restored under register (etcd goes back in
time: keys deleted since are back, keys written since are gone, the lease
is alive and nothing looks like an outage), a permission revoked and
granted back, JWT tokens made stale by an auth change, keep-alives that
fail (said at warn) and keep-alives after a password change.

Each test starts its own etcd (free loopback ports) and fake Docker and
stops them, with everything in its temporary directories, when it ends.
`python3 test_etcd_failures.py NAME...` runs some of them."""
import base64
import json
import re
import urllib.error
import urllib.parse
import urllib.request
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from fake_docker import FakeDocker  # noqa: E402
from harness import Cluster, Etcd, Register, Suite, default_value, free_port, log, sh, tmpdir, wait_for  # noqa: E402
from toolkit import HttpServer, run_netns_mounted, run_netns_unmount, v2_tree_index  # noqa: E402

IP = "10.22.22.22"
PREFIX = f"/registered/{IP}"
ROOT = "root:rootpw"
suite = Suite()


class Env:
    """One test's etcd, fake Docker and registers; all gone on exit."""

    def __init__(self, etcd_extra=(), members=1, ip="127.0.0.1"):
        self.cleanups = []
        self.cluster = Cluster(members) if members > 1 else None
        self.etcd = self.cluster.members[0] if self.cluster else Etcd(extra=etcd_extra, ip=ip)
        self.endpoints = self.cluster.endpoints() if self.cluster else self.etcd.url
        self.cleanups.append(self.cluster.cleanup if self.cluster else self.etcd.cleanup)
        self.fdir = tmpdir("rf")
        self.cleanups.append(lambda: shutil.rmtree(self.fdir, ignore_errors=True))
        self.fake = FakeDocker(os.path.join(self.fdir, "d.sock"))
        self.auth = None  # "user:password" for etcdctl once auth is on

    def __enter__(self):
        try:
            (self.cluster or self.etcd).start()
            self.fake.start()
            self.cleanups.append(self.fake.stop)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        for c in reversed(self.cleanups):
            try:
                c()
            except Exception as e:
                log("cleanup failed:", e)
        return False

    def register(self, *extra, netns=None):
        r = Register("--etcd", self.endpoints, "--docker", self.fake.host, *extra, host_ip=IP,
                     netns=netns).start()
        # before the etcd and the fake go (cleanups run in reverse)
        self.cleanups.append(r.cleanup)
        return r

    def ctl3(self, *args, check=True):
        auth = ["--user", self.auth] if self.auth else []
        return self.etcd.etcdctl(*auth, *args, api="3", check=check)

    def v3_tree(self):
        doc = json.loads(self.ctl3("get", "--prefix", PREFIX + "/", "-w", "json"))
        return {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv["value"]).decode()
                for kv in doc.get("kvs", [])}

    def tree(self, api):
        return self.v3_tree() if api == "v3" else self.etcd.tree(PREFIX)

    def expected(self):
        """What the default policy must have written for the running containers."""
        out = {}
        for c in self.fake.running():
            binds = []
            for port, bl in c["NetworkSettings"]["Ports"].items():
                if bl is None:
                    continue
                p, _, proto = port.partition("/")
                binds += [(b["HostIp"], b["HostPort"], p, proto) for b in bl]
            if binds:
                img = c["Config"]["Image"].replace("/", "::")
                out[f"{PREFIX}/{img}/{c['Id']}"] = default_value(c["Id"], img, binds)
        return out

    def converged(self, api, timeout=15, what="etcd to equal the fake Docker's truth"):
        state = {}

        def ok():
            want, got = self.expected(), self.tree(api)
            state["diff"] = {"missing": sorted(set(want) - set(got)),
                             "stale": sorted(set(got) - set(want)),
                             "wrong": sorted(k for k in want if k in got and got[k] != want[k])}
            return got == want
        try:
            wait_for(ok, timeout, interval=0.2, what=what)
        except AssertionError as e:
            raise AssertionError(f"{e}; {state.get('diff')}")

    def start_new(self, n):
        """n new running containers, each announced by a start event."""
        ids = []
        for _ in range(n):
            cid = self.fake.add()
            self.fake.start_container(cid)
            ids.append(cid)
        return ids

    def v3_auth(self, user="reg:regpw"):
        """root, and a user whose role may read and write this host's prefix
        and its write fence only (README's RBAC example); auth on.  etcdctl goes as root from now on."""
        name = user.split(":")[0]
        for cmd in (["user", "add", ROOT], ["user", "add", user], ["role", "add", "regrole"],
                    ["role", "grant-permission", "regrole", "--prefix=true", "readwrite", PREFIX + "/"],
                    ["role", "grant-permission", "regrole", "readwrite", f"/register/fence/{IP}"],
                    ["user", "grant-role", name, "regrole"], ["auth", "enable"]):
            self.ctl3(*cmd)
        self.auth = ROOT


def healthz(port):
    """register's /healthz: (status, its JSON)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def log_line(r, level, text):
    """The lines of register's log at level (text format) that contain text."""
    return [ln for ln in r.output().splitlines() if f" {level} " in ln and text in ln]


def wait_line(r, level, text, timeout=20, after=0):
    """The lines as log_line(), once there are more than after of them (a
    test that waits for something new counts the old ones first)."""
    wait_for(lambda: len(log_line(r, level, text)) > after, timeout, interval=0.1,
             what=f"a {level} line {text!r}" + (f" after the {after} before" if after else ""))
    return log_line(r, level, text)


def wired():
    """The rewound callback is wired to a resync in app.c (the lead's part)."""
    with open(os.path.join(os.path.dirname(__file__), "..", "..", "src", "app.c")) as f:
        return "rewound" in f.read()


# ---- a. a snapshot restored under register ----

def snapshot_restore(api):
    with Env() as env:
        first = [env.fake.add() for _ in range(3)]
        port = free_port()
        r = env.register("--etcd-api", api, "--ttl", "10", "--metrics", f"127.0.0.1:{port}")
        r.wait_log("in sync")
        env.converged(api)

        def sample(name):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as m:
                for line in m.read().decode().splitlines():
                    if line.startswith(name + " "):
                        return float(line.split()[1])
            raise AssertionError(f"no {name} in /metrics")
        wait_for(lambda: sample("register_etcd_compared_timestamp_seconds") > 0, 10,
                 what="the first comparison with etcd")
        assert sample("register_etcd_drift_total") == 0
        snap = os.path.join(env.etcd.dir, "snap.db")
        env.ctl3("snapshot", "save", snap)
        # after the snapshot: two stop, two others start
        for cid in first[:2]:
            env.fake.die(cid)
        env.start_new(2)
        env.converged(api, what="etcd to follow the changes after the snapshot")
        before = env.tree(api)
        # etcd restored from the snapshot: same name, peer URL, cluster
        # token and client URL, in a fresh data directory
        env.etcd.stop()
        env.etcd.restore(snap)
        env.etcd.start()
        restored = env.tree(api)
        assert restored != before, "the restore changed nothing: the test proves nothing"
        log(f"{api}: restored {len(restored)} keys, Docker has {len(env.expected())}")
        t0 = time.time()
        # etcd.c's line names what it saw ("revision 7 after 12 at URL");
        # app.c may say it again in its own words
        lines = wait_line(r, "warn", "etcd went back in time: ", timeout=15)
        assert "a restored snapshot?" in lines[0] and "checking every key" in lines[0], lines
        env.converged(api, timeout=max(1, 15 - (time.time() - t0)), what="etcd to converge after the restore")
        # the read after the restore found keys otherwise than believed, and
        # etcd was compared (and found equal, repaired) after the restore
        wait_for(lambda: sample("register_etcd_compared_timestamp_seconds") >= t0 - 1, 10,
                 what="a comparison after the restore")
        assert sample("register_etcd_drift_total") >= 2, sample("register_etcd_drift_total")
        # one detection, one line
        time.sleep(4)
        assert len(log_line(r, "warn", "went back in time: ")) == 1, log_line(r, "warn", "went back in time")
        env.converged(api, timeout=1)
        r.stop()


@suite.test
def an_etcd_wiped_then_written_by_others_first_is_noticed_by_the_fence_v3():
    """etcd wiped and started again at the same address (the same cluster
    id), and other hosts write before this one: its revision is ahead of
    what register saw, so no revision or term says it went back in time.
    This host's next write finds its write fence gone (moved, not by it):
    that is the sign.  Every key is read again and the missing ones put
    back (they stayed missing until the 5-minute audit, with register
    in sync)."""
    with Env() as env:
        for _ in range(3):
            env.fake.add()
        r = env.register("--etcd-api", "v3")
        r.wait_log("in sync")
        env.converged("v3")
        env.etcd.wipe()
        env.etcd.start()
        for i in range(30):  # the fleet's other hosts register first
            env.ctl3("put", f"/registered/10.9.9.{i}/x/k", "v")
        env.start_new(1)  # this host writes: its fence is gone
        lines = wait_line(r, "warn", "the write fence moved, not by this register", timeout=15)
        assert "checking every key" in lines[0], lines
        env.converged("v3", timeout=10, what="every key of this host back after the wipe")
        r.stop()


def new_cluster_at_the_same_address(api):
    """etcd replaced by a new cluster (another cluster id) at the same
    address, and nothing changes on this host: no write, no TTL.  The
    member list, read every 30 s, carries the cluster id; it was not
    looked at, and the keys stayed missing until the audit."""
    with Env() as env:
        for _ in range(3):
            env.fake.add()
        r = env.register("--etcd-api", api)
        r.wait_log("in sync")
        env.converged(api)
        env.etcd.wipe()
        env.etcd.extra += ["--initial-cluster-token", "another-cluster"]
        env.etcd.start()
        t0 = time.time()
        lines = wait_line(r, "warn", "etcd went back in time: cluster id", timeout=45)
        assert "a new or rebuilt cluster?" in lines[0], lines
        env.converged(api, timeout=10, what="every key of this host in the new cluster")
        log(f"noticed and repaired {time.time() - t0:.1f} s after the new cluster started")
        r.stop()


@suite.test
def a_new_cluster_at_the_same_address_is_noticed_v2():
    new_cluster_at_the_same_address("v2")


@suite.test
def a_new_cluster_at_the_same_address_is_noticed_v3():
    new_cluster_at_the_same_address("v3")


@suite.test
def keys_changed_behind_registers_back_are_repaired_with_a_warning():
    """One key deleted by hand, one overwritten: the next read of the
    prefix (here --resync 2) repairs both, and says so at warn (the repair
    was logged at info only, as a registration)."""
    with Env() as env:
        for _ in range(3):
            env.fake.add()
        r = env.register("--etcd-api", "v3", "--resync", "2")
        r.wait_log("in sync")
        env.converged("v3")
        keys = sorted(env.v3_tree())
        env.ctl3("del", keys[0])
        env.ctl3("put", keys[1], "garbage")
        wait_line(r, "warn", "otherwise than it wrote them", timeout=15)
        env.converged("v3", timeout=10, what="both keys repaired")
        # one line, or two if a read came between the delete and the put
        found = [int(n) for n in re.findall(r"etcd held (\d+) of register's keys", r.output())]
        assert sum(found) == 2, found
        r.stop()


@suite.test
def snapshot_restore_v3_converges():
    if not wired():
        log("note: app.c does not wire etcd's rewound callback yet: this test is expected to fail")
    snapshot_restore("v3")


def restore_unseen(stall, why):
    """A snapshot restored while this host could not see etcd (stall()
    makes it so and returns the function that ends it), and the other hosts
    wrote first once it was back: their writes take the revision past
    anything this host had seen, the lease is in the snapshot and its
    keep-alives work again, and no answer shows a rewind (same cluster,
    same members, a revision ahead).  The stopped container's key came
    back with the snapshot and the new one's was missing, until the
    5-minute audit (the chaos run with --etcd-faults, seed 211068171).
    Having lost touch is the sign: the prefix is read again."""
    with Env() as env:
        first = [env.fake.add() for _ in range(3)]
        r = env.register("--etcd-api", "v3", "--ttl", "10")
        r.wait_log("in sync")
        env.converged("v3")
        snap = os.path.join(env.etcd.dir, "snap.db")
        env.ctl3("snapshot", "save", snap)
        env.fake.die(first[0])
        env.start_new(1)
        env.converged("v3", what="etcd to follow the changes after the snapshot")
        # a loaded machine may have seen etcd answer late already (the
        # snapshot's fsync): only what comes after counts
        rechecks = len(log_line(r, "info", "reading the prefix again to check that nothing went back"))
        resume = stall(env, r)
        env.etcd.stop()  # (already, for the outage)
        env.etcd.restore(snap)
        env.etcd.start()
        assert env.tree("v3") != env.expected(), "the restore changed nothing: the test proves nothing"
        for i in range(20):  # the fleet's other hosts write first
            env.ctl3("put", f"/registered/10.9.9.{i}/x/k", "v")
        resume()
        env.converged("v3", timeout=15, what="the stale key gone and the missing one back")
        lines = wait_line(r, "info", "reading the prefix again to check that nothing went back",
                          timeout=1, after=rechecks)
        assert why in lines[-1], (why, lines[-1])  # the sign this stall leaves
        r.stop()


@suite.test
def snapshot_restore_while_the_host_was_stopped_v3():
    """register stopped (SIGSTOP, a frozen VM) for 8 s of a 10 s TTL across
    the restore: its first keep-alive after works, 8 s after the last."""
    def stall(env, r):
        r.proc.send_signal(signal.SIGSTOP)
        t0 = time.time()

        def resume():
            time.sleep(max(0, 8 - (time.time() - t0)))
            r.proc.send_signal(signal.SIGCONT)
        return resume
    restore_unseen(stall, "without a renewal")


@suite.test
def snapshot_restore_while_etcd_was_out_of_reach_v3():
    """etcd down long enough for a keep-alive to fail (its next try is a
    third of the TTL later: the restore and the other hosts' writes come
    first): the first answer after every endpoint failed."""
    def stall(env, r):
        # a keep-alive that failed before (etcd slow under load) is no sign
        # of this outage: its line would be there already
        failed = len(log_line(r, "warn", "keep-alive of lease"))
        if failed:
            log(f"note: {failed} keep-alive failure(s) before the outage (a loaded machine)")
        env.etcd.stop()  # and restored before it starts again
        wait_line(r, "warn", "keep-alive of lease", timeout=15, after=failed)
        return lambda: None
    # a stopped etcd refuses connections: that is every endpoint failing
    # too (the keep-alive may work again before 0.7 TTL: a quick restart)
    restore_unseen(stall, "answers after every endpoint failed")


@suite.test
def snapshot_restore_v2_converges():
    # a v3 snapshot holds no v2 keys: the restored v2 store is empty and its
    # index back at the start; register must see it and write everything
    snapshot_restore("v2")


# ---- failover is not going back in time ----

@suite.test
def failover_between_members_is_not_a_rewind():
    # members stopped and started one after the other under load: register
    # moves between members, some of them behind the others while they
    # catch up; none of that is a rewind
    for api in ("v3", "v2"):
        with Env(members=3) as env:
            m = env.cluster.members
            ids = [env.fake.add() for _ in range(3)]
            r = env.register("--etcd-api", api, "--ttl", "6", "--log-level", "debug")
            r.wait_log("in sync")
            env.converged(api)
            for down, reader in ((0, 1), (1, 2), (2, 0)):
                m[down].stop()
                env.etcd = m[reader]
                env.fake.die(ids.pop(0))
                ids += env.start_new(2)
                env.converged(api, timeout=20)
                m[down].start(wait=False)
                ids += env.start_new(1)
                time.sleep(3)  # keep-alives, refreshes, the member catching up
                m[down].wait_ready()
            env.converged(api, timeout=20)
            assert not log_line(r, "warn", "went back in time"), log_line(r, "warn", "went back in time")
            r.stop()


# ---- b. a permission revoked and granted back ----

@suite.test
def permission_revoked_and_granted_back_converges():
    with Env() as env:
        env.v3_auth()
        a, b, c = (env.fake.add() for _ in range(3))
        port = free_port()
        r = env.register("--etcd-api", "v3", "--ttl", "10", "--etcd-user", "reg:regpw",
                         "--metrics", f"127.0.0.1:{port}")
        r.wait_log("in sync")
        env.converged("v3")

        assert healthz(port)[0] == 200
        env.ctl3("role", "revoke-permission", "regrole", PREFIX + "/", "--prefix=true")
        env.fake.die(a)
        env.start_new(1)
        wait_for(lambda: "permission denied" in r.output(), 10, what="register to hear the refusal")
        # a refusal does not heal by waiting: /healthz says so at once
        code, body = wait_for(lambda: (lambda h: h if h[0] == 503 else None)(healthz(port)), 5,
                              what="/healthz to report the refused keys")
        assert any("refused" in p for p in body["problems"]), body
        time.sleep(2)  # the refused keys are retried meanwhile
        late = env.start_new(1)[0]  # refused later in the same episode
        time.sleep(6)  # refused for a while, not a blip
        assert env.v3_tree() != env.expected(), "the refusal had no effect: the test proves nothing"
        # every refused key is named at error level once, the one refused
        # after the first retries too (it was said at debug only)
        said = [l for l in log_line(r, "error", "etcd refused the write") if late in l]
        assert len(said) == 1, r.output()[-3000:]
        env.ctl3("role", "grant-permission", "regrole", "--prefix=true", "readwrite", PREFIX + "/")
        # no container changes from here on
        env.converged("v3", timeout=15, what="etcd to converge once the permission is back")
        wait_for(lambda: healthz(port)[0] == 200, 10, what="/healthz to be ok again")
        r.stop()


@suite.test
def an_owned_prefix_etcd_will_not_list_is_unhealthy():
    """A role that may not read the owned prefix (a fleet revision moved
    the prefix where the hosts' role does not reach, a role edited): the
    listing is refused, nothing under the prefix can be known or written,
    and /healthz said ok.  It says why now, and is ok once the role
    reaches the prefix."""
    with Env() as env:
        env.v3_auth()
        env.ctl3("role", "revoke-permission", "regrole", PREFIX + "/", "--prefix=true")
        env.fake.add()
        port = free_port()
        r = env.register("--etcd-api", "v3", "--etcd-user", "reg:regpw", "--metrics", f"127.0.0.1:{port}")
        wait_line(r, "warn", "cannot list the owned prefix")

        code, body = healthz(port)
        assert code == 503 and any("the owned prefix cannot be read" in p and "permission denied" in p
                                   for p in body["problems"]), (code, body)
        env.ctl3("role", "grant-permission", "regrole", "--prefix=true", "readwrite", PREFIX + "/")
        env.converged("v3", timeout=15, what="etcd to converge once the role reaches the prefix")
        wait_for(lambda: healthz(port)[0] == 200, 10, what="/healthz ok again")
        r.stop()


# ---- c. JWT tokens and an auth change ----

@suite.test
def jwt_token_made_old_by_an_auth_change_is_renewed():
    keys = tmpdir("rk")
    try:
        priv, pub = os.path.join(keys, "jwt.key"), os.path.join(keys, "jwt.pub")
        sh("openssl", "genrsa", "-out", priv, "2048")
        sh("openssl", "rsa", "-in", priv, "-pubout", "-out", pub)
        jwt = f"jwt,pub-key={pub},priv-key={priv},sign-method=RS256,ttl=10m"
        with Env(etcd_extra=["--auth-token", jwt]) as env:
            env.v3_auth()
            a, b, c = (env.fake.add() for _ in range(3))
            r = env.register("--etcd-api", "v3", "--ttl", "10", "--etcd-user", "reg:regpw")
            r.wait_log("in sync")
            env.converged("v3")
            # any auth change makes every JWT signed before it "old"
            env.ctl3("user", "add", "other:otherpw")
            env.fake.die(a)
            env.start_new(2)
            env.converged("v3", timeout=5, what="writes to succeed after the auth change")
            # the stale token was replaced, not reported as a refusal
            assert "revision of auth store is old" not in r.output(), r.output()[-3000:]
            assert not log_line(r, "warn", "refused"), log_line(r, "warn", "refused")
            r.stop()
    finally:
        shutil.rmtree(keys, ignore_errors=True)


# ---- d. keep-alive trouble is a warning, and its end news ----

@suite.test
def keepalive_failure_is_a_warning_and_recovery_is_said():
    with Env() as env:
        env.fake.add()
        env.fake.add()
        r = env.register("--etcd-api", "v3", "--ttl", "10")
        r.wait_log("in sync")
        env.converged("v3")
        want = env.v3_tree()
        # etcd away for longer than a keep-alive period (10/3 s, up to a
        # fifth more), shorter than the TTL: the lease lives on
        # (a loaded machine may have had a keep-alive fail already)
        failed = len(log_line(r, "warn", "keep-alive of lease"))
        again = len(log_line(r, "info", "works again"))
        env.etcd.stop()
        lines = wait_line(r, "warn", "keep-alive of lease", timeout=12, after=failed)
        assert "failed" in lines[-1] and "expire in" in lines[-1], lines
        env.etcd.start()
        wait_line(r, "info", "works again", timeout=12, after=again)
        assert len(log_line(r, "warn", "keep-alive of lease")) == failed + 1, log_line(r, "warn", "keep-alive")
        assert env.v3_tree() == want
        assert not log_line(r, "warn", "is gone")
        r.stop()


@suite.test
def v2_outage_past_the_ttl_says_the_keys_expired():
    """v2: each key's TTL is refreshed by a write.  An outage longer than
    the TTL lost every key with one warning at its start (v3 says so of
    its lease); it is said at warn once the TTL has passed, and the keys
    come back with etcd."""
    with Env() as env:
        env.fake.add()
        r = env.register("--ttl", "3")
        r.wait_log("in sync")
        env.converged("v2")
        env.etcd.stop()
        wait_line(r, "warn", "cannot write", timeout=10)
        wait_line(r, "warn", "no write has got through for longer than --ttl", timeout=15)
        env.etcd.start()
        env.converged("v2", timeout=20, what="the keys back after the outage")
        r.stop()


@suite.test
def keepalive_failure_past_the_ttl_says_the_keys_expired():
    """...and register_in_sync is 0 meanwhile (it stayed 1: every write had
    been acknowledged), register_last_sync_timestamp_seconds no later than
    the last renewal; both right again once etcd is back."""
    with Env() as env:
        env.fake.add()
        port = free_port()
        r = env.register("--etcd-api", "v3", "--ttl", "4", "--metrics", f"127.0.0.1:{port}")
        r.wait_log("in sync")
        env.converged("v3")

        def sync_metrics():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as m:
                text = m.read().decode()
            get = lambda n: float(re.search(rf"^{n} (\S+)$", text, re.M).group(1))  # noqa: E731
            return get("register_in_sync"), get("register_last_sync_timestamp_seconds")
        in_sync, ts = sync_metrics()
        assert in_sync == 1 and abs(ts - time.time()) < 2, (in_sync, ts)  # true now: now
        failed = len(log_line(r, "warn", "keep-alive of lease"))  # (a loaded machine)
        env.etcd.stop()
        stopped = time.time()
        wait_line(r, "warn", "keep-alive of lease", timeout=8, after=failed)
        in_sync, ts = sync_metrics()
        assert in_sync == 0 and ts <= stopped + 0.5, (in_sync, ts, stopped)
        wait_line(r, "warn", "have probably expired", timeout=15)
        in_sync, ts = sync_metrics()
        assert in_sync == 0 and ts <= stopped + 0.5, (in_sync, ts, stopped)
        env.etcd.start()
        env.converged("v3", timeout=20, what="the keys back after the outage")
        wait_for(lambda: sync_metrics()[0] == 1, 10, interval=0.2, what="register_in_sync 1 again")
        assert abs(sync_metrics()[1] - time.time()) < 2
        r.stop()


def outage_changes_follow_etcd_back(api):
    # a container stops while etcd is down (nothing listens: connections
    # refused): its delete is tried every 125-250 ms, which costs a stopped
    # etcd nothing, and reaches etcd within a fraction of a second of its
    # return.  With the writes' backoff alone (0.2 s doubling to 5 s, halved
    # at random) the tries came 2.5-5 s apart after the first 3 s: about 7
    # in 8 s, and the stale key stayed up to 5 s after etcd was back (a load
    # balancer sending requests to a container that is gone).
    with Env() as env:
        ids = [env.fake.add() for _ in range(2)]
        port = free_port()
        r = env.register("--etcd-api", api, "--ttl", "30", "--metrics", f"127.0.0.1:{port}")
        r.wait_log("in sync")
        env.converged(api)

        def unavailable():
            n = 0
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as m:
                for line in m.read().decode().splitlines():
                    if line.startswith("register_etcd_requests_total{") and 'result="unavailable"' in line:
                        n += float(line.split()[-1])
            return n

        before = unavailable()
        env.etcd.stop()
        time.sleep(0.5)
        env.fake.die(ids[0])
        time.sleep(8)
        env.etcd.start()
        t0 = time.time()
        env.converged(api, timeout=10, what="the stopped container's key deleted")
        late = time.time() - t0
        tries = unavailable() - before
        assert late < 1.5, f"etcd followed {late:.1f} s after its return ({tries:.0f} failed tries)"
        assert tries >= 20, f"{tries:.0f} failed tries in the 8 s outage"
        r.stop()


@suite.test
def changes_in_an_outage_reach_etcd_as_it_returns_v2():
    outage_changes_follow_etcd_back("v2")


@suite.test
def changes_in_an_outage_reach_etcd_as_it_returns_v3():
    outage_changes_follow_etcd_back("v3")


# ---- keep-alives do not wait for a login that cannot succeed ----

@suite.test
def keepalives_survive_a_password_change():
    # tokens live 2 s: every write after that logs in again, and after the
    # password change that login fails; the lease must live on regardless
    with Env(etcd_extra=["--auth-token-ttl", "2"]) as env:
        env.v3_auth()
        keep = env.fake.add()
        r = env.register("--etcd-api", "v3", "--ttl", "4", "--etcd-user", "reg:regpw")
        r.wait_log("in sync")
        env.converged("v3")
        key = f"{PREFIX}/bbx/{keep}"
        subprocess.run(["etcdctl", "--endpoints", env.etcd.url, "--user", ROOT, "user", "passwd", "reg",
                        "--interactive=false"], input="changed\n", text=True, check=True,
                       env=dict(os.environ, ETCDCTL_API="3"), capture_output=True, timeout=20)
        time.sleep(3)  # the token expires
        env.start_new(1)  # a write: "invalid auth token", and the login fails
        wait_for(lambda: "authentication as user reg failed" in r.output(), 10,
                 what="the failed login")
        # three TTLs later the first key is still there: keep-alives went on
        time.sleep(12)
        assert key in env.v3_tree(), r.output()[-3000:]
        assert not log_line(r, "warn", "keep-alive of lease"), log_line(r, "warn", "keep-alive")
        assert not log_line(r, "warn", "is gone"), r.output()[-3000:]
        r.stop()



@suite.test
def a_rotated_password_file_is_read_again_at_sighup():
    # the password changes in etcd and in the file; SIGHUP reads the file:
    # the next login (tokens live 2 s) succeeds and writes go on
    with Env(etcd_extra=["--auth-token-ttl", "2"]) as env:
        env.v3_auth()
        pwfile = os.path.join(env.fdir, "pw")
        with open(pwfile, "w") as f:
            f.write("regpw\n")
        env.fake.add()
        r = env.register("--etcd-api", "v3", "--ttl", "10", "--etcd-user", "reg",
                         "--etcd-password-file", pwfile)
        r.wait_log("in sync")
        env.converged("v3")
        subprocess.run(["etcdctl", "--endpoints", env.etcd.url, "--user", ROOT, "user", "passwd", "reg",
                        "--interactive=false"], input="rotated\n", text=True, check=True,
                       env=dict(os.environ, ETCDCTL_API="3"), capture_output=True, timeout=20)
        with open(pwfile, "w") as f:
            f.write("rotated\n")
        r.proc.send_signal(signal.SIGHUP)
        r.wait_log("etcd: credentials read again (SIGHUP): password file " + pwfile)
        time.sleep(3)  # the old token expires: the next write logs in again
        env.start_new(2)
        env.converged("v3", what="containers started after the rotation")
        assert "authentication as user reg failed" not in r.output(), r.output()[-3000:]
        r.stop()


# ---- every member replaced at a new address (issue 22) ----

class ImpostorProxy:
    """An HTTP proxy in front of etcd that forwards each request, or, as
    an impostor, answers every one with 200 and a page of HTML and
    forwards nothing (a captive portal, a load balancer's error page, the
    wrong service on the port)."""

    def __init__(self, upstream):
        import http.client
        import http.server
        up = urllib.parse.urlsplit(upstream)
        proxy = self
        self.impostor = False

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def handle_one(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else None
                if proxy.impostor:
                    page = b"<html><body>It works!</body></html>"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(page)))
                    self.end_headers()
                    self.wfile.write(page)
                    return
                c = http.client.HTTPConnection(up.hostname, up.port, timeout=30)
                try:
                    hdrs = {k: v for k, v in self.headers.items()
                            if k.lower() not in ("connection", "host", "content-length")}
                    c.request(self.command, self.path, body=body, headers=hdrs)
                    resp = c.getresponse()
                    data = resp.read()
                    self.send_response(resp.status)
                    for k, v in resp.getheaders():
                        if k.lower() not in ("connection", "content-length", "transfer-encoding"):
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                finally:
                    c.close()

            do_GET = do_PUT = do_POST = do_DELETE = handle_one

        self.http = HttpServer(H)
        self.url = self.http.url

    def close(self):
        self.http.close()


@suite.test
def an_answer_that_is_not_etcds_is_no_write_v2():
    """v2: a 200 whose body is not the keys API's answer (no action, no
    node) was taken as a write done: a stopped container's delete and a
    new container's put were counted as done, register said it was in
    sync, and the keys stayed wrong until the next full listing (5 min).
    Now it is a failed try, said at warn, and tried again; once etcd
    itself answers, etcd follows."""
    with Env() as env:
        ids = [env.fake.add() for _ in range(2)]
        proxy = ImpostorProxy(env.etcd.url)
        env.cleanups.append(proxy.close)
        port = free_port()
        r = Register("--etcd", proxy.url, "--etcd-discovery", "off", "--docker", env.fake.host,
                     "--etcd-api", "v2", "--metrics", f"127.0.0.1:{port}", host_ip=IP).start()
        env.cleanups.append(r.cleanup)
        r.wait_log("in sync")
        env.converged("v2")
        proxy.impostor = True
        env.fake.die(ids[0])
        env.start_new(1)
        wait_line(r, "warn", "without a keys API answer")

        wait_for(lambda: healthz(port)[0] == 503, 10, interval=0.2, what="/healthz to say etcd does not answer")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as m:
            text = m.read().decode()
        assert re.search(r"^register_in_sync 0$", text, re.M), text
        proxy.impostor = False
        env.converged("v2", timeout=10, what="etcd to follow once etcd answers again")
        wait_for(lambda: healthz(port)[0] == 200, 10, interval=0.2, what="/healthz 200 again")
        r.stop()


def replace_every_member(api):
    # --etcd names the first three members only; each is replaced in turn
    # (member add at new ports, started with --initial-cluster-state
    # existing, member remove of an old one, stopped) while containers
    # change: register learns the new members from etcd's member list and
    # keeps writing after every configured endpoint is gone
    with Env(members=3) as env:
        ids = [env.fake.add() for _ in range(3)]
        r = env.register("--etcd-api", api, "--ttl", "10")
        r.wait_log("in sync")
        env.converged(api)
        alive = list(env.cluster.members)
        news = []

        def replace(old, i):
            env.etcd = next(m for m in alive if m is not old)  # etcdctl's member
            cp, pp = free_port(), free_port()
            peer = f"http://127.0.0.1:{pp}"
            # etcd refuses a member add until every member has been
            # connected for a while ("unhealthy cluster"): again until then
            added = {}
            wait_for(lambda: added.setdefault("out", env.ctl3("member", "add", f"n{i}", f"--peer-urls={peer}",
                                                              check=False)) or added.pop("out"),
                     30, interval=1, what=f"etcd to take member n{i}")
            init = re.search(r'ETCD_INITIAL_CLUSTER="([^"]+)"', added["out"]).group(1)
            new = Etcd(f"n{i}", init, cp, pp, extra=["--initial-cluster-state", "existing"])
            env.cleanups.append(new.cleanup)
            new.start()
            alive.append(new)
            news.append(new)
            # register learns it (the member list, within 30 s) before the
            # old member goes: an operator's pace, one member at a time
            wait_for(lambda: any(new.url in ln for ln in log_line(r, "info", "etcd: endpoints now")),
                     40, interval=0.2, what=f"register to name {new.url}")
            members = json.loads(env.ctl3("member", "list", "-w", "json"))["members"]
            mid = next(m["ID"] for m in members if m["name"] == old.name)
            env.ctl3("member", "remove", format(mid, "x"))
            old.stop()
            alive.remove(old)
            env.etcd = new
            env.fake.die(ids.pop(0))
            ids.extend(env.start_new(1))
            env.converged(api, timeout=20, what=f"etcd to follow the containers after {old.name} left")

        for i, old in enumerate(list(alive)):
            replace(old, i)
        # every configured endpoint is gone now
        assert not any(m.proc for m in env.cluster.members)
        line = log_line(r, "info", "etcd: endpoints now")[-1]
        assert all(n.url in line for n in news), line
        if api == "v3":
            # a learnt member replaced in turn: its URL leaves the list
            # (requests in flight on it finish first), the seeds stay
            gone = news.pop(0)
            replace(gone, 3)
            wait_for(lambda: gone.url not in log_line(r, "info", "etcd: endpoints now")[-1], 40,
                     interval=0.2, what=f"register to drop {gone.url}")
            line = log_line(r, "info", "etcd: endpoints now")[-1]
            assert all(m.url in line for m in env.cluster.members + news), line
        env.fake.die(ids.pop(0))
        ids += env.start_new(2)
        env.converged(api, timeout=20, what="etcd to follow the containers on the new members only")
        # the keys live on past two TTLs: keep-alives (v3) and refreshes
        # (v2) reach the new members
        t_end = time.time() + 22
        while time.time() < t_end:
            env.converged(api, timeout=5, what="the keys to stay")
            time.sleep(1)
        assert not log_line(r, "warn", "is gone"), log_line(r, "warn", "is gone")
        assert not log_line(r, "warn", "have probably expired"), r.output()[-3000:]
        r.stop()


@suite.test
def every_member_replaced_at_a_new_address_v3():
    replace_every_member("v3")


@suite.test
def every_member_replaced_at_a_new_address_v2():
    replace_every_member("v2")



@suite.test
def snapshot_restore_seen_after_failover_to_a_member_never_heard_from_v3():
    """A snapshot restore under a daemon that, during the restore's
    downtime, fails over to a member it never heard from, and then only
    keeps its lease alive (the lease is in the snapshot, so the keep-alives
    succeed).  A keep-alive is not linearizable and that member has no
    history here, so nothing in it shows the rewind (found by the chaos
    run with --etcd-faults, seed 595391108: three hosts kept a restored
    stale key until the 5-minute audit).  register reads the prefix again
    when a member answers for the first time after others have: the
    listing is linearizable, shows the rewind, and the stopped container's
    key, back with the snapshot, is deleted again."""
    cluster = Cluster(3)
    fdir = tmpdir("rf")
    fake = FakeDocker(os.path.join(fdir, "d.sock"))
    r = None
    try:
        cluster.start()
        fake.start()
        m0, m1, m2 = cluster.members

        def keys(member):
            out = member.etcdctl("get", "--prefix", PREFIX + "/", "-w", "json", api="3")
            return {base64.b64decode(kv["key"]).decode() for kv in json.loads(out).get("kvs", [])}

        fake.add()
        gone = fake.add()
        # only the first member named: every request goes there, and the
        # member list adds the other two
        r = Register("--etcd", m0.url, "--docker", fake.host, "--etcd-api", "v3", "--ttl", "10",
                     host_ip=IP).start()
        wait_line(r, "info", "in sync")
        wait_line(r, "info", "from the member list")
        wait_for(lambda: len(keys(m0)) == 2, 10, what="both keys")
        snap = os.path.join(fdir, "snap.db")
        m0.etcdctl("snapshot", "save", snap, api="3")
        fake.die(gone)  # its key deleted through m0, after the snapshot
        wait_for(lambda: len(keys(m0)) == 1, 10, what="the stopped container's key deleted")
        # every member restored from the snapshot; m0 stays down
        init = ",".join(f"{m.name}={m.peer_url}" for m in cluster.members)
        for m in cluster.members:
            m.stop()
        for m in cluster.members:
            m.restore(snap, init)
        m1.start(wait=False)
        m2.start(wait=False)
        m1.wait_ready(30)
        assert any(gone in k for k in keys(m1)), "the restore did not bring the key back"
        wait_line(r, "info", "answers for the first time")
        wait_line(r, "warn", "etcd went back in time", 15)
        wait_for(lambda: not any(gone in k for k in keys(m1)), 15,
                 what="the stopped container's key, back with the snapshot, deleted again")
    finally:
        if r:
            r.cleanup()
        fake.stop()
        cluster.cleanup()
        shutil.rmtree(fdir, ignore_errors=True)


class Veth:
    """A network namespace behind a veth pair: etcd listens on HERE (this
    side), register runs in the namespace (THERE).  cut() drops every packet
    between them silently (this end down: the other keeps its route, and
    its sockets keep what they have not delivered and retransmit it);
    heal() brings the link back."""

    HERE, THERE = "10.219.0.1", "10.219.0.2"

    def __init__(self):
        self.ns = f"rlw{os.getpid()}"
        self.here, self.there = f"rlwa{os.getpid()}", f"rlwb{os.getpid()}"

    def __enter__(self):
        self.netns_mounted = run_netns_mounted()
        try:
            sh("ip", "netns", "add", self.ns)
            sh("ip", "link", "add", self.here, "type", "veth", "peer", "name", self.there)
            sh("ip", "link", "set", self.there, "netns", self.ns)
            sh("ip", "addr", "add", self.HERE + "/30", "dev", self.here)
            sh("ip", "link", "set", self.here, "up")
            sh("ip", "-n", self.ns, "addr", "add", self.THERE + "/30", "dev", self.there)
            sh("ip", "-n", self.ns, "link", "set", self.there, "up")
            sh("ip", "-n", self.ns, "link", "set", "lo", "up")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def cut(self):
        sh("ip", "link", "set", self.here, "down")

    def heal(self):
        sh("ip", "link", "set", self.here, "up")

    def sockets(self):
        """(state, Send-Q, owned by a process) of the namespace's TCP
        sockets to HERE."""
        out = subprocess.run(["ip", "netns", "exec", self.ns, "ss", "-tanpH", "dst", self.HERE],
                             capture_output=True, text=True, check=True).stdout
        return [(f[0], int(f[2]), "users:" in ln) for ln in out.splitlines() if (f := ln.split())]

    def __exit__(self, *exc):
        subprocess.run(["ip", "link", "del", self.here], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)
        run_netns_unmount(self.netns_mounted)  # a test leaves no mount behind
        return False


def put_given_up_on_in_a_partition(api):
    """register gives up on a put while etcd is cut off (its 5 s limit),
    the container goes, the network heals and register deletes the key.
    The put's bytes must not still sit in the kernel's send queue of the
    connection curl closed: retransmitted after the heal, they would land
    after the delete and bring the removed container's key back (the fleet
    benchmark saw such writes seconds after a heal).  register closes its
    etcd connections with a reset, which drops them."""
    with Veth() as net, Env(ip=Veth.HERE) as env:
        env.start_new(1)
        r = env.register("--etcd-api", api, "--etcd-discovery", "off", netns=net.ns)
        env.converged(api)
        net.cut()
        late = env.start_new(1)[0]
        wait_line(r, "warn", "etcd: cannot write")  # the put was given up on
        # no socket that register let go of still holds bytes for etcd (a
        # SYN-SENT one holds its SYN, no request: one that curl opened between
        # ss's scan of the processes' descriptors and its socket dump shows no
        # owner either)
        left = [s for s in net.sockets() if not s[2] and s[1] > 0 and s[0] != "SYN-SENT"]
        assert not left, f"closed connections still hold data for etcd: {left}"
        env.fake.die(late)
        env.fake.remove(late)
        time.sleep(1)  # register has seen it go (nothing to wait for: it cannot write)
        synced = len(log_line(r, "info", "in sync"))
        net.heal()
        # The retry of the put may have started before register saw the
        # container go: still in flight across the heal, it can land then
        # (its SYN waits in the kernel for the address to resolve, up to a
        # second after the link is up), and the delete follows it.  The tree
        # equals the truth before that (the key was never written): wait for
        # register to be in sync again (nothing in flight, nothing failed)
        # before watching for a late put.
        wait_for(lambda: len(log_line(r, "info", "in sync")) > synced, 30, interval=0.1,
                 what="register in sync again after the heal")
        env.converged(api, timeout=30)
        since = v2_tree_index(env.etcd.url, PREFIX)[1] if api == "v2" else None
        # a late put would land within seconds of the heal (TCP's
        # retransmission backoff): the key must stay gone
        deadline = time.time() + 15
        while time.time() < deadline:
            assert env.tree(api) == env.expected(), f"a key came back after the heal: {env.tree(api)}"
            time.sleep(0.2)
        if since is not None:
            # and nothing was written under the prefix meanwhile, not even
            # for less than a poll (a late put repaired at once): etcd's own
            # history, complete up to now
            evs = env.etcd.events_since(since, PREFIX)
            assert not evs, f"written after the heal: {[(e['action'], e['node']['key']) for e in evs]}"


@suite.test
def a_put_given_up_on_in_a_partition_never_lands_later_v2():
    put_given_up_on_in_a_partition("v2")


@suite.test
def a_put_given_up_on_in_a_partition_never_lands_later_v3():
    put_given_up_on_in_a_partition("v3")


# ---- g. a write that reaches etcd late, after later writes ----

class HoldingProxy:
    """A TCP proxy in front of etcd.  Passing, it forwards both ways.
    Holding, it keeps what a client sends from then on and forwards
    nothing, answers nothing: a member cut off with the request in hand.
    release() delivers what it held to etcd, on a new connection, as such
    a member does when the cut heals (a proposal in its kernel's send
    queue to the leader, a load balancer's buffer), and keeps etcd's
    answers."""

    def __init__(self, upstream_port):
        self.upstream = ("127.0.0.1", upstream_port)
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.holding = False
        self.held = []  # one bytearray per client connection that sent while holding
        self.answers = []
        self.lock = threading.Lock()
        self.socks = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            u = socket.create_connection(self.upstream)
            with self.lock:
                self.socks += [c, u]
            threading.Thread(target=self._up, args=(c, u), daemon=True).start()
            threading.Thread(target=self._down, args=(u, c), daemon=True).start()

    def _up(self, c, u):
        mine = None
        while True:
            try:
                data = c.recv(65536)
            except OSError:  # reset by the client: what was held stays held
                data = b""
            if not data:
                u.close()
                return
            with self.lock:
                if self.holding:
                    if mine is None:
                        mine = bytearray()
                        self.held.append(mine)
                    mine += data
                    continue
            u.sendall(data)

    def _down(self, u, c):
        while True:
            try:
                data = u.recv(65536)
                if not data:
                    break
                c.sendall(data)
            except OSError:
                break
        try:
            c.close()
        except OSError:
            pass

    def hold(self):
        with self.lock:
            self.holding = True

    def release(self):
        """Sends every held request to etcd; returns etcd's answers."""
        with self.lock:
            self.holding = False
            held, self.held = self.held, []
        for req in held:
            with socket.create_connection(self.upstream, timeout=5) as s:
                s.sendall(bytes(req))
                answer = b""
                try:
                    while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                        chunk = s.recv(65536)
                        if not chunk:
                            break
                        answer += chunk
                except socket.timeout:
                    pass
                self.answers.append(answer)
        return held

    def close(self):
        self.lsock.close()
        with self.lock:
            for x in self.socks:
                try:
                    x.close()
                except OSError:
                    pass


def late_write(fence):
    """register writes through a member (the proxy) that keeps the put of a
    new container and never answers; register gives up on it (the attempt's
    time limit) and writes through the other endpoint; the container goes
    and register deletes its key; then the held put reaches etcd.  Unfenced,
    it brings the deleted key back, stale, until a listing repairs it (the
    5-minute audit).  Fenced, register moved its fence after the write in
    doubt, so the late copy's compare fails and it changes nothing."""
    with Env() as env:
        proxy = HoldingProxy(int(env.etcd.url.rsplit(":", 1)[1]))
        env.cleanups.append(proxy.close)
        env.start_new(1)
        extra = [] if fence else ["--etcd-fence", "off"]
        port = free_port()
        r = env.register("--etcd-api", "v3", "--etcd-discovery", "off",
                         "--etcd", f"http://127.0.0.1:{proxy.port},{env.etcd.url}",
                         "--metrics", f"127.0.0.1:{port}", *extra)
        env.converged("v3")
        proxy.hold()
        late = env.start_new(1)[0]
        env.converged("v3", what="the new key written through the other endpoint")
        env.fake.die(late)
        env.fake.remove(late)
        env.converged("v3", what="the gone container's key deleted")
        held = proxy.release()
        key_b64 = None
        for req in held:
            for k in re.findall(rb'"key":"([A-Za-z0-9+/=]+)"', bytes(req)):
                name = base64.b64decode(k).decode(errors="replace")
                if name.endswith("/" + late):
                    key_b64 = k
        assert key_b64, f"the proxy did not hold the new container's put: {held}"
        assert proxy.answers and all(b" 200 OK" in a.split(b"\r\n", 1)[0] for a in proxy.answers), \
            f"etcd did not take the late requests: {proxy.answers}"
        log(f"{len(held)} held request(s) delivered late; etcd answered {proxy.answers[-1][-200:]!r}")
        came_back = False
        deadline = time.time() + 3
        while time.time() < deadline:
            got = env.v3_tree()
            if any(k.endswith("/" + late) for k in got):
                came_back = True
                break
            time.sleep(0.1)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        doubts = re.search(r"^register_etcd_writes_in_doubt_total (\d+)", metrics, re.M)
        if fence:
            assert not came_back, "a put given up on landed late and brought a deleted key back"
            env.converged("v3")
            assert doubts and int(doubts.group(1)) >= 1, metrics
            assert b"/v3/kv/txn" in held[0] and b'"compare"' in held[0], held[0][:300]
        else:
            # the hazard is real: what the fence is for
            assert came_back, "unfenced, the late put did not land: this test proves nothing"
        r.stop()


@suite.test
def a_write_that_lands_late_brings_a_key_back_without_the_fence_v3():
    late_write(fence=False)


@suite.test
def a_write_that_lands_late_changes_nothing_with_the_fence_v3():
    late_write(fence=True)


suite.run()

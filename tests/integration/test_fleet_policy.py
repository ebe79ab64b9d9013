"""The fleet's policy kept in etcd (issue 19), the daemon's side, on a real
dockerd and a real etcd: a daemon run with --policy-key KEY

- refuses a revision without a signature unless told --policy-unsigned,
  and says so in its report under dirname(KEY)/status/HOST_IP;
- applies a signed revision with make-before-break (no key of a running
  container is deleted before its new keys are in etcd: checked in etcd's
  v2 history), reports it (applied, revision, signed, keys) and exports it
  in /metrics and /healthz;
- refuses, keeping every key: a revision signed with a key it does not
  know, a revision that fails on its containers, a deleted key, a
  corrupted document, an oversized one;
- follows a canary: waiting while it is not in it, applied once it is;
- reads its public keys again on SIGHUP;
- starts with the last revision applied (--state-dir) while etcd is down;
- does the same with etcd v3 (the report on the lease).

The documents are written here by hand (Python and the openssl command),
not by `register policy`: a second implementation of the format that
policydoc.h describes.

Run one test: python3 test_fleet_policy.py <test_function_name>
"""
import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
from harness import REGISTER, LazyDockerd, Etcd, FreezableProxy, Register, Suite, free_port, tmpdir, wait_for  # noqa: E402
from fake_docker import FakeDocker  # noqa: E402

IP = "10.21.0.31"
KEY = "/fleettest/policy"
STATUS = f"/fleettest/status/{IP}"
REG = f"/registered/{IP}"  # the default policy's prefix
FLEET = f"/fleet/{IP}"

suite = Suite()
etcd = Etcd().start()
suite.defer(etcd.cleanup)


d = LazyDockerd(suite)
WORK = tmpdir("rfp")
suite.defer(lambda: shutil.rmtree(WORK, ignore_errors=True))

HTTPD = "busybox mkdir -p /www && exec busybox httpd -f -p 80 -h /www"

# /fleet/<ip>/<name>/<port> -> "<ip>:<public port>"; NAMING varies it
FLEET_POLICY = """\
local policy = {}
function policy.prefix(host) return "/fleet/" .. host.ip end
function policy.records(c, host)
  %(fail)s
  local out = {}
  for _, p in ipairs(c.ports) do
    out["/fleet/" .. host.ip .. "/" .. c.name .. %(naming)s] = host.ip .. ":" .. p.host_port
  end
  return out
end
return policy
"""
REV_A = FLEET_POLICY % {"fail": "", "naming": '"/" .. p.private_port'}
REV_B = FLEET_POLICY % {"fail": "", "naming": '"/port-" .. p.private_port'}
BROKEN = FLEET_POLICY % {"fail": 'error("broken on purpose")', "naming": '""'}


def openssl(*args, input=None):
    r = subprocess.run(["openssl", *args], capture_output=True, input=input)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout


def keypair(name):
    priv = os.path.join(WORK, name + ".pem")
    pub = os.path.join(WORK, name + ".pub")
    openssl("genpkey", "-algorithm", "ed25519", "-out", priv)
    openssl("pkey", "-in", priv, "-pubout", "-out", pub)
    return priv, pub


K1, K1PUB = keypair("k1")
K2, K2PUB = keypair("k2")


def sign(source, priv):
    src = os.path.join(WORK, "to-sign")
    with open(src, "wb") as f:
        f.write(source.encode())
    return base64.b64encode(openssl("pkeyutl", "-sign", "-inkey", priv, "-rawin", "-in", src)).decode()


def rev(n, source, priv=None):
    r = {"revision": n, "sha256": hashlib.sha256(source.encode()).hexdigest(), "source": source,
         "name": f"rev{n}.lua"}
    if priv:
        r["signature"] = sign(source, priv)
    return r


GEN = [0]


def doc(stable, canary=None, hosts=None, percent=None):
    GEN[0] += 1
    out = {"register_policy": 1, "generation": GEN[0], "stable": stable}
    if canary:
        c = dict(canary)
        if hosts is not None:
            c["hosts"] = hosts
        if percent is not None:
            c["percent"] = percent
        out["canary"] = c
    return json.dumps(out)


def put(text, api="2"):
    if api == "3":
        body = json.dumps({"key": base64.b64encode(KEY.encode()).decode(),
                           "value": base64.b64encode(text.encode()).decode()}).encode()
        req = urllib.request.Request(etcd.url + "/v3/kv/put", data=body, method="POST")
        urllib.request.urlopen(req, timeout=10).read()
        return
    data = urllib.parse.urlencode({"value": text}).encode()
    req = urllib.request.Request(etcd.url + "/v2/keys" + KEY, data=data, method="PUT")
    req.add_header("Content-Type", "application/x-www-form-urlencoded")
    urllib.request.urlopen(req, timeout=10).read()


def report(api="2"):
    """The host's report, or None."""
    if api == "3":
        out = etcd.etcdctl("get", STATUS, "--print-value-only", api="3").strip()
        return json.loads(out) if out else None
    t = etcd.tree(os.path.dirname(STATUS))
    return json.loads(t[STATUS]) if STATUS in t else None


def report_is(api="2", **want):
    def ok():
        r = report(api)
        return r is not None and all(r.get(k) == v for k, v in want.items())
    try:
        wait_for(ok, 30, interval=0.2, what=f"the host's report to say {want}")
    except AssertionError:
        raise AssertionError(f"report {report(api)} is not {want}")
    return report(api)


def curl(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metrics(port):
    code, body = curl(f"http://127.0.0.1:{port}/metrics")
    assert code == 200, (code, body)
    return {l.rpartition(" ")[0]: float(l.rpartition(" ")[2])
            for l in body.splitlines() if l and not l.startswith("#")}


def webs(n=3):
    return {f"web{i}": d.docker("run", "-d", "--name", f"web{i}", "-p", "127.0.0.1::80",
                                "bbx", "sh", "-c", HTTPD)
            for i in range(1, n + 1)}


def port_of(name):
    return d.docker("port", name, "80/tcp").split()[0].rsplit(":", 1)[1]


def truth(names, naming="/80"):
    return {f"{FLEET}/{n}{naming}": f"{IP}:{port_of(n)}" for n in names}


def reset(docker=True):
    if docker:
        d.clean()
    for p in ("/fleet", "/fleetenv", "/registered", "/fleettest"):
        etcd.etcdctl("rm", "--recursive", p, check=False)
        etcd.etcdctl("del", "--prefix", p, api="3", check=False)


def start(*extra, port=None, state=None, api="2", env=None, docker=None, key=KEY):
    state = state or tmpdir("rfs")
    args = ["--etcd", etcd.url, "--docker", docker or d.host, "--policy-key", key, "--state-dir", state,
            "--etcd-api", f"v{api}"]
    if port:
        args += ["--metrics", f"127.0.0.1:{port}"]
    r = Register(*args, *extra, host_ip=IP, env=env).start()
    suite.defer(r.cleanup)
    return r, state


def fleet_tree(api="2"):
    """What etcd holds under FLEET (v2's tree, or v3's keys)."""
    if api == "2":
        return etcd.tree(FLEET)
    out = json.loads(etcd.etcdctl("get", "--prefix", FLEET + "/", "-w", "json", api="3"))
    return {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv["value"]).decode()
            for kv in out.get("kvs", [])}


def deletes_since(index, prefix):
    return [e["node"]["key"] for e in etcd.events_since(index, prefix)
            if e["action"] in ("delete", "compareAndDelete", "expire")]


def unchanged_since(index, tree_before, prefix=FLEET):
    """Nothing under prefix deleted since index, and the tree is as it was."""
    dels = deletes_since(index, prefix)
    assert not dels, f"deleted: {dels}"
    assert etcd.tree(prefix) == tree_before, (etcd.tree(prefix), tree_before)


def fake(n=2):
    """A fake Docker API with n containers web0.. publishing port 80."""
    f = FakeDocker(os.path.join(tmpdir("rff"), "d.sock")).start()
    suite.defer(f.stop)
    for i in range(n):
        f.add(name=f"web{i}", ports=[("80/tcp", [("127.0.0.1", str(30000 + i))])])
    return f


def delete_key(api):
    if api == "2":
        etcd.etcdctl("rm", KEY)
    else:
        etcd.etcdctl("del", KEY, api="3")


def default_keys(n):
    wait_for(lambda: len(etcd.tree(REG)) == n, 30, what=f"{n} keys of the default policy")


def on_revision_1():
    """Two containers, a daemon that verifies K1, and REV_A applied as
    revision 1: (the daemon, the containers' names)."""
    reset()
    names = list(webs(2))
    r, _ = start("--policy-pubkey", K1PUB)
    put(doc(rev(1, REV_A, K1)))
    report_is(state="applied", revision=1)
    wait_for(lambda: etcd.tree(FLEET) == truth(names), 20, what="revision 1's keys")
    return r, names


# ---- tests ----

@suite.test
def an_unsigned_revision_is_refused_without_policy_unsigned():
    reset()
    webs(2)
    r, _ = start()
    default_keys(2)
    before = etcd.tree(REG)
    idx = etcd.index()
    put(doc(rev(1, REV_A)))
    rep = report_is(state="refused", offered=1, revision=0)
    assert "--policy-pubkey" in rep["error"] and "--policy-unsigned" in rep["error"], rep
    r.wait_log("policy revision 1 of /fleettest/policy refused")
    time.sleep(1)
    unchanged_since(idx, before, REG)
    assert etcd.tree("/fleet") == {}, etcd.tree("/fleet")
    r.stop()


@suite.test
def a_signed_revision_is_applied_make_before_break_then_bad_ones_are_refused():
    reset()
    ids = webs(3)
    names = list(ids)
    port = free_port()
    r, _ = start("--policy-pubkey", K1PUB, port=port)
    default_keys(3)
    idx = etcd.index()
    put(doc(rev(1, REV_A, K1)))
    rep = report_is(state="applied", revision=1, offered=1)
    assert rep["signed"] is True and rep["host"] == IP and rep["key"] == KEY, rep
    assert rep["sha256"] == hashlib.sha256(REV_A.encode()).hexdigest(), rep
    want = truth(names)
    wait_for(lambda: etcd.tree(FLEET) == want and etcd.tree(REG) == {}, 20,
             what="the revision's keys in place of the default ones")
    # make-before-break: each container's old key is deleted after its new
    # one is in etcd
    ev = [(e["action"], e["node"]["key"]) for e in etcd.events_since(idx, "/")]
    for name, cid in ids.items():
        put_at = [i for i, (a, k) in enumerate(ev) if a == "set" and k == f"{FLEET}/{name}/80"]
        del_at = [i for i, (a, k) in enumerate(ev) if a == "delete" and k.startswith(REG + "/")
                  and k.endswith("/" + cid)]
        assert len(put_at) == 1 and len(del_at) == 1 and put_at[0] < del_at[0], (name, ev)
    report_is(keys=3)  # the report counts the host's keys, not itself
    m = metrics(port)
    assert m["register_policy_revision"] == 1 and m["register_policy_offered_revision"] == 1, m
    assert m['register_policy_state{state="applied"}'] == 1, m
    assert m['register_policy_revisions_total{result="applied"}'] == 1, m
    assert m["register_policy_unsigned"] == 0, m
    code, body = curl(f"http://127.0.0.1:{port}/healthz")
    h = json.loads(body)
    assert code == 200 and h["policy"]["state"] == "applied" and h["policy"]["revision"] == 1, body
    assert "warnings" not in h, h

    before = etcd.tree(FLEET)
    idx = etcd.index()
    cases = [
        ("a key it does not know", doc(rev(2, REV_B, K2)), "not in"),
        ("a revision that fails on its containers", doc(rev(3, BROKEN, K1)), "broken on purpose"),
        ("not JSON", "{this is not a policy", "policy key " + KEY),
        ("a sha256 that does not match", doc(dict(rev(4, REV_B, K1), sha256="0" * 64)), "sha256"),
        ("oversized", doc(rev(5, REV_B + "--" + "x" * (1100 * 1024), K1)), "policy key " + KEY),
    ]
    for what, text, says in cases:
        put(text)

        def refused():
            rep = report()
            return rep["state"] == "refused" and says in (rep.get("error") or "")
        try:
            wait_for(refused, 30, interval=0.2, what=f"{what}: refused")
        except AssertionError:
            raise AssertionError(f"{what}: report {report()}")
        rep = report()
        assert rep["revision"] == 1 and len(rep["error"]) < 600, rep
        unchanged_since(idx, before)
    n = metrics(port)['register_policy_revisions_total{result="refused"}']
    assert n >= 2, n
    etcd.etcdctl("rm", KEY)
    rep = report_is(state="refused", revision=1, offered=0)
    assert "deleted" in rep["error"], rep
    r.wait_log("policy key /fleettest/policy was deleted; keeping the revision in force")
    unchanged_since(idx, before)
    # a good revision after all that: applied
    put(doc(rev(6, REV_B, K1)))
    report_is(state="applied", revision=6, offered=6)
    wait_for(lambda: etcd.tree(FLEET) == truth(names, "/port-80"), 20, what="revision 6's keys")
    r.stop()


@suite.test
def a_canary_elsewhere_leaves_the_host_waiting_then_it_takes_it():
    reset()
    names = list(webs(2))
    port = free_port()
    r, _ = start("--policy-unsigned", port=port)
    put(doc(rev(1, REV_A)))
    rep = report_is(state="applied", revision=1)
    assert rep["signed"] is False, rep
    code, body = curl(f"http://127.0.0.1:{port}/healthz")
    assert code == 200 and "--policy-unsigned" in " ".join(json.loads(body)["warnings"]), body
    assert metrics(port)["register_policy_unsigned"] == 1
    wait_for(lambda: etcd.tree(FLEET) == truth(names), 20, what="revision 1's keys")
    put(doc(rev(1, REV_A), canary=rev(2, REV_B), hosts=["10.99.0.1"]))
    rep = report_is(state="waiting", revision=1, offered=1, generation=GEN[0])
    assert rep.get("error") is None, rep
    assert etcd.tree(FLEET) == truth(names)
    put(doc(rev(1, REV_A), canary=rev(2, REV_B), hosts=["10.99.0.1", IP]))
    report_is(state="applied", revision=2, offered=2)
    wait_for(lambda: etcd.tree(FLEET) == truth(names, "/port-80"), 20, what="the canary's keys")
    # everyone back to stable (a rollback of the canary)
    put(doc(rev(1, REV_A)))
    report_is(state="applied", revision=1, offered=1)
    wait_for(lambda: etcd.tree(FLEET) == truth(names), 20, what="revision 1's keys again")
    # 100%: every host
    put(doc(rev(1, REV_A), canary=rev(3, REV_B), percent=100))
    report_is(state="applied", revision=3)
    assert "--policy-unsigned" in r.output()  # said loudly at start
    r.stop()


# a revision that runs past --policy-timeout (1 s) until the host's clock
# passes DEADLINE, in records() or while it loads: a plain find that is
# quadratic, which no instruction count sees
SLOW = """
local slow = function()
  if os.time() < %(deadline)d then
    string.find(string.rep("a", 1000000), string.rep("a", 500000) .. "b", 1, true)
  end
end
%(at_load)s
"""


def slow_until(deadline, at_load):
    src = FLEET_POLICY % {"fail": "" if at_load else "slow()", "naming": '"/port-" .. p.private_port'}
    return SLOW % {"deadline": deadline, "at_load": "slow()" if at_load else ""} + src


@suite.test
def a_revision_refused_for_timeouts_only_is_tried_again():
    """A revision refused because its calls ran past --policy-timeout may
    have met a host too loaded to run it in time (seen: 500 hosts on two
    cores, 1 to 7 of them refused a good revision): it is tried again after
    5 s, doubling, while it is still the one offered.  A refusal for
    anything else is final until the document changes."""
    r, names = on_revision_1()
    for n, at_load in ((2, False), (3, True)):
        # slow for the first try only: the clock passes DEADLINE before
        # the second, 5 s later
        deadline = int(time.time()) + 4
        put(doc(rev(n, slow_until(deadline, at_load), K1)))
        rep = report_is(state="refused", revision=1, offered=n)
        assert "timeout" in rep["error"] and "it only timed out: tried again in 5 s" in rep["error"], rep
        assert etcd.tree(FLEET) == truth(names), etcd.tree(FLEET)  # revision 1's
        report_is(state="applied", revision=n, offered=n)
        wait_for(lambda: etcd.tree(FLEET) == truth(names, "/port-80"), 20, what=f"revision {n}'s keys")
        if n == 2:
            put(doc(rev(1, REV_A, K1)))  # back, so that revision 3 re-keys
            report_is(state="applied", revision=1)
            wait_for(lambda: etcd.tree(FLEET) == truth(names), 20, what="revision 1's keys again")
    # an error is final: refused once, not tried again
    put(doc(rev(4, BROKEN, K1)))
    rep = report_is(state="refused", revision=3, offered=4)
    assert "tried again" not in rep["error"], rep
    time.sleep(7)
    out = r.output()
    assert out.count("policy revision 4 of /fleettest/policy refused") == 1, out[-3000:]
    assert out.count("policy revision 2 of /fleettest/policy offered") == 2, out[-3000:]
    # a timed-out revision, then, before its second try, one signed with a
    # key this host does not know: that refusal is final, the pending try
    # does not undo it
    put(doc(rev(5, slow_until(int(time.time()) + 60, True), K1)))
    report_is(state="refused", revision=3, offered=5)
    put(doc(rev(6, REV_A, K2)))
    rep = report_is(state="refused", revision=3, offered=6)
    assert "not in" in rep["error"], rep
    time.sleep(7)
    out = r.output()
    assert out.count("policy revision 6 of /fleettest/policy refused") == 1, out[-3000:]
    assert out.count("policy revision 5 of /fleettest/policy offered") == 1, out[-3000:]
    r.stop()


@suite.test
def sighup_reads_the_public_keys_again():
    reset()
    webs(1)
    pub = os.path.join(WORK, "rotating.pub")
    shutil.copy(K1PUB, pub)
    port = free_port()
    r, _ = start("--policy-pubkey", pub, port=port)
    default_keys(1)
    put(doc(rev(1, REV_A, K2)))
    report_is(state="refused", revision=0)
    with open(pub, "w") as f:  # the rotation: both keys
        f.write(open(K1PUB).read() + open(K2PUB).read())
    r.proc.send_signal(signal.SIGHUP)
    report_is(state="applied", revision=1)
    r.wait_log("2 policy public keys read again")
    # the rotation's end: K2 alone.  The revision in force (signed with
    # K2) still verifies; then K1 alone: it does not, and says so (the
    # report said applied and signed with no error; a restart refused it)
    with open(pub, "w") as f:
        f.write(open(K2PUB).read())
    r.proc.send_signal(signal.SIGHUP)
    r.wait_log("1 policy public key read again")
    time.sleep(0.5)
    rep = report()
    assert rep["state"] == "applied" and rep["revision"] == 1 and not rep.get("error"), rep
    shutil.copy(K1PUB, pub)
    r.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "no longer verifies" in (report().get("error") or ""), what="the report says so")
    rep = report()
    assert rep["state"] == "applied" and rep["revision"] == 1 and not rep.get("signed"), rep
    assert "the revision in force no longer verifies" in r.output(), r.output()[-2000:]
    r.stop()


@suite.test
def a_restart_without_the_cache_keeps_the_revisions_keys():
    """The host's own --policy has the revision's prefix and names keys
    otherwise.  Restarted without the cache (a lost --state-dir), the host
    policy ran first: the revision's keys went as stale, then came back
    once it was applied again.  Keys nobody produces now wait until the
    policy key is decided."""
    reset()
    names = list(webs(2))
    local = os.path.join(WORK, "local-b.lua")
    with open(local, "w") as f:
        f.write(REV_B)
    r, _ = start("--policy-pubkey", K1PUB, "--policy", local)
    put(doc(rev(1, REV_A, K1)))
    report_is(state="applied", revision=1)
    want = truth(names)
    wait_for(lambda: etcd.tree(FLEET) == want, 20, what="revision 1's keys")
    r.stop()
    idx = etcd.index()
    r2, _ = start("--policy-pubkey", K1PUB, "--policy", local)  # a new state dir
    r2.wait_log("until the policy key /fleettest/policy is decided")
    report_is(state="applied", revision=1)
    wait_for(lambda: etcd.tree(FLEET) == want, 20, what="revision 1's keys, the host policy's gone")
    gone = [k for k in deletes_since(idx, FLEET) if k in want]
    assert not gone, f"revision 1's keys deleted at the restart: {gone}"
    r2.stop()


@suite.test
def a_restart_while_etcd_is_down_starts_with_the_cached_revision():
    reset()
    names = list(webs(2))
    r, state = start("--policy-pubkey", K1PUB)
    put(doc(rev(1, REV_A, K1)))
    report_is(state="applied", revision=1)
    want = truth(names)
    wait_for(lambda: etcd.tree(FLEET) == want, 20, what="revision 1's keys")
    r.stop()
    files = os.listdir(state)
    assert len(files) == 1 and oct(os.stat(os.path.join(state, files[0])).st_mode & 0o777) == "0o600", files
    etcd.stop()
    try:
        r2, _ = start("--policy-pubkey", K1PUB, state=state)
        r2.wait_log("policy revision 1 of /fleettest/policy from the cache")
        assert "prefix /fleet/" + IP in r2.output(), r2.output()
    finally:
        etcd.start()
    idx = etcd.index()
    report_is(state="applied", revision=1)
    time.sleep(2)
    assert etcd.tree(FLEET) == want, etcd.tree(FLEET)
    assert etcd.tree("/registered") == {}, "the default policy ran after the restart"
    assert not deletes_since(idx, FLEET)
    r2.stop()
    # a cache signed with a key no longer trusted is not used
    r3, _ = start("--policy-pubkey", K2PUB, state=state)
    r3.wait_log("policy cache")
    assert "starting with the host's own policy" in r3.output(), r3.output()
    r3.stop()


@suite.test
def v3_applies_and_reports_on_the_lease():
    reset()
    names = list(webs(2))
    r, _ = start("--policy-pubkey", K1PUB, "--ttl", "10", api="3")
    put(doc(rev(1, REV_A, K1)), api="3")
    report_is(api="3", state="applied", revision=1)
    want = truth(names)
    wait_for(lambda: fleet_tree("3") == want, 20, what="revision 1's keys (v3)")
    out = json.loads(etcd.etcdctl("get", STATUS, "-w", "json", api="3"))
    assert out["kvs"][0].get("lease"), out  # goes with the host
    put(doc(rev(2, BROKEN, K1)), api="3")
    rep = report_is(api="3", state="refused", revision=1, offered=2)
    assert "broken on purpose" in rep["error"], rep
    assert fleet_tree("3") == want
    r.stop()


@suite.test
def revisions_that_would_touch_other_hosts_or_registers_own_keys_are_refused():
    """A revision is tried on this host's containers only, so what it would
    do elsewhere must be ruled out by what it is: a prefix that prefix()
    gives every host alike (each host would delete the others' keys as
    stale: one canary with "/fleet" deleted every other host's keys), a
    prefix that holds the policy key or the hosts' reports (the canary
    deleted the fleet's documents and could not be rolled back), a record
    at the policy key or under the reports.  Each is refused with its
    reason; another host's key and the document stay."""
    r, names = on_revision_1()
    other = "/fleet/10.21.0.99/web9/80"
    etcd.etcdctl("set", other, "10.21.0.99:1234")
    other_report = "/fleettest/status/10.21.0.99"
    etcd.etcdctl("set", other_report, '{"host": "10.21.0.99"}')
    before = etcd.tree(FLEET)
    idx = etcd.index()
    wide = REV_A.replace('function policy.prefix(host) return "/fleet/" .. host.ip end',
                         'function policy.prefix(host) return "/fleet" end')
    control = REV_A.replace('function policy.prefix(host) return "/fleet/" .. host.ip end',
                            'function policy.prefix(host) return "/fleettest" end')
    hijack = REV_A.replace("  return out\n", '  out["%s"] = "{}"\n  return out\n' % KEY)
    reports = REV_A.replace("  return out\n", '  out["%s"] = "{}"\n  return out\n' % other_report)
    inside = REV_A.replace('function policy.prefix(host) return "/fleet/" .. host.ip end',
                           'function policy.prefix(host) return "/fleettest/status/" .. host.ip end')
    assert len({wide, control, hijack, reports, inside, REV_A}) == 6
    cases = [
        (2, "a prefix every host gets alike", wide, "is not this host's own"),
        (3, "a prefix holding the policy key", control, "holds the fleet's policy key"),
        (4, "a record at the policy key", hijack, "record"),
        (5, "a record under the hosts' reports", reports, "record"),
        (6, "a prefix inside the hosts' reports", inside, "is inside the hosts' reports"),
    ]
    for n, what, source, says in cases:
        text = doc(rev(n, source, K1))
        put(text)
        try:
            rep = report_is(state="refused", offered=n, revision=1)
        except AssertionError as e:
            raise AssertionError(f"{what}: {e}")
        assert says in rep["error"], (what, rep)
        unchanged_since(idx, before)
        t = etcd.tree("/fleettest")
        assert json.loads(t[KEY])["stable"]["revision"] == n, (what, t.get(KEY))
        assert t.get(other_report) == '{"host": "10.21.0.99"}', (what, t)
    assert "one of register's own keys" in r.output(), r.output()
    r.stop()


@suite.test
def a_cache_that_cannot_be_written_is_said_and_since_follows_each_revision():
    """A --state-dir that cannot be written was one log line: /healthz said
    ok and no metric told, while a restart with etcd down would start with
    the host's own policy.  And the report's "since" stayed at the first
    "applied" when later revisions were applied."""
    reset()
    webs(1)
    port = free_port()
    state = os.path.join(WORK, "state-is-a-file")
    open(state, "w").close()
    r, _ = start("--policy-pubkey", K1PUB, port=port, state=state)
    put(doc(rev(1, REV_A, K1)))
    rep1 = report_is(state="applied", revision=1)
    code, body = curl(f"http://127.0.0.1:{port}/healthz")
    warnings = json.loads(body).get("warnings", [])
    assert code == 200 and any(w.startswith("policy cache: cannot") for w in warnings), body
    assert metrics(port)["register_policy_cache_failed"] == 1
    time.sleep(1.2)  # "since" is in seconds
    put(doc(rev(2, REV_B, K1)))
    rep2 = report_is(state="applied", revision=2)
    assert rep2["since"] > rep1["since"], (rep1, rep2)
    r.stop()


@suite.test
def a_prefix_from_the_host_or_its_environment_is_its_own():
    """The made-up host's prefix is asked of a worker of its own: a policy
    that keeps what prefix() was given (here: the host's address, for its
    records) still writes under this host's name, and a prefix from a
    --policy-env variable (each host's own value) is not taken for every
    host's.  Before, the second call ran in the host's worker (the policy
    then wrote under 192.0.2.1) and with its environment (refused)."""
    reset()
    names = list(webs(2))
    memo = REV_A.replace('function policy.prefix(host) return "/fleet/" .. host.ip end',
                         'local me\nfunction policy.prefix(host) me = host.ip return "/fleet/" .. host.ip end')
    memo = memo.replace('out["/fleet/" .. host.ip .. "/"', 'out["/fleet/" .. me .. "/"')
    assert memo != REV_A and "me .. " in memo, memo
    r, _ = start("--policy-pubkey", K1PUB, "--policy-env", "NODE", env={"NODE": IP})
    put(doc(rev(1, memo, K1)))
    report_is(state="applied", revision=1)
    wait_for(lambda: etcd.tree(FLEET) == truth(names), 20, what="the keys under this host's name")
    assert etcd.tree("/fleet/192.0.2.1") == {}, etcd.tree("/fleet")
    # another prefix, so that it is vetted (a prefix in force again is not)
    from_env = REV_A.replace('"/fleet/" .. host.ip', '"/fleetenv/" .. os.getenv("NODE")')
    assert from_env.count('os.getenv("NODE")') == 2, from_env
    put(doc(rev(2, from_env, K1)))
    report_is(state="applied", revision=2)
    want = {k.replace("/fleet/", "/fleetenv/", 1): v for k, v in truth(names).items()}
    wait_for(lambda: etcd.tree(f"/fleetenv/{IP}") == want and etcd.tree(FLEET) == {}, 20,
             what="the keys of revision 2")
    r.stop()


@suite.test
def the_policy_keys_watch_leaves_a_member_that_hung():
    """The policy key's watch is on a member that hangs (takes connections,
    answers nothing): the daemon's other requests fail over, but the watch
    waited for its renewal, a minute, before a new revision reached the
    host.  Its probe now leaves such a member within seconds."""
    for api in ("2", "3"):
        reset()
        names = list(webs(1))
        proxy = FreezableProxy(etcd.url)
        suite.defer(proxy.close)
        r = Register("--etcd", f"{proxy.url},{etcd.url}", "--etcd-discovery", "off", "--docker", d.host,
                     "--policy-key", KEY, "--state-dir", tmpdir("rfs"), "--etcd-api", f"v{api}",
                     "--policy-pubkey", K1PUB, host_ip=IP).start()
        suite.defer(r.cleanup)
        put(doc(rev(1, REV_A, K1)), api=api)
        report_is(api, state="applied", revision=1)
        time.sleep(1)  # the watch waits on the proxy
        proxy.freeze()
        t0 = time.time()
        put(doc(rev(2, REV_B, K1)), api=api)
        wait_for(lambda: (report(api) or {}).get("revision") == 2, 45, interval=0.2,
                 what=f"revision 2 past the hung member (v{api})")
        late = time.time() - t0
        assert late < 25, f"v{api}: revision 2 applied {late:.1f} s after the member hung"
        wait_for(lambda: fleet_tree(api) == truth(names, "/port-80"), 20, what="revision 2's keys")
        assert "no answer to a probe" in r.output() and proxy.url in r.output(), r.output()[-2000:]
        r.stop()
        proxy.close()



@suite.test
def once_syncs_with_the_fleets_policy():
    """register --once --policy-key on a host with no cache: it ended as
    soon as the first sync under the host's own policy converged, before
    the key was read, so it wrote the default schema's keys, none of the
    fleet's revision, and no report.  It now ends once the fleet's
    revision is decided, with etcd matching it."""
    for api in ("2", "3"):
        reset(docker=False)
        f = fake(2)
        put(doc(rev(1, REV_A, K1)), api)
        p = subprocess.run([REGISTER, "--once", "--etcd", etcd.url, "--docker", f.host, "--policy-key", KEY,
                            "--state-dir", tmpdir("rfs"), "--etcd-api", f"v{api}", "--policy-pubkey", K1PUB,
                            "--host-ip", IP], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr[-3000:]
        assert "sync complete" in p.stderr, p.stderr[-3000:]
        got = fleet_tree(api)
        assert len(got) == 2, (got, p.stderr[-2000:])
        rep = report(api)
        assert rep and rep["state"] == "applied" and rep["revision"] == 1, rep


@suite.test
def the_report_says_what_the_key_holds_now():
    """A refused revision, then the key deleted (or corrupted), then the
    same document written back: the report kept "the policy key was
    deleted" ("not JSON"), an error about a key that holds a document
    again.  It now says the revision's own refusal again."""
    for api in ("2", "3"):
        reset(docker=False)
        f = fake(2)
        r, _ = start("--policy-pubkey", K1PUB, api=api, docker=f.host)
        put(doc(rev(1, REV_A, K1)), api)
        report_is(api, state="applied", revision=1)
        broken = doc(rev(3, BROKEN, K1))
        put(broken, api)
        report_is(api, state="refused", revision=1, offered=3)
        assert "broken on purpose" in report(api)["error"]
        for what, spoil in (("deleted", lambda: delete_key(api)),
                            ("not JSON", lambda: put("{not a policy", api))):
            spoil()
            wait_for(lambda: what in ((report(api) or {}).get("error") or ""), 20, interval=0.2,
                     what=f"v{api}: the report says {what}")
            put(broken, api)  # the very same document again
            try:
                rep = report_is(api, state="refused", revision=1, offered=3)
                wait_for(lambda: "broken on purpose" in (report(api).get("error") or ""), 5,
                         interval=0.2, what="the revision's own refusal")
            except AssertionError:
                raise AssertionError(f"v{api}, after {what}: report {report(api)}")
            rep = report(api)
            assert what not in rep["error"], rep
        # the refusal was not tried again: the same document, refused once
        assert r.output().count("policy revision 3 of /fleettest/policy refused") == 1, r.output()
        r.stop()


@suite.test
def the_report_counts_the_keys_once_in_sync():
    """After a restart, the report said keys=0 for 30 s: it was published
    at the first read of KEY, before the containers' keys were written,
    and refreshed every 30 s.  It is published again once in sync."""
    for api in ("2", "3"):
        reset(docker=False)
        f = fake(2)
        r, state = start("--policy-pubkey", K1PUB, api=api, docker=f.host)
        put(doc(rev(1, REV_A, K1)), api)
        report_is(api, state="applied", revision=1, keys=2)
        r.stop()
        r2, _ = start("--policy-pubkey", K1PUB, api=api, docker=f.host, state=state)
        r2.wait_log("in sync")
        t0 = time.time()
        wait_for(lambda: (report(api) or {}).get("keys") == 2, 5, interval=0.2,
                 what=f"v{api}: keys=2 in the report, a moment after the sync")
        assert time.time() - t0 < 5
        r2.stop()


@suite.test
def the_hosts_report_is_written_again_when_overwritten():
    """The host's report overwritten by someone else stayed so: the report
    was written only when its text changed, and the resync lists only the
    owned prefix.  A resync (--resync, or the 5-minute audit) writes it
    again."""
    for api in ("2", "3"):
        reset(docker=False)
        f = fake(1)
        r, _ = start("--policy-pubkey", K1PUB, "--resync", "1", "--ttl", "10", api=api, docker=f.host)
        put(doc(rev(1, REV_A, K1)), api)
        good = report_is(api, state="applied", revision=1)
        if api == "2":
            etcd.etcdctl("set", STATUS, "garbage")
        else:
            etcd.etcdctl("put", STATUS, "garbage", api="3")

        def repaired():
            try:
                return report(api) == good
            except ValueError:  # still the garbage
                return False
        wait_for(repaired, 6, interval=0.2, what=f"v{api}: the report written again")
        if api == "3":  # on the host's lease again
            out = json.loads(etcd.etcdctl("get", STATUS, "-w", "json", api="3"))
            assert out["kvs"][0].get("lease"), out
        r.stop()


@suite.test
def a_cache_is_used_only_for_its_own_key():
    """--policy-key /fleettest/policy and /fleettest_policy shared a cache
    file (each '/' became '_'), and the file did not say its key: a host
    started with the other key ran this key's cached revision.  The file
    names are now distinct, the file records its key, and a cache for
    another key, or one of an older register (which cannot say), is not
    used (a warning)."""
    reset(docker=False)
    f = fake(1)
    r, state = start("--policy-pubkey", K1PUB, docker=f.host)
    put(doc(rev(1, REV_A, K1)))
    report_is(state="applied", revision=1)
    r.stop()
    files = os.listdir(state)
    assert len(files) == 1, files
    cache = os.path.join(state, files[0])
    made = json.load(open(cache))
    assert made["cache_key"] == KEY, made.keys()
    other = "/fleettest_policy"

    def other_started(says):
        r2, _ = start("--policy-pubkey", K1PUB, docker=f.host, key=other, state=state)
        r2.wait_log("in sync")
        if says:
            r2.wait_log(says)
        assert "from the cache" not in r2.output(), r2.output()
        r2.stop()
    other_started(None)
    # this key's cache under the other key's name: said, not used
    name = "".join(c if c.isascii() and (c.isalnum() or c in "-.") else "_%02x" % ord(c) for c in other)
    path2 = os.path.join(state, f"policy-{name}.json")
    assert path2 != cache
    shutil.copy(cache, path2)
    other_started(f"it is the cache of key {KEY}, not of {other}: not used")
    os.unlink(path2)
    # a cache of an older register (the old name, no key): not used
    old = dict(made)
    del old["cache_key"]
    with open(os.path.join(state, "policy-" + other.replace("/", "_") + ".json"), "w") as fh:
        json.dump(old, fh)
    other_started("written by an older register, it does not say its key")



@suite.test
def the_caches_temporary_file_follows_no_symlink():
    """The cache was written through STATE/policy-....json.tmp opened
    without O_EXCL or O_NOFOLLOW: a symlink planted there (a state
    directory others can write) was followed, and its target truncated and
    overwritten with the cache.  Now the link is removed, the file made
    anew."""
    reset(docker=False)
    f = fake(1)
    state = tmpdir("rfs")
    name = "".join(c if c.isascii() and (c.isalnum() or c in "-.") else "_%02x" % ord(c) for c in KEY)
    cache = os.path.join(state, f"policy-{name}.json")
    victim = os.path.join(WORK, "victim")
    with open(victim, "w") as fh:
        fh.write("precious\n")
    os.symlink(victim, cache + ".tmp")
    r, _ = start("--policy-pubkey", K1PUB, docker=f.host, state=state)
    put(doc(rev(1, REV_A, K1)))
    report_is(state="applied", revision=1)
    wait_for(lambda: os.path.exists(cache), 10, what="the cache")
    r.stop()
    assert open(victim).read() == "precious\n"
    assert not os.path.islink(cache) and json.load(open(cache))["cache_key"] == KEY
    assert os.listdir(state) == [os.path.basename(cache)], os.listdir(state)


@suite.test
def key_and_cache_files_that_are_not_regular_files():
    """--policy-pubkey and the cache were read with fopen(): a FIFO blocked
    the daemon's start (or a SIGHUP) until a writer came, a directory said
    "Input/output error".  Now each is refused on one line."""
    reset(docker=False)
    f = fake(1)
    fifo = os.path.join(WORK, "pub.fifo")
    os.mkfifo(fifo)
    for pub, want in ((fifo, f"--policy-pubkey: {fifo} is a FIFO, not a regular file"),
                      (WORK, f"--policy-pubkey: {WORK} is a directory, not a file")):
        r, _ = start("--policy-pubkey", pub, docker=f.host)
        assert r.proc.wait(timeout=15) == 2, r.output()
        assert want in r.output(), r.output()
    # the cache's path is a directory: said, and the host starts
    state = tmpdir("rfs")
    name = "".join(c if c.isascii() and (c.isalnum() or c in "-.") else "_%02x" % ord(c) for c in KEY)
    cache = os.path.join(state, f"policy-{name}.json")
    os.mkdir(cache)
    pub = os.path.join(WORK, "hup.pub")
    shutil.copy(K1PUB, pub)
    r, _ = start("--policy-pubkey", pub, docker=f.host, state=state)
    r.wait_log(f"policy cache {cache}: cannot read it ({cache} is a directory, not a file)")
    # the signal handlers are in place once it runs (under ASan, a SIGHUP
    # right after the cache's line came first and ended the process)
    r.wait_log("in sync")
    # SIGHUP with the key file turned into a FIFO: said, the keys in use stay
    os.unlink(pub)
    os.mkfifo(pub)
    r.proc.send_signal(signal.SIGHUP)
    r.wait_log(f"SIGHUP: {pub} is a FIFO, not a regular file; the public keys in use stay")
    put(doc(rev(1, REV_A, K1)))
    report_is(state="applied", revision=1)
    r.stop()


@suite.test
def a_cache_near_the_documents_limit_is_read_back():
    """The cache records its key beside the document: a revision whose
    cache is within the key's length of 1 MiB is still read back (the
    key is taken off before the document is parsed)."""
    reset(docker=False)
    f = fake(1)
    r, state = start("--policy-pubkey", K1PUB, docker=f.host)
    put(doc(rev(1, REV_A + "--" + "x" * 1000 + "\n", K1)))
    report_is(state="applied", revision=1)
    cache = os.path.join(state, os.listdir(state)[0])
    head = len('{"cache_key":' + json.dumps(KEY) + ",") - 1
    body = os.path.getsize(cache) - head  # the document alone
    # its body 2 bytes under the limit: control bytes are 6 in JSON
    k, x = divmod((1024 * 1024 - 2) - body, 6)
    text = doc(rev(2, REV_A + "--" + "x" * (1000 + x) + "\x01" * k + "\n", K1))
    assert len(text) <= 1024 * 1024, len(text)
    put(text)
    report_is(state="applied", revision=2)
    r.stop()
    assert os.path.getsize(cache) - head == 1024 * 1024 - 2, os.path.getsize(cache)
    assert os.path.getsize(cache) > 1024 * 1024
    r2, _ = start("--policy-pubkey", K1PUB, docker=f.host, state=state)
    r2.wait_log("policy revision 2 of /fleettest/policy from the cache")
    r2.stop()



@suite.test
def a_revision_whose_prefix_etcd_will_not_list_is_said():
    """etcd's RBAC as README grants it (hosts write /registered/, the
    status directory and the fences) and a revision whose prefix is
    elsewhere: the host applies it (it compiles, runs and verifies), but
    etcd refuses it the new prefix.  /healthz says so, and the host's
    report still reaches etcd: it waited behind the new prefix's refused
    listing, and `status` showed the host as silent."""
    own = Etcd().start()
    suite.defer(own.cleanup)
    root = ("--user", "root:rootpw")
    for cmd in (["user", "add", "root:rootpw"], ["role", "add", "hosts"],
                ["role", "grant-permission", "hosts", "read", KEY],
                ["role", "grant-permission", "hosts", "readwrite", "--prefix=true", os.path.dirname(STATUS) + "/"],
                ["role", "grant-permission", "hosts", "readwrite", "--prefix=true", "/registered/"],
                ["role", "grant-permission", "hosts", "readwrite", "--prefix=true", "/register/fence/"],
                ["user", "add", "host:hostpw"], ["user", "grant-role", "host", "hosts"], ["auth", "enable"]):
        own.etcdctl(*cmd, api="3")
    f = fake(2)
    port = free_port()
    r = Register("--etcd", own.url, "--docker", f.host, "--policy-key", KEY, "--state-dir", tmpdir("rfs"),
                 "--etcd-api", "v3", "--etcd-user", "host:hostpw", "--policy-pubkey", K1PUB,
                 "--metrics", f"127.0.0.1:{port}", host_ip=IP).start()
    suite.defer(r.cleanup)
    r.wait_log("in sync")

    def own_report():
        out = own.etcdctl(*root, "get", STATUS, "--print-value-only", api="3").strip()
        return json.loads(out) if out else None
    own.etcdctl(*root, "put", KEY, doc(rev(1, REV_A, K1)), api="3")
    wait_for(lambda: (own_report() or {}).get("revision") == 1, 15, interval=0.2,
             what="the host's report of revision 1 in etcd")
    code, body = curl(f"http://127.0.0.1:{port}/healthz")
    assert code == 503 and "the owned prefix cannot be read" in body and "permission denied" in body, body
    # nothing under the old prefix was lost on the way
    keys = own.etcdctl(*root, "get", "--prefix", "/registered/", "--keys-only", api="3").split()
    assert len(keys) == 2, keys
    r.stop()


suite.run()

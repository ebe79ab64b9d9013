"""register policy push|status|promote|rollback (issue 19) against real
etcd, v2 and v3: the document written, canaries, signatures, the hosts'
reports summed up, compare-and-swap under racing pushes, and one clear
line and a non-zero exit for every bad input."""
import base64
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(__file__))
from harness import Etcd, Suite, tmpdir  # noqa: E402

BIN = os.environ.get("REGISTER_BIN", "register")
SRC = os.path.join(os.path.dirname(__file__), "..", "..")
POLICY = os.path.join(SRC, "lua", "examples", "per-port.lua")
INSPECT = os.path.join(SRC, "tests", "data", "inspect", "multi.json")
suite = Suite()
etcd = Etcd().start()
suite.defer(etcd.cleanup)
D = tmpdir("rpc")
APIS = ("v2", "v3")


def run(api, *args, url=None):
    r = subprocess.run([BIN, "policy", *args, "--etcd", url or etcd.url, "--etcd-api", api],
                       capture_output=True, text=True, timeout=60)
    return r.returncode, r.stdout, r.stderr


def ok(api, *args):
    rc, out, err = run(api, *args)
    assert rc == 0, f"{args}: rc {rc}: {err}"
    return out


def bad(api, want, *args, rc=1, url=None, details=False):
    """One line on stderr; details: the check's own lines come first, the
    verdict is the last line."""
    got, out, err = run(api, *args, url=url)
    assert got == rc, f"{args}: rc {got} (want {rc}): {err}"
    lines = err.strip().splitlines()
    if details:
        lines = lines[-1:]
    assert len(lines) == 1, f"{args}: not one line: {err!r}"
    assert want in lines[0], f"{args}: {lines[0]!r} lacks {want!r}"
    return lines[0]


def get(api, key):
    if api == "v2":
        body, _ = etcd.v2(key)
        return body.get("node", {}).get("value")
    out = json.loads(etcd.etcdctl("get", key, "-w", "json", api="3"))
    kvs = out.get("kvs", [])
    return base64.b64decode(kvs[0]["value"]).decode() if kvs else None


def put(api, key, value):
    if api == "v2":
        etcd.etcdctl("set", key, value)
    else:
        etcd.etcdctl("put", key, value, api="3")


def doc(api, key):
    return json.loads(get(api, key))


def write(name, text):
    p = os.path.join(D, name)
    with open(p, "w") as f:
        f.write(text)
    return p


@suite.test
def push_canary_promote_rollback():
    for api in APIS:
        key = f"/{api}/a/policy"
        bad(api, f"no policy at {key} (register policy push FILE --key {key})", "status", "--key", key)
        bad(api, f"no policy at {key}", "promote", "--key", key)
        bad(api, f"no policy at {key}", "rollback", "--key", key)
        bad(api, "holds no policy yet", "push", POLICY, "--key", key, "--canary", "10%")
        assert get(api, key) is None
        out = ok(api, "push", POLICY, INSPECT, "--key", key)
        assert out == "pushed revision 1 to every host (stable)\n", out
        d = doc(api, key)
        src = open(POLICY).read()
        assert d["register_policy"] == 1 and d["generation"] == 1
        assert d["stable"]["revision"] == 1 and d["stable"]["source"] == src
        assert d["stable"]["name"] == "per-port.lua" and "signature" not in d["stable"]
        assert "canary" not in d and "previous" not in d
        out = ok(api, "push", POLICY, "--key", key, "--canary", "10%")
        assert "pushed revision 2 to 10% of hosts (canary" in out, out
        d = doc(api, key)
        assert d["generation"] == 2 and d["stable"]["revision"] == 1
        assert d["canary"]["revision"] == 2 and d["canary"]["percent"] == 10
        # a new canary replaces the old one
        out = ok(api, "push", POLICY, "--key", key, "--canary", "10.0.0.1,10.0.0.2")
        assert "pushed revision 3 to 2 hosts (10.0.0.1, 10.0.0.2) (canary" in out, out
        d = doc(api, key)
        assert d["canary"]["revision"] == 3 and d["canary"]["hosts"] == ["10.0.0.1", "10.0.0.2"]
        assert "percent" not in d["canary"] and d["stable"]["revision"] == 1
        out = ok(api, "promote", "--key", key)
        assert out == "promoted revision 3 to every host (stable; previous 1)\n", out
        d = doc(api, key)
        assert (d["stable"]["revision"], d["previous"]["revision"], d["generation"]) == (3, 1, 4)
        assert "canary" not in d
        bad(api, "has no canary to promote", "promote", "--key", key)
        # rollback: a canary first, then stable -> previous
        ok(api, "push", POLICY, "--key", key, "--canary", "50%")
        out = ok(api, "rollback", "--key", key)
        assert "rolled back the canary (revision 4): every host runs revision 3" in out, out
        d = doc(api, key)
        assert "canary" not in d and d["stable"]["revision"] == 3
        out = ok(api, "rollback", "--key", key)
        assert "rolled back to revision 1 (revision 3 dropped)" in out, out
        d = doc(api, key)
        assert d["stable"]["revision"] == 1 and "previous" not in d and d["generation"] == 7
        bad(api, "nothing to roll back to", "rollback", "--key", key)
        # numbers dropped by rollbacks are never given again
        out = ok(api, "push", POLICY, "--key", key)
        assert "pushed revision 5 to every host (stable; previous 1)" in out, out
        # a push without --canary drops a canary that is out
        ok(api, "push", POLICY, "--key", key, "--canary", "1%")
        out = ok(api, "push", POLICY, "--key", key)
        assert "pushed revision 7" in out and "the canary dropped" in out, out
        assert "canary" not in doc(api, key)


@suite.test
def signed_push():
    priv, pub = os.path.join(D, "fleet.key"), os.path.join(D, "fleet.pub")
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", priv], check=True)
    subprocess.run(["openssl", "pkey", "-in", priv, "-pubout", "-out", pub], check=True)
    for api in APIS:
        key = f"/{api}/s/policy"
        out = ok(api, "push", POLICY, "--key", key, "--sign", priv)
        assert "pushed revision 1" in out and "signed" in out, out
        d = doc(api, key)
        sig = os.path.join(D, "sig")
        with open(sig, "wb") as f:
            f.write(base64.b64decode(d["stable"]["signature"]))
        src = os.path.join(D, "src")
        with open(src, "w") as f:
            f.write(d["stable"]["source"])
        # openssl itself verifies it
        r = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", pub, "-rawin",
                            "-in", src, "-sigfile", sig], capture_output=True, text=True)
        assert r.returncode == 0 and "Signature Verified Successfully" in r.stdout, r
        with open(src, "a") as f:
            f.write("-- changed\n")
        r = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", pub, "-rawin",
                            "-in", src, "-sigfile", sig], capture_output=True, text=True)
        assert r.returncode != 0
        # bad signing keys: nothing written
        before = get(api, key)
        bad(api, "--sign: ", "push", POLICY, "--key", key, "--sign", os.path.join(D, "nope.key"))
        bad(api, "holds a public key", "push", POLICY, "--key", key, "--sign", pub)
        bad(api, "not PEM", "push", POLICY, "--key", key, "--sign", POLICY)
        assert get(api, key) == before


def report(api, policy_key, host, **kw):
    key = policy_key
    r = {"host": host, "key": key, "generation": 3, "revision": 2, "sha256": "",
         "offered": 2, "state": "applied", "keys": 5, "since": int(time.time()) - 90,
         "signed": False}
    r.update(kw)
    put(api, key.rsplit("/", 1)[0] + "/status/" + host, json.dumps(r))


@suite.test
def status_of_hosts():
    for api in APIS:
        key = f"/{api}/st/policy"
        ok(api, "push", POLICY, "--key", key)
        ok(api, "push", POLICY, "--key", key)
        ok(api, "push", POLICY, "--key", key, "--canary", "10.0.0.3")  # generation 3
        report(api, key, "10.0.0.1")
        report(api, key, "10.0.0.2", generation=2, revision=1, state="waiting", keys=7)
        report(api, key, "10.0.0.3", revision=2, offered=3, state="refused",
               error="signature: signed with a key not in /etc/fleet.pub")
        report(api, key, "10.0.0.9", key="/other/policy", revision=9)  # another KEY
        put(api, key.rsplit("/", 1)[0] + "/status/10.0.0.8", "garbage")
        rc, out, err = run(api, "status", "--key", key)
        assert rc == 0, err
        assert f"policy {key}, generation 3" in out, out
        assert "stable    revision 2" in out and "canary    revision 3" in out, out
        assert "previous  revision 1" in out and "to 1 host (10.0.0.3)" in out, out
        lines = {l.split()[0]: l for l in out.splitlines() if l.startswith("10.0.0.")}
        assert set(lines) == {"10.0.0.1", "10.0.0.2", "10.0.0.3"}, out
        assert lines["10.0.0.1"].split()[1:5] == ["2", "applied", "5", "90s"] or \
            lines["10.0.0.1"].split()[1:4] == ["2", "applied", "5"], lines
        assert "silent" in lines["10.0.0.2"] and "waiting" in lines["10.0.0.2"]
        assert "refused" in lines["10.0.0.3"] and "signed with a key not in" in lines["10.0.0.3"]
        assert "3 hosts: 2 on revision 2, 1 on revision 1; 1 refused, 1 waiting, 1 silent" in out, out
        assert "10.0.0.8" in err and "not JSON" in err
        rc, out, err = run(api, "status", "--key", key, "--json")
        assert rc == 0, err
        j = json.loads(out)
        assert j["generation"] == 3 and j["stable"]["revision"] == 2
        assert j["canary"]["revision"] == 3 and j["canary"]["hosts"] == ["10.0.0.3"]
        assert j["previous"]["revision"] == 1
        assert [h["host"] for h in j["hosts"]] == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
        h = {x["host"]: x for x in j["hosts"]}
        assert h["10.0.0.2"]["silent"] and not h["10.0.0.1"]["silent"]
        assert 80 <= h["10.0.0.1"]["age"] <= 150
        assert h["10.0.0.3"]["error"].startswith("signature:")
        assert j["summary"] == {"hosts": 3, "revisions": {"2": 2, "1": 1}, "refused": 1,
                                "waiting": 1, "silent": 1, "unreadable": 1}, j["summary"]


@suite.test
def racing_pushes_lose_nothing():
    """Pushes race on one key: each either wins with a revision of its own
    or fails with the conflict line; the generation counts the winners."""
    for api in APIS:
        key = f"/{api}/race/policy"
        ok(api, "push", POLICY, "--key", key)
        conflicts = 0
        wins = []
        for _ in range(4):
            with ThreadPoolExecutor(8) as ex:
                res = list(ex.map(lambda _: run(api, "push", POLICY, "--key", key), range(8)))
            for rc, out, err in res:
                if rc == 0:
                    wins.append(int(out.split()[2]))
                else:
                    assert rc == 1 and f"{key} changed meanwhile (another operator?): read it again and retry" \
                        in err, err
                    conflicts += 1
        d = doc(api, key)
        assert len(wins) == len(set(wins)), wins  # no revision given twice
        assert d["generation"] == 1 + len(wins), (d["generation"], wins)
        assert d["stable"]["revision"] == max(wins)
        assert conflicts > 0, "no push ever conflicted: the race was not tested"


@suite.test
def put_if_at_etcd_level():
    """The CAS against a key changed behind the command's back: a document
    rewritten by hand between two pushes is what the next push reads, and
    a stale write is refused (the corrupted-document check first)."""
    for api in APIS:
        key = f"/{api}/c/policy"
        ok(api, "push", POLICY, "--key", key)
        put(api, key, "{not json")
        bad(api, f"{key}: not JSON", "status", "--key", key)
        bad(api, f"{key}: not JSON", "push", POLICY, "--key", key)
        bad(api, f"{key}: not JSON", "promote", "--key", key)
        d = json.dumps({"register_policy": 1, "generation": 1,
                        "stable": {"revision": 1, "sha256": "0" * 64, "source": "x"}})
        put(api, key, d)
        bad(api, "stable.sha256 does not match its source", "rollback", "--key", key)
        put(api, key, json.dumps({"register_policy": 2}))
        bad(api, "register_policy is not 1", "status", "--key", key)


@suite.test
def bad_inputs():
    api_key = "/bad/policy"
    for api in APIS:
        key = f"/{api}{api_key}"
        bad(api, "does not load", "push", write("syntax.lua", "return {"), "--key", key)
        # a module beside the file: a host has no such directory, so the
        # check does not look there either
        write("helper.lua", "return {}")
        line = bad(api, "does not load", "push",
                   write("needs.lua", 'local h = require "helper"\nreturn dofile and {} or {}'),
                   "--key", key)
        assert "helper" in line, line
        failing = write("fails.lua", open(POLICY).read().replace(
            "function policy.records(c, host)", "function policy.records(c, host)\n  error('boom')"))
        line = bad(api, "fails its check", "push", failing, INSPECT, "--key", key, details=True)
        assert "nothing pushed" in line
        bad(api, "No such file", "push", os.path.join(D, "none.lua"), "--key", key)
        big = write("big.lua", "-- " + "x" * (256 * 1024) + "\n")
        bad(api, "too large", "push", big, "--key", key)
        bad(api, "not an IP address", "push", POLICY, "--key", key, "--canary", "10.0.0.1,web1")
        bad(api, "N% needs N in 1..100", "push", POLICY, "--key", key, "--canary", "0%")
        assert get(api, key) is None  # nothing was written
        bad(api, "--key KEY is required", "status", rc=2)
        bad(api, "unknown action", "frobnicate", "--key", key, rc=2)
        bad(api, "register policy push: which FILE?", "push", "--key", key, rc=2)
        bad(api, "takes no --json", "promote", "--key", key, "--json", rc=2)
        bad(api, "must be an absolute key path", "status", "--key", "policy", rc=2)
        # etcd unreachable: the etcd error
        line = bad(api, "etcd", "status", "--key", key, url="http://127.0.0.1:9")
        assert "127.0.0.1:9" in line, line


suite.run()

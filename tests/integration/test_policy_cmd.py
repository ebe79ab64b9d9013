"""register policy push|status|promote|rollback (issue 19) against real
etcd, v2 and v3: the document written, canaries, signatures, the hosts'
reports summed up, compare-and-swap under racing pushes, and one clear
line and a non-zero exit for every bad input."""
import base64
import http.client
import http.server
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(__file__))
from harness import Etcd, Suite, tmpdir  # noqa: E402
from toolkit import HttpServer  # noqa: E402

BIN = os.environ.get("REGISTER_BIN", "register")
SRC = os.path.join(os.path.dirname(__file__), "..", "..")
POLICY = os.path.join(SRC, "lua", "examples", "per-port.lua")
INSPECT = os.path.join(SRC, "tests", "data", "inspect", "multi.json")
suite = Suite()
etcd = Etcd().start()
suite.defer(etcd.cleanup)
D = tmpdir("rpc")
APIS = ("v2", "v3")


def run(api, *args, url=None, env=None):
    r = subprocess.run([BIN, "policy", *args, "--etcd", url or etcd.url, "--etcd-api", api],
                       capture_output=True, text=True, timeout=60,
                       env=None if env is None else {**os.environ, **env})
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
        report(api, key, "10.0.0.1", generation=3, revision=3, offered=3,
               sha256=doc(api, key)["canary"]["sha256"])
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


@suite.test
def sign_from_the_environment():
    """REGISTER_POLICY_SIGN signs pushes; status, promote and rollback
    ignore it (they refused to run: "takes no --sign"), and refuse only
    --sign on their command line.  An empty variable is unset, as every
    other REGISTER_* one."""
    priv = os.path.join(D, "env.key")
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", priv], check=True)
    for api in APIS:
        key = f"/{api}/envsign/policy"
        env = {"REGISTER_POLICY_SIGN": priv, "REGISTER_POLICY_KEY": key}
        rc, out, err = run(api, "push", POLICY, env=env)
        assert rc == 0 and "signed" in out, (rc, out, err)
        assert doc(api, key)["stable"]["signature"]
        rc, out, err = run(api, "push", POLICY, "--canary", "10.1.1.1", env=env)
        assert rc == 0 and "signed" in out, (rc, out, err)
        assert doc(api, key)["canary"]["signature"]
        for args in (("status",), ("status", "--json"), ("promote", "--force"), ("rollback",)):
            rc, out, err = run(api, *args, env=env)
            assert rc == 0 and "--sign" not in err, (args, rc, out, err)
        for action in ("status", "promote", "rollback"):
            bad(api, f"register policy {action} takes no --sign", action, "--key", key, "--sign", priv, rc=2)
        rc, out, err = run(api, "push", POLICY, env={**env, "REGISTER_POLICY_SIGN": ""})
        assert rc == 0 and "signed" not in out, (rc, out, err)
        assert "signature" not in doc(api, key)["stable"]


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
        assert "3 hosts: 1 on revision 1, 2 on revision 2; 1 refused, 1 waiting, 1 silent" in out, out
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
        bad(api, f"{key} is unreadable (not JSON", "status", "--key", key)
        bad(api, f"{key} is unreadable (not JSON", "push", POLICY, "--key", key)
        bad(api, f"{key} is unreadable (not JSON", "promote", "--key", key)
        d = json.dumps({"register_policy": 1, "generation": 1,
                        "stable": {"revision": 1, "sha256": "0" * 64, "source": "x"}})
        put(api, key, d)
        bad(api, "stable.sha256 does not match its source", "rollback", "--key", key)
        put(api, key, json.dumps({"register_policy": 2}))
        bad(api, "register_policy is not 1", "status", "--key", key)


def latin1_policy():
    p = os.path.join(D, "latin1.lua")
    with open(p, "wb") as f:
        f.write(b"-- caf\xe9 (latin-1)\n" + open(POLICY, "rb").read())
    return p


@suite.test
def non_utf8_source_refused():
    """A byte that is not UTF-8 cannot cross etcd's JSON APIs (v2 gives it
    back as U+FFFD, and every host refused the revision): push refuses it,
    naming where it is, and writes nothing."""
    bad_file = latin1_policy()
    for api in APIS:
        key = f"/{api}/u8/policy"
        line = bad(api, "is not UTF-8: byte 6 (line 1) is 0xe9", "push", bad_file, "--key", key)
        assert "nothing pushed" in line, line
        assert get(api, key) is None
        ok(api, "push", POLICY, "--key", key)
        before = get(api, key)
        bad(api, "is not UTF-8", "push", bad_file, "--key", key, "--canary", "10.0.0.1")
        assert get(api, key) == before


@suite.test
def hand_edited_numbers():
    """Numbers edited by hand past what a document may hold: one line and
    exit 1, never an abort, whatever the command."""
    for api in APIS:
        key = f"/{api}/num/policy"
        ok(api, "push", POLICY, "--key", key)
        d = doc(api, key)
        for field, want in (("last_revision", "last_revision is not an integer in 0..9007199254740991"),
                            ("generation", "generation is not an integer in 1..9007199254740991")):
            for n in (9223372036854775807, 9007199254740992, 10 ** 30, -1):
                e = dict(d, **{field: n})
                put(api, key, json.dumps(e))
                for args in (("push", POLICY), ("promote",), ("rollback",), ("status",)):
                    bad(api, want if n != 10 ** 30 else f"{field} is not an integer", *args, "--key", key)
        # the largest number a document may hold: valid, and nothing above it
        put(api, key, json.dumps(dict(d, last_revision=9007199254740991)))
        bad(api, "revision 9007199254740991 is the largest a document may hold", "push", POLICY, "--key", key)
        put(api, key, json.dumps(dict(d, generation=9007199254740991)))
        bad(api, "generation 9007199254740991 is the largest a document may hold", "push", POLICY,
            "--key", key)
        ok(api, "status", "--key", key)


@suite.test
def unreadable_document_recovery():
    """A document that does not parse: status still shows every host and
    why; the others say how to recover; push --force replaces it, numbered
    above anything a host reports, still compare-and-swap."""
    for api in APIS:
        key = f"/{api}/unr/policy"
        ok(api, "push", POLICY, "--key", key)
        report(api, key, "10.0.0.1", generation=9, revision=7, offered=7)
        report(api, key, "10.0.0.2", generation=8, revision=6, offered=8, state="refused", error="boom")
        report(api, key, "10.0.0.3", key="/elsewhere/policy", generation=30, revision=20, offered=20)
        good = doc(api, key)
        for text, why in (('{"register_policy": 1, "generation": 4, "stab', "not JSON"),
                          ("[1, 2]", "not a policy document: not a JSON object"),
                          ('{"register_policy": 1, "generation": "4"}', "generation is not an integer"),
                          (json.dumps(dict(good, stable=dict(good["stable"], source="changed"))),
                           "stable.sha256 does not match its source")):
            put(api, key, text)
            rc, out, err = run(api, "status", "--key", key)
            assert rc == 1, (rc, err)
            assert f"policy {key}: the document is unreadable ({why}" in out, out
            hosts = [l.split()[0] for l in out.splitlines() if l.startswith("10.0.0.")]
            assert hosts == ["10.0.0.1", "10.0.0.2"], out
            lines = err.strip().splitlines()
            assert len(lines) == 1 and why in lines[0] and "--force replaces it" in lines[0], err
            rc, out, err = run(api, "status", "--key", key, "--json")
            assert rc == 1, err
            j = json.loads(out)
            assert why in j["document_error"] and j["generation"] is None and j["stable"] is None, j
            assert [h["host"] for h in j["hosts"]] == ["10.0.0.1", "10.0.0.2"], j
            for args in (("push", POLICY), ("promote",), ("rollback",)):
                line = bad(api, f"{key} is unreadable ({why}", *args, "--key", key)
                assert f"register policy push FILE --key {key} --force" in line, line
            assert get(api, key) == text
        bad(api, "holds no readable policy", "push", POLICY, "--key", key, "--force", "--canary", "10.0.0.1")
        out = ok(api, "push", POLICY, "--key", key, "--force")
        # above every number seen: a host of another KEY under the same
        # status directory too (numbers only grow: more is harmless)
        assert "pushed revision 21 to every host (stable; replaced the unreadable document: numbered " \
            "above generation 30 and revision 20)" in out, out
        d = doc(api, key)
        assert d["stable"]["revision"] == 21 and d["generation"] == 31 and "previous" not in d, d
        ok(api, "status", "--key", key)
        # the numbers the unreadable document still shows count too
        put(api, key, json.dumps(dict(good, generation=50, last_revision=40,
                                      stable=dict(good["stable"], source="x"))))
        out = ok(api, "push", POLICY, "--key", key, "--force")
        assert "pushed revision 41" in out, out
        assert doc(api, key)["generation"] == 51
        # --force on a document that parses: an ordinary push
        out = ok(api, "push", POLICY, "--key", key, "--force")
        assert "pushed revision 42 to every host (stable; previous 41)" in out, out
        bad(api, "register policy status takes no --force", "status", "--key", key, "--force", rc=2)
        bad(api, "register policy rollback takes no --force", "rollback", "--key", key, "--force", rc=2)
        # --force is compare-and-swap too: the racers that lose say so
        put(api, key, "{broken")
        with ThreadPoolExecutor(6) as ex:
            res = list(ex.map(lambda _: run(api, "push", POLICY, "--key", key, "--force"), range(6)))
        wins = [r for r in res if r[0] == 0]
        assert len(wins) >= 1, res
        for rc, out, err in res:
            assert rc == 0 or f"{key} changed meanwhile (another operator?)" in err, err
        # one replaced the broken document (generation 31: above the
        # hosts' 30), each later winner read what it wrote and pushed on
        assert doc(api, key)["generation"] == 30 + len(wins), (doc(api, key)["generation"], len(wins))


@suite.test
def promote_checks_the_canary():
    """promote goes by what the canary's hosts did with its revision."""
    for api in APIS:
        key = f"/{api}/pc/policy"
        ok(api, "push", POLICY, "--key", key)
        ok(api, "push", POLICY, "--key", key, "--canary", "10.77.0.1,10.77.0.2")  # revision 2
        before = get(api, key)
        # a canary naming addresses no host runs: nobody applied it
        bad(api, "no canary host reports revision 2 applied (the canary: 2 hosts (10.77.0.1, 10.77.0.2))",
            "promote", "--key", key)
        # a host out of the canary applying stable does not count
        report(api, key, "10.77.0.9", generation=2, revision=1, offered=1, state="waiting")
        # its only canary host that answered refused it
        report(api, key, "10.77.0.2", generation=2, revision=1, offered=2, state="refused",
               error="signature: unsigned")
        line = bad(api, "revision 2 was refused by canary host 10.77.0.2: not promoted", "promote", "--key", key)
        assert "--force" in line, line
        # even when another canary host applied it
        report(api, key, "10.77.0.1", generation=2, revision=2, offered=2,
               sha256=doc(api, key)["canary"]["sha256"])
        bad(api, "refused by canary host 10.77.0.2", "promote", "--key", key)
        assert get(api, key) == before
        out = ok(api, "promote", "--key", key, "--force")
        assert out == "promoted revision 2 to every host (stable; previous 1; --force: refused by 10.77.0.2)\n", out
        # applied by one, refused by none: promoted
        ok(api, "push", POLICY, "--key", key, "--canary", "10%")  # revision 3
        canary = next(f"10.1.0.{i}" for i in range(256) if bucket(f"10.1.0.{i}") < 10)
        report(api, key, canary, generation=4, revision=3, offered=3,
               sha256=doc(api, key)["canary"]["sha256"])
        out = ok(api, "promote", "--key", key)
        assert out == "promoted revision 3 to every host (stable; previous 2)\n", out
        ok(api, "push", POLICY, "--key", key, "--canary", "10.77.0.5")  # revision 4
        out = ok(api, "promote", "--key", key, "--force")
        assert "--force: no canary host reported it applied" in out, out



@suite.test
def promote_goes_by_the_canarys_own_document():
    """A report about an older document whose revision had the same number
    (the key deleted and pushed again) is not the canary's: promote took
    it for an applied canary.  And a push onto the absent key numbers above
    what the hosts report (it began at 1 again)."""
    other = write("other.lua", open(POLICY).read() + "\n-- another revision\n")
    for api in APIS:
        key = f"/{api}/stale/policy"
        ok(api, "push", POLICY, "--key", key)
        ok(api, "push", other, "--key", key, "--canary", "10.77.0.1")  # revision 2
        old = doc(api, key)
        report(api, key, "10.77.0.1", generation=2, revision=2, offered=2,
               sha256=old["canary"]["sha256"])
        etcd.etcdctl("rm", key) if api == "v2" else etcd.etcdctl("del", key, api="3")
        out = ok(api, "push", POLICY, "--key", key)
        assert out.startswith("pushed revision 3 to every host"), out
        d = doc(api, key)
        assert d["stable"]["revision"] == 3 and d["generation"] == 3, d
        ok(api, "push", POLICY, "--key", key, "--canary", "10.77.0.1")  # revision 4
        # a report naming revision 4 with another document's sha256, or
        # refusing a revision 4 offered in another generation: neither counts
        report(api, key, "10.77.0.1", generation=3, revision=4, offered=4,
               sha256=old["canary"]["sha256"])
        bad(api, "no canary host reports revision 4 applied", "promote", "--key", key)
        report(api, key, "10.77.0.1", generation=1, revision=3, offered=4, state="refused",
               error="an older document's")
        bad(api, "no canary host reports revision 4 applied", "promote", "--key", key)
        report(api, key, "10.77.0.1", generation=4, revision=4, offered=4,
               sha256=doc(api, key)["canary"]["sha256"])
        out = ok(api, "promote", "--key", key)
        assert out == "promoted revision 4 to every host (stable; previous 3)\n", out


def bucket(ip):
    h = 2166136261
    for b in ip.encode():
        h = ((h ^ b) * 16777619) & 0xffffffff
    return h % 100


@suite.test
def status_shows_reports_safely():
    """A host is the one its report's key names; hostile or odd text from
    reports reaches no terminal raw; every count is in the summary."""
    for api in APIS:
        key = f"/{api}/ss/policy"
        ok(api, "push", POLICY, "--key", key)
        report(api, key, "10.77.0.1", generation=1, revision=1, offered=1)
        # a report under 10.77.0.91 claiming to be 10.77.0.1
        r = {"host": "10.77.0.1", "key": key, "generation": 1, "revision": 1, "sha256": "",
             "offered": 1, "state": "refused", "keys": 0, "since": 0,
             "error": "\x1b[31mred\x1b[0m\nsecond line\rthird"}
        put(api, key.rsplit("/", 1)[0] + "/status/10.77.0.91", json.dumps(r))
        put(api, key.rsplit("/", 1)[0] + "/status/10.77.0.8", "garbage")
        rc, out, err = run(api, "status", "--key", key)
        assert rc == 0, err
        hosts = [l for l in out.splitlines() if l.startswith("10.77.")]
        assert [l.split()[0] for l in hosts] == ["10.77.0.1", "10.77.0.91"], out
        assert "\x1b" not in out and "\r" not in out, repr(out)
        line = hosts[1]
        assert "\\x1b[31mred" in line and "second line" in line and "third" in line, line
        assert line.split()[1:5] == ["1", "refused", "0", "-"], line
        assert "2 hosts: 2 on revision 1; 1 refused, 0 waiting, 0 silent, 1 unreadable" in out, out
        assert "10.77.0.91" in err and "names host 10.77.0.1" in err, err
        j = json.loads(ok(api, "status", "--key", key, "--json"))
        h = {x["host"]: x for x in j["hosts"]}
        assert set(h) == {"10.77.0.1", "10.77.0.91"} and h["10.77.0.91"]["age"] is None, j
        assert j["summary"]["unreadable"] == 1


@suite.test
def cli_details():
    for api in APIS:
        key = f"/{api}/cli/policy"
        bad(api, "--canary: 10.77.0.1 is named twice", "push", POLICY, "--key", key,
            "--canary", "10.77.0.1,10.0.0.2,10.77.0.1")
        # a failed check: one line, the first of what the check said
        failing = write("fails2.lua", open(POLICY).read().replace(
            "function policy.records(c, host)", "function policy.records(c, host)\n  error('boom')"))
        line = bad(api, "fails its check on the inspect documents given: ", "push", failing, INSPECT,
                   "--key", key)
        assert "boom" in line and "nothing pushed" in line and not line.count("register:"), line
        loadfail = write("loadfail.lua", "local function f() error('at load') end\nf()\n")
        bad(api, "does not load", "push", loadfail, "--key", key)
        missing = os.path.join(D, "missing.json")
        line = bad(api, f"{missing}: No such file or directory", "push", POLICY, missing, "--key", key)
        assert "fails its check" not in line, line
        assert get(api, key) is None
        # config.c's messages name the command once
        line = bad(api, "register policy status: --key KEY is required", "status", rc=2)
        assert not line.startswith("register policy: register policy"), line
        line = bad(api, "etcd", "status", "--key", key, url="http://127.0.0.1:9")
        assert "etcd: etcd" not in line, line
        rc, out, err = run(api, "--help")
        assert rc == 0 and "--force" in out, out
    # v2: a directory at KEY is not "changed meanwhile"
    key = "/v2/cli/dir"
    etcd.etcdctl("mkdir", key)
    for args in (("push", POLICY), ("status",), ("promote",)):
        bad("v2", f"{key} is a directory in etcd (v2)", *args, "--key", key)
    etcd.etcdctl("set", key + "/x", "1")
    bad("v2", f"{key} is a directory in etcd (v2)", "push", POLICY, "--key", key)


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
        # a prefix every host gets alike, or one over register's own keys:
        # every host would refuse it (each would delete the others' keys)
        line = bad(api, "is not each host's own", "push",
                   write("shared.lua", open(POLICY).read().replace(
                       'function policy.prefix(host)', 'function policy.prefix(host) do return "/svc" end')),
                   "--key", key)
        assert "/svc" in line and "nothing pushed" in line, line
        line = bad(api, "holds the policy key", "push",
                   write("over.lua", open(POLICY).read().replace(
                       'function policy.prefix(host)',
                       f'function policy.prefix(host) do return "/{api}" end')), "--key", key)
        assert "nothing pushed" in line, line
        bad(api, "is inside the write fences", "push",
            write("fence.lua", open(POLICY).read().replace(
                'function policy.prefix(host)',
                'function policy.prefix(host) do return "/register/fence/" .. host.ip end')), "--key", key)
        bad(api, "not an IP address", "push", POLICY, "--key", key, "--canary", "10.0.0.1,web1")
        bad(api, "N% needs N in 1..100", "push", POLICY, "--key", key, "--canary", "0%")
        # digits and '%' only: strtol took a space, a sign, a leading zero
        for spec in (" 5%", "+5%", "05%", "5 %", "-5%"):
            bad(api, "N% needs N in 1..100", "push", POLICY, "--key", key, "--canary", spec)
        # a directory: said, not "Input/output error"
        bad(api, f"{D} is a directory", "push", D, "--key", key)
        assert get(api, key) is None  # nothing was written
        bad(api, "--key KEY is required", "status", rc=2)
        bad(api, "unknown action", "frobnicate", "--key", key, rc=2)
        bad(api, "register policy push: which FILE?", "push", "--key", key, rc=2)
        bad(api, "takes no --json", "promote", "--key", key, "--json", rc=2)
        bad(api, "must be an absolute key path", "status", "--key", "policy", rc=2)
        bad(api, '--key "/a/../policy" has a ".." segment', "push", POLICY, "--key", "/a/../policy", rc=2)
        # etcd unreachable: the etcd error
        line = bad(api, "etcd", "status", "--key", key, url="http://127.0.0.1:9")
        assert "127.0.0.1:9" in line, line


@suite.test
def three_large_revisions_fit_one_compare_and_swap():
    """The compare-and-swap compares the key's mod_revision (v2: its index),
    not its old value: with three revisions of about 250 KB (stable,
    previous, canary; the document just under its 1 MiB), a v3 write that
    carried the old document beside the new one passed etcd's request
    limit (1.5 MiB): "etcdserver: request is too large"."""
    base = open(POLICY).read()
    # quotes, escaped in the document's JSON: about 330 KB each there
    files = [write(f"big{i}.lua", base + "\n--[[ " + chr(ord("a") + i) * 175_000 + '"' * 78_000 + " ]]\n")
             for i in range(3)]
    for api in APIS:
        key = f"/{api}/big/policy"
        ok(api, "push", files[0], "--key", key)
        ok(api, "push", files[1], "--key", key)
        ok(api, "push", files[2], "--key", key, "--canary", "10.0.0.1")
        d = doc(api, key)
        assert d["canary"]["revision"] == 3 and d["stable"]["revision"] == 2, d
        assert d["previous"]["revision"] == 1, d
        assert 950_000 < len(get(api, key)) < 1024 * 1024



@suite.test
def a_document_too_large_once_escaped_is_said():
    """A source under 256 KiB can make a document over 1 MiB once JSON
    escapes it (a control byte is 6) or with the revisions kept beside it:
    push said "the new document is invalid (a bug)"."""
    base = open(POLICY).read()
    ctl = write("ctl.lua", base + "\n--[[ " + "\x01" * 180_000 + " ]]\n")
    quotes = write("quotes.lua", base + "\n--[[ " + '"' * 200_000 + " ]]\n")
    for api in APIS:
        key = f"/{api}/escaped/policy"
        line = bad(api, "escaped in JSON; shorten it", "push", ctl, "--key", key)
        assert "the document would be " in line and "at most 1048576" in line, line
        assert "a bug" not in line, line
        assert get(api, key) is None
        ok(api, "push", quotes, "--key", key)  # about 400 KB escaped: fits
        ok(api, "push", quotes, "--key", key)  # stable and previous: 800 KB
        before = get(api, key)
        line = bad(api, "with the revisions it keeps", "push", quotes, "--key", key, "--canary", "10.0.0.1")
        assert "a bug" not in line and get(api, key) == before, line


class LossyProxy:
    """An HTTP proxy to etcd that forwards every request but, for the first
    `drop` writes (v2 PUT/DELETE, v3 txn), lets etcd apply the write and
    never answers: a write in doubt.  after(): called once such a write
    is applied."""

    def __init__(self, drop=1, after=None):
        self.left = [drop]
        self.dropped = []
        up = etcd.client_port
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def fwd(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else None
                c = http.client.HTTPConnection("127.0.0.1", up, timeout=30)
                hdrs = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                c.request(self.command, self.path, body=body, headers=hdrs)
                r = c.getresponse()
                data = r.read()
                c.close()
                if (self.command in ("PUT", "DELETE") or "/v3/kv/txn" in self.path) and outer.left[0] > 0:
                    outer.left[0] -= 1
                    outer.dropped.append(f"{self.command} {self.path}")
                    if after:
                        after()
                    time.sleep(8)  # longer than the command waits for an answer
                    self.close_connection = True
                    return
                self.send_response(r.status)
                for k, v in r.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = fwd

        self.http = HttpServer(H)
        self.url = self.http.url

    def close(self):
        self.http.close()


@suite.test
def a_write_whose_answer_was_lost_is_no_conflict():
    """etcd applies a write whose answer is lost; the command sends it again
    to the next endpoint, which finds the key changed -- by this very write.
    It said "changed meanwhile (another operator?)", and a rollback retried
    as told rolled back twice; now it reads the key back and finds its own
    document there."""
    for api in APIS:
        key = f"/{api}/indoubt/policy"
        ok(api, "push", POLICY, "--key", key)
        ok(api, "push", POLICY, "--key", key)
        ok(api, "push", POLICY, "--key", key, "--canary", "10.9.9.9")
        for action, want, stable in (("rollback", "rolled back the canary (revision 3): every host runs "
                                      "revision 2\n", 2),
                                     ("push", "pushed revision 4 to every host (stable; previous 2)\n", 4)):
            gen = doc(api, key)["generation"]
            px = LossyProxy()
            try:
                args = [action] + ([POLICY] if action == "push" else []) + ["--key", key, "--etcd-discovery", "off"]
                rc, out, err = run(api, *args, url=f"{px.url},{etcd.url}")
            finally:
                px.close()
            assert len(px.dropped) == 1, px.dropped
            assert rc == 0 and out == want, (rc, out, err)
            d = doc(api, key)
            assert d["generation"] == gen + 1 and d["stable"]["revision"] == stable, d
            assert "canary" not in d and len(d["write_id"]) == 32, d
        # a conflict with another's write after this one is still one
        theirs = {}

        def another_operator():
            theirs.update(doc(api, key), write_id="0" * 32)
            put(api, key, json.dumps(theirs))

        px = LossyProxy(after=another_operator)
        try:
            bad(api, f"{key} changed meanwhile (another operator?)", "rollback", "--key", key,
                "--etcd-discovery", "off", url=f"{px.url},{etcd.url}")
        finally:
            px.close()
        d = doc(api, key)
        assert d == theirs, d


@suite.test
def inputs_that_are_not_regular_files():
    """FILE, an inspect document and --sign are read only when each is a
    regular file under its cap: a FIFO blocked push forever, /dev/zero as an
    inspect document grew it without bound, a directory said "Input/output
    error" or "read error"."""
    fifo = os.path.join(D, "fifo")
    os.mkfifo(fifo)
    big_inspect = os.path.join(D, "big.json")
    with open(big_inspect, "w") as f:
        f.truncate(32 * 1024 * 1024 + 1)
    big_key = os.path.join(D, "big.key")
    with open(big_key, "w") as f:
        f.truncate(64 * 1024 + 1)
    big_src = os.path.join(D, "big.lua")
    with open(big_src, "w") as f:
        f.truncate(256 * 1024 + 1)
    for api in APIS:
        key = f"/{api}/inputs/policy"
        t = time.monotonic()
        bad(api, f"{fifo} is a FIFO, not a regular file", "push", fifo, "--key", key)
        bad(api, f"{fifo} is a FIFO, not a regular file (an inspect document to check", "push", POLICY,
            fifo, "--key", key)
        bad(api, f"--sign: {fifo} is a FIFO, not a regular file", "push", POLICY, "--key", key,
            "--sign", fifo)
        assert time.monotonic() - t < 20
        bad(api, "/dev/zero is a character device, not a regular file (an inspect document", "push", POLICY,
            "/dev/zero", "--key", key)
        bad(api, f"{D} is a directory: push takes a policy file", "push", D, "--key", key)
        bad(api, f"{D} is a directory, not a file (an inspect document", "push", POLICY, D, "--key", key)
        bad(api, f"--sign: {D} is a directory, not a file", "push", POLICY, "--key", key, "--sign", D)
        bad(api, f"{big_inspect} is too large: 33554433 bytes (at most 33554432) (an inspect", "push",
            POLICY, big_inspect, "--key", key)
        bad(api, f"--sign: {big_key} is too large: 65537 bytes (at most 65536)", "push", POLICY,
            "--key", key, "--sign", big_key)
        bad(api, f"{big_src} is too large: a policy in etcd may be at most 262144 bytes", "push", big_src,
            "--key", key)
        bad(api, f"{D}/nope.lua: No such file or directory", "push", f"{D}/nope.lua", "--key", key)
        assert get(api, key) is None
    # register check reads its inspect documents the same way
    for arg, want in ((fifo, f"{fifo} is a FIFO, not a regular file"), (D, f"{D} is a directory, not a file"),
                      (big_inspect, f"{big_inspect} is too large")):
        r = subprocess.run([BIN, "check", POLICY, arg], capture_output=True, text=True, timeout=20)
        assert r.returncode == 1 and f"register: {want}" in r.stderr, r
    with open("/dev/zero") as zero:
        r = subprocess.run([BIN, "check", POLICY, "-"], stdin=zero, capture_output=True, text=True, timeout=20)
    assert r.returncode == 1 and "-: stdin is too large: more than 33554432 bytes" in r.stderr, r


@suite.test
def status_counts_every_revision():
    """status summed the hosts of 64 revisions at most (a fixed array: the
    65th and later were left out of the summary) in the order met; now
    every revision, in numeric order."""
    for api in APIS:
        key = f"/{api}/many/policy"
        ok(api, "push", POLICY, "--key", key)
        n = 70
        for i in range(n):  # host i runs revision n - i; 10.0.0.0 two more
            report(api, key, f"10.0.0.{i}", revision=n - i, offered=n - i)
        for i in (100, 101):
            report(api, key, f"10.0.0.{i}", revision=n, offered=n)
        j = json.loads(ok(api, "status", "--key", key, "--json"))
        revs = j["summary"]["revisions"]
        assert list(revs) == [str(r) for r in range(1, n + 1)], list(revs)
        assert revs[str(n)] == 3 and all(revs[str(r)] == 1 for r in range(1, n)), revs
        assert j["summary"]["hosts"] == n + 2
        out = ok(api, "status", "--key", key)
        want = ", ".join(f"{3 if r == n else 1} on revision {r}" for r in range(1, n + 1))
        assert f"{n + 2} hosts: {want}; 0 refused" in out, out


@suite.test
def status_of_a_deleted_document_shows_the_hosts():
    """status on a key whose document was deleted said "no policy" and
    nothing else, though the hosts still report what they run (an
    unreadable document showed them); now it shows them, says on one line
    that there is no policy, and exits 1 as before."""
    for api in APIS:
        key = f"/{api}/deleted/policy"
        ok(api, "push", POLICY, "--key", key)
        report(api, key, "10.0.0.1", state="refused", error="the policy key was deleted", offered=0)
        report(api, key, "10.0.0.2")
        if api == "v2":
            etcd.etcdctl("rm", key)
        else:
            etcd.etcdctl("del", key, api="3")
        rc, out, err = run(api, "status", "--key", key)
        assert rc == 1, (rc, out, err)
        assert err == f"register policy: no policy at {key} (register policy push FILE --key {key})\n", err
        assert f"policy {key}: no document there" in out, out
        assert "10.0.0.1" in out and "the policy key was deleted" in out and "10.0.0.2" in out, out
        assert "2 hosts: 2 on revision 2; 1 refused, 0 waiting, 0 silent, 0 unreadable" in out, out
        rc, out, err = run(api, "status", "--key", key, "--json")
        assert rc == 1 and err.count("\n") == 1 and "no policy at" in err, (rc, err)
        j = json.loads(out)
        assert j["document"] == "absent" and j["document_error"] is None and j["generation"] is None, j
        assert j["stable"] is None and j["canary"] is None and j["previous"] is None, j
        assert [h["host"] for h in j["hosts"]] == ["10.0.0.1", "10.0.0.2"], j
        assert j["summary"]["hosts"] == 2 and j["summary"]["refused"] == 1, j
        j = json.loads(run(api, "status", "--key", f"/{api}/nothing/policy", "--json")[1])
        assert j["document"] == "absent" and j["hosts"] == [], j


@suite.test
def numbers_without_room_name_where_they_are():
    """A push onto an absent (or unreadable) document goes on above the
    numbers the hosts report: one at the largest a document may hold said
    "a host reports generation N or revision N", naming no host among
    hundreds; now the report's key, or the document."""
    top = 9007199254740991
    for api in APIS:
        key = f"/{api}/room/policy"
        status_dir = f"/{api}/room/status"
        report(api, key, "10.0.0.1", generation=5)
        report(api, key, "10.0.0.7", generation=top)
        bad(api, f"{key}: the host's report at {status_dir}/10.0.0.7 names generation {top}, as high as a "
            f"document may hold ({top}): nothing written (correct or delete that report)",
            "push", POLICY, "--key", key)
        report(api, key, "10.0.0.7", generation=5)
        report(api, key, "10.0.0.9", revision=top, offered=0)
        bad(api, f"{key}: the host's report at {status_dir}/10.0.0.9 names revision {top}",
            "push", POLICY, "--key", key)
        report(api, key, "10.0.0.9", revision=1, offered=top)
        bad(api, f"the host's report at {status_dir}/10.0.0.9 names revision {top}", "push", POLICY, "--key", key)
        assert get(api, key) is None
        report(api, key, "10.0.0.9")
        # an unreadable document that still shows a number without room
        put(api, key, json.dumps({"register_policy": 1, "generation": top,
                                  "stable": {"revision": 1, "sha256": "0" * 64, "source": "x"}}))
        bad(api, f"{key}: the document there shows generation {top}, as high as a document may hold",
            "push", POLICY, "--key", key, "--force")


@suite.test
def status_says_what_it_knows_of_a_signature():
    """status labelled a revision "signed" whenever a signature member was
    there, even "" or garbage.  Without a public key it says a signature
    is attached and not verified; with --policy-pubkey it verifies."""
    priv, pub = os.path.join(D, "lab.key"), os.path.join(D, "lab.pub")
    other = os.path.join(D, "other.key")
    for k in (priv, other):
        subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", k], check=True)
    subprocess.run(["openssl", "pkey", "-in", priv, "-pubout", "-out", pub], check=True)
    for api in APIS:
        key = f"/{api}/label/policy"
        ok(api, "push", POLICY, "--key", key, "--sign", priv)      # previous: verifies
        ok(api, "push", POLICY, "--key", key, "--sign", other)     # stable: another key's
        ok(api, "push", POLICY, "--key", key, "--canary", "10.0.0.1")  # canary: unsigned
        lines = ok(api, "status", "--key", key).splitlines()
        assert "signature attached (not verified here" in lines[1], lines
        assert "  unsigned" in lines[2] and "signature attached" in lines[4], lines
        assert not any("signed, verifies" in l for l in lines), lines
        lines = ok(api, "status", "--key", key, "--policy-pubkey", pub).splitlines()
        assert "signature does NOT verify (" in lines[1], lines
        assert "  unsigned" in lines[2] and "signed, verifies" in lines[4], lines
        j = json.loads(ok(api, "status", "--key", key, "--json", "--policy-pubkey", pub))
        assert (j["stable"]["signed"], j["stable"]["signature"]) == (False, "does not verify"), j
        assert j["stable"]["signature_error"], j
        assert (j["canary"]["signed"], j["canary"]["signature"]) == (False, "none"), j
        assert (j["previous"]["signed"], j["previous"]["signature"]) == (True, "verifies"), j
        j = json.loads(ok(api, "status", "--key", key, "--json"))
        assert (j["stable"]["signed"], j["stable"]["signature"]) == (True, "unverified"), j
        # an empty signature, and garbage
        d = doc(api, key)
        d["stable"]["signature"] = ""
        d["previous"]["signature"] = "Zm9v"
        put(api, key, json.dumps(d))
        lines = ok(api, "status", "--key", key).splitlines()
        assert "unsigned (an empty signature)" in lines[1], lines
        assert "signature attached (not verified here" in lines[4], lines
        lines = ok(api, "status", "--key", key, "--policy-pubkey", pub).splitlines()
        assert "unsigned (an empty signature)" in lines[1], lines
        assert "signature does NOT verify (" in lines[4], lines
        # the key file: one line when it is no key, or not a file
        bad(api, "--policy-pubkey: ", "status", "--key", key, "--policy-pubkey", POLICY)
        bad(api, f"--policy-pubkey: {D} is a directory", "status", "--key", key, "--policy-pubkey", D)
        for action in ("promote", "rollback"):
            bad(api, f"register policy {action} takes no --policy-pubkey", action, "--key", key,
                "--policy-pubkey", pub, rc=2)
        bad(api, "register policy push takes no --policy-pubkey", "push", POLICY, "--key", key,
            "--policy-pubkey", pub, rc=2)


suite.run()

"""A small fleet on one 3-member etcd cluster (bench/fleet.py, 20 hosts in
private network namespaces): after each failure, etcd holds exactly what
every host's Docker says, for v2 with TTLs and v3 with a lease.

  leader     the etcd leader killed -9 while containers change
  outage     all three members down with changes meanwhile, then back
  kill       hosts killed -9: their keys, and only theirs, expire
  partition  hosts cut off (packets dropped, not refused) for 2 x TTL with
             changes meanwhile: their keys expire, the others stay exact;
             healed, everything is exact again
  policy     the fleet's policy in etcd (register policy, issue 19), every
             host following it (--policy-key, signed): a new key naming to a
             canary (25%: 3 of the 20 hosts), promote, a broken revision
             (every host refuses it and keeps its keys), rollback; every
             step converges (reports and etcd), a watcher of the prefix sees
             no make-before-break violation, and `register policy status
             --json` agrees with every host's report.  Because it is in the
             run, the hosts follow the policy key through the failures above
             too (no policy there yet: their own --policy)

Timings are measured by bench/fleet.py, not asserted here."""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
from harness import Suite, log, tmpdir  # noqa: E402

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FLEET = os.path.join(SRC, "bench", "fleet.py")
REGISTER = os.environ["REGISTER_BIN"]
FAKEDOCKER = os.path.join(os.path.dirname(REGISTER), "bench", "bench_fakedocker")

if os.geteuid() != 0:
    log("skip: network namespaces need root")
    sys.exit(77)

suite = Suite()


def netns():
    return set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())


def run_fleet(api):
    out = os.path.join(tmpdir("rfl"), "results.json")
    before = netns()
    p = subprocess.Popen([sys.executable, FLEET, "--hosts", "20", "--containers", "5", "--api", api,
                          "--ttl", "3", "--outage", "6", "--churn", "20",
                          "--scenarios", "leader,outage,kill,partition,policy", "--policy-canary", "25%",
                          "--json", out,
                          "--register", REGISTER, "--fakedocker", FAKEDOCKER],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = p.communicate(timeout=540)
    except subprocess.TimeoutExpired:
        # SIGTERM: fleet.py removes its namespaces and processes
        p.terminate()
        try:
            stdout, stderr = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            stdout, stderr = p.communicate()
        raise AssertionError(f"fleet.py ran over 540 s:\n{stderr[-8000:]}")
    log(stdout[-3000:])
    if p.returncode not in (0, 1) or not os.path.exists(out):
        raise AssertionError(f"fleet.py failed ({p.returncode}):\n{stderr[-8000:]}")
    results = {x["scenario"]: x for x in json.load(open(out))}
    # a host that stopped working, exited, or would not stop is named
    trouble = [f"{name}: {msg}" for name, x in results.items() for msg in x.get("problems", [])]
    assert not trouble, "\n".join(trouble) + "\n" + stderr[-8000:]
    # everything it made is gone: namespaces (and with them the veths)
    leftover = {n for n in netns() - before if n.startswith("rf")}
    assert not leftover, f"namespaces left behind: {leftover}"
    assert set(results) == {"cold", "leader", "outage", "kill", "partition", "policy"}, results.keys()
    for name, x in results.items():
        assert x["seconds"] is not None, f"{api} {name}: never converged: {x}"
        assert x["stale"] == 0 and x["missing"] == 0, f"{api} {name}: {x}"
    # the partitioned hosts' keys expired while they were cut off (the
    # partition really dropped their traffic), the others' stayed exact
    p = results["partition"]
    assert p["left_during"] == 0, p
    assert p["others_during"] == [0, 0], p
    # the fleet's policy: every step converged (the hosts' reports and
    # etcd), the canary had hosts in it and others out of it, no watcher
    # saw a service lose a backend, the broken revision was refused by all
    # 20 with no key lost, and the status command told the truth
    pol = results["policy"]
    steps = {s["step"].split(" ")[0]: s for s in pol["steps"]}
    assert [s["step"].split(" ")[0] for s in pol["steps"]] == ["push", "canary", "promote", "broken", "rollback",
                                                             "status"], pol["steps"]
    for s in pol["steps"]:
        assert s["seconds"] is not None, f"{api} policy: {s['step']} never converged: {s}"
        assert s.get("violations") in (None, 0), f"{api} policy: {s['step']}: {s}"
    assert 0 < pol["canary_hosts"] < 20, pol
    assert steps["canary"]["states"] == {"applied": pol["canary_hosts"], "waiting": 20 - pol["canary_hosts"]}, \
        steps["canary"]
    assert pol["violations"] == 0 and not pol["watch_error"], pol
    assert pol["watch_events"] > 0, pol  # the watcher saw the re-keying
    assert pol["refused"] == 20, steps["broken"]
    assert pol["keys_lost"] == 0, steps["broken"]
    assert steps["broken"]["states"] == {"refused": 20}, steps["broken"]
    assert steps["rollback"]["states"] == {"applied": 20}, steps["rollback"]
    assert pol["status_correct"], steps["status"]
    return results


@suite.test
def fleet_v2_ttl():
    run_fleet("v2")


@suite.test
def fleet_v3_lease():
    run_fleet("v3")


suite.run()

"""Zero failed requests at a real haproxy (the short CI version of
bench/traffic.py): register and `register watch` keep haproxy 2.6 (no
retries, no redispatch) in step with a real dockerd while an open-loop
client sends 100 requests/s through it.

- a rolling deploy of 3 graceful backends (start a new one, wait until
  haproxy routes to it, `docker stop` an old one): no request fails, and the
  new backends answered (the last second only they did);
- `docker stop` of one of 3: no request fails, and it answered before.

Timings are measured and logged, never asserted: the machine may be busy.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from harness import REGISTER, Dockerd, Etcd, Suite, log  # noqa: E402
from trafficrig import HAPROXY, Rig  # noqa: E402

if not os.access(HAPROXY, os.X_OK):
    log(f"skipped: no haproxy at {HAPROXY} (scripts/install-deps.sh installs it)")
    sys.exit(77)
suite = Suite()
etcd = Etcd().start()
suite.defer(etcd.cleanup)
d = Dockerd().start()
suite.defer(d.cleanup)
d.images()
d.clean()
# checks that a busy machine does not fail (every 2 s, 2 s to answer, three
# failures in a row); a request gets 10 s before it counts as failed
rig = Rig(d, etcd.url, REGISTER, timeout=10.0, checks={"interval": 2.0, "timeout": 2.0, "fall": 3})
suite.defer(rig.cleanup)
rig.start()


def served_by(recs, t0=None):
    return {r["body"] for r in recs if "err" not in r and r.get("body") and (t0 is None or r["t"] >= t0)}


def assert_no_failures(row):
    assert row["requests"] >= 100, row["requests"]
    bad = [r for r in row["_recs"] if "err" in r][:10]
    assert row["failed"] == 0, f"{row['failed']} failed requests ({row['kinds']}), e.g. {bad}"


@suite.test
def rolling_deploy_of_three():
    old = [rig.backend() for _ in range(3)]
    new = []

    def deploy():
        for cid in old:
            new.append(rig.backend())  # returns once haproxy routes to it
            rig.stop_backend(cid)      # docker stop: drained at the signal, 2 s grace
        return {"note": "3 graceful backends replaced one by one"}
    row = rig.scenario("deploy (3)", deploy)
    assert_no_failures(row)
    recs = row["_recs"]
    short_old = {c[:12] for c in old}
    short_new = {c[:12] for c in new}
    assert short_old <= served_by(recs), (short_old, served_by(recs))
    assert short_new <= served_by(recs), (short_new, served_by(recs))
    last = recs[-1]["t"] - 1.0
    assert served_by(recs, last) and served_by(recs, last) <= short_new, served_by(recs, last)
    rig.remove_all()


@suite.test
def docker_stop_one_of_three():
    cids = [rig.backend() for _ in range(3)]
    row = rig.scenario("docker stop (1 of 3)", lambda: rig.stop_backend(cids[0]))
    assert_no_failures(row)
    recs = row["_recs"]
    assert cids[0][:12] in served_by(recs), "the stopped backend never answered"
    last = recs[-1]["t"] - 1.0
    assert cids[0][:12] not in served_by(recs, last)
    assert {c[:12] for c in cids[1:]} <= served_by(recs, last)
    rig.remove_all()


@suite.test
def clean_exit():
    rig.stop()


suite.run()

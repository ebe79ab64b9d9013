"""Events that change what a policy produces, on a real dockerd: health
status (healthy-only example), rename (registrator example), pause and
unpause; and --trace-latency's stage times."""
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import SRC, Dockerd, Etcd, Register, Suite, tmpdir, wait_for  # noqa: E402

IP = "10.2.2.2"
suite = Suite()
etcd = Etcd().start()
suite.defer(etcd.cleanup)
d = Dockerd().start()
suite.defer(d.cleanup)
d.images()
d.clean()
EX = os.path.join(SRC, "lua", "examples")


def evaluations_logged(policy):
    """An example with a log line for each evaluation of a container: what
    shows that register re-evaluated it after an event that changes
    nothing in etcd."""
    src = open(os.path.join(EX, policy)).read()
    p = os.path.join(tmpdir("rp"), policy)
    with open(p, "w") as f:
        f.write("local policy_ = (function()\n" + src + "\nend)()\n" + """local register_ = require "register"
local records_ = policy_.records
policy_.records = function(c, host)
  register_.log.info("evaluated %s paused=%s", c.name, tostring(c.state.paused))
  return records_(c, host)
end
return policy_
""")
    return p


def register(policy):
    d.clean()  # whatever an earlier test left
    etcd.etcdctl("rm", "--recursive", "/registered", check=False)
    etcd.etcdctl("rm", "--recursive", "/services", check=False)
    r = Register("--etcd", etcd.url, "--docker", d.host, "--policy", os.path.join(EX, policy),
                 "--hostname", "node2", host_ip=IP).start()
    suite.defer(r.cleanup)
    r.wait_log("in sync")
    return r


@suite.test
def health_status_events_register_and_remove():
    r = register("healthy-only.lua")
    cid = d.run("--health-cmd", "cat /ok", "--health-interval", "1s", "--health-retries", "1",
                "-p", "127.0.0.1::80")
    key = f"/registered/{IP}/{d.image('bbx').replace('/', '::')}/{cid}"
    def health():
        d.tick_health(cid)
        return d.docker("inspect", "-f", "{{.State.Health.Status}}", cid)
    wait_for(lambda: "unhealthy" in health(), 20, interval=1, what="unhealthy")
    assert key not in etcd.tree()
    d.docker("exec", cid, "sh", "-c", "echo ok > /ok")
    wait_for(lambda: health() and key in etcd.tree(), 20, interval=1, what="registered once healthy")
    d.docker("exec", cid, "rm", "/ok")
    wait_for(lambda: health() and key not in etcd.tree(), 20, interval=1, what="removed once unhealthy")
    assert "removed key=" + key in r.output()
    d.clean()
    r.stop()


@suite.test
def rename_re_evaluates():
    r = register(evaluations_logged("registrator.lua"))
    cid = d.run("--name", "before", "-p", "127.0.0.1::80")
    wait_for(lambda: any(k.endswith("node2:before:80") for k in etcd.tree("/services")), what="registered")
    d.docker("rename", "before", "after")
    wait_for(lambda: list(etcd.tree("/services")) == ["/services/bbx/node2:after:80"],
             what="renamed key " + repr(etcd.tree("/services")) + r.output()[-2000:])
    # pause and unpause: each re-evaluated (the policy sees state.paused),
    # the key neither rewritten nor deleted
    key = "/services/bbx/node2:after:80"
    idx = etcd.v2(key)[0]["node"]["modifiedIndex"]
    unpaused = r.output().count("evaluated after paused=false")
    d.docker("pause", cid)
    r.wait_log("evaluated after paused=true")
    assert list(etcd.tree("/services")) == [key]
    d.docker("unpause", cid)
    r.wait_log("evaluated after paused=false", count=unpaused + 1)
    assert list(etcd.tree("/services")) == [key]
    assert etcd.v2(key)[0]["node"]["modifiedIndex"] == idx, etcd.v2(key)
    assert "removed key=" + key not in r.output(), r.output()
    d.clean()
    wait_for(lambda: etcd.tree("/services") == {}, what="removed")
    r.stop()


STAGES = ("read", "inspect_sent", "inspect_answered", "policy", "write_sent", "write_acked")


def traces(r, cid):
    return [dict(re.findall(r"(\w+)=(\S+)", line)) for line in r.output().splitlines()
            if " latency " in line and f"container={cid}" in line]


@suite.test
def trace_latency_gives_each_stage_in_order():
    d.clean()
    etcd.etcdctl("rm", "--recursive", "/registered", check=False)
    r = Register("--etcd", etcd.url, "--docker", d.host, "--trace-latency", host_ip=IP).start()
    suite.defer(r.cleanup)
    r.wait_log("in sync")
    before = time.time_ns()
    # it exits by itself: its removal comes at die (a docker stop or rm -f
    # would remove it at its stop signal, after an inspect: the drain)
    cid = d.docker("run", "-d", "-p", "127.0.0.1::80", "bbx", "sleep", "4")
    wait_for(lambda: traces(r, cid), what="a latency line for the registration\n" + r.output())
    t = traces(r, cid)[0]
    # Docker's own time for the start event, then every stage after it
    assert before - 5 * 10**9 < int(t["docker_ns"]) < time.time_ns(), t
    us = [int(t[k]) for k in STAGES]
    assert us == sorted(us) and us[0] >= 0 and us[-1] < 10 * 10**6, t
    wait_for(lambda: len(traces(r, cid)) == 2, what="a latency line for the removal\n" + r.output())
    t = traces(r, cid)[1]
    # a removal is not inspected and runs no policy
    assert [t[k] for k in ("inspect_sent", "inspect_answered", "policy")] == ["-"] * 3, t
    us = [int(t[k]) for k in ("read", "write_sent", "write_acked")]
    assert us == sorted(us) and us[0] >= 0, t
    r.stop()
    # without the flag there is none
    r2 = Register("--etcd", etcd.url, "--docker", d.host, host_ip=IP).start()
    suite.defer(r2.cleanup)
    r2.wait_log("in sync")
    cid = d.run("-p", "127.0.0.1::80")
    wait_for(lambda: cid in etcd.tree().get(f"/registered/{IP}/{d.image('bbx').replace('/', '::')}/{cid}", ""),
             what="registered")
    assert " latency " not in r2.output()
    d.clean()
    r2.stop()


suite.run()

"""What podman's Docker API (4.x and 5.x) does differently, through the fake
Docker API: `remove` instead of `destroy`; `init`, `cleanup` and `attach`
that change nothing; `health_status` with the status in a separate
HealthStatus field; an event stream whose response head comes only with
the first event (podman 5.x), which must not delay the initial sync; and
event streams typed application/x-ndjson or application/json-seq."""
import shutil
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from fake_docker import FakeDocker  # noqa: E402
from harness import SRC, Etcd, Register, Suite, default_value, tmpdir, wait_for  # noqa: E402

IP = "10.8.8.8"
suite = Suite()
etcd = Etcd().start()
suite.defer(etcd.cleanup)


def setup(**opts):
    fake = FakeDocker(os.path.join(tmpdir("rf"), "d.sock")).start()
    for k, v in opts.items():
        setattr(fake, k, v)
    suite.defer(fake.stop)
    return fake


def key(fake, cid):
    return f"/registered/{IP}/{fake.containers[cid]['Config']['Image']}/{cid}"


def start(fake, *extra, wait=True):
    r = Register("--etcd", etcd.url, "--docker", fake.host, *extra, host_ip=IP).start()
    suite.defer(r.cleanup)
    if wait:
        r.wait_log("in sync")
    return r


def podman_event(fake, action, cid, **top):
    ev = fake.event(action, cid, attrs={"podId": "", "containerExitCode": "0"})
    ev.update(top)
    return ev


@suite.test
def remove_is_like_destroy():
    # podman `rm` of a stopped container after a missed die (say, register
    # was reconnecting): only `remove` tells that it is gone.  Needs
    # docker.c handle_event: "remove" handled as "destroy".
    fake = setup()
    cid = fake.add(ports=[("80/tcp", [("", "40001")])])
    r = start(fake)
    k = key(fake, cid)
    wait_for(lambda: k in etcd.tree(), what="registered")
    # podman reports the all-interfaces binding as HostIp "": written as is
    assert etcd.tree()[k] == default_value(cid, "bbx", [("", "40001", "80", "tcp")])
    fake.remove(cid)
    fake.emit(podman_event(fake, "remove", cid))
    wait_for(lambda: k not in etcd.tree(), 10, what="removed on `remove`")
    r.stop()


@suite.test
def init_cleanup_attach_change_nothing():
    fake = setup()
    cid = fake.add()
    r = start(fake)
    k = key(fake, cid)
    wait_for(lambda: k in etcd.tree(), what="registered")
    inspects = sum(1 for m, p in fake.requests if p.endswith(f"/{cid}/json"))
    for a in ("init", "cleanup", "attach"):
        fake.emit(podman_event(fake, a, cid))
    marker = fake.add()
    fake.emit(fake.event("start", marker))  # once it is in, the three were read
    wait_for(lambda: key(fake, marker) in etcd.tree(), what="marker registered")
    assert k in etcd.tree()
    again = sum(1 for m, p in fake.requests if p.endswith(f"/{cid}/json"))
    assert again == inspects, f"init/cleanup/attach re-inspected the container ({inspects} -> {again})"
    assert "error" not in r.output() and "warn" not in r.output(), r.output()
    r.stop()


@suite.test
def health_status_in_a_separate_field():
    # podman 4.x: {"Action":"health_status","HealthStatus":"healthy"} where
    # Docker says "health_status: healthy".  The container is re-inspected
    # and the event hook sees the status (docker.c: HealthStatus read into
    # the event as its health status).
    fake = setup()
    cid = fake.add()
    fake.containers[cid]["State"]["Health"] = {"Status": "starting", "FailingStreak": 0, "Log": []}
    pdir = tmpdir("rp")
    hook = os.path.join(pdir, "health.lua")
    # the example beside it, as a module of the policy's directory (the
    # sandbox has no dofile)
    shutil.copy(os.path.join(SRC, "lua", "examples", "healthy-only.lua"), os.path.join(pdir, "healthy-only.lua"))
    with open(hook, "w") as f:
        f.write('''
local register = require "register"
local base = require "healthy-only"
return {
  prefix = base.prefix,
  records = base.records,
  event = function(ev)
    if ev.action and ev.action:find("^health_status") then
      register.log.info("hook saw health %s", tostring(ev.health_status))
    end
  end,
}
''')
    r = start(fake, "--policy", hook)
    k = key(fake, cid)
    time.sleep(0.3)
    assert k not in etcd.tree()
    with fake.lock:
        fake.containers[cid]["State"]["Health"]["Status"] = "healthy"
        fake.cache.pop(cid, None)
    fake.emit(podman_event(fake, "health_status", cid, HealthStatus="healthy"))
    wait_for(lambda: k in etcd.tree(), 10, what="registered once healthy")
    r.wait_log("hook saw health healthy", 5)
    r.stop()


@suite.test
def head_with_the_first_event_does_not_delay_the_first_sync():
    # podman 5.x: the /events response head comes only with the first
    # event.  register must list and register what runs without waiting for
    # it (docker.c: start the list once the stream request is sent, not in
    # events_head).
    fake = setup(events_head_with_first_event=True)
    cid = fake.add()
    r = start(fake, wait=False)
    k = key(fake, cid)
    wait_for(lambda: k in etcd.tree(), 10, what="registered before any event")
    r.wait_log("in sync", 5)
    fake.emit(fake.event("start", fake.add()))  # the head and the first event
    wait_for(lambda: len(etcd.tree(f"/registered/{IP}")) == 2, what="events after the late head")
    r.stop()


def stream_types(ctype, framing):
    fake = setup(events_ctype=ctype, events_framing=framing)
    r = start(fake)
    a, b = fake.add(), fake.add()
    fake.emit(fake.event("start", a), fake.event("start", b))
    wait_for(lambda: key(fake, a) in etcd.tree() and key(fake, b) in etcd.tree(), 10,
             what=f"events read from a {ctype} stream")
    fake.die(a)
    wait_for(lambda: key(fake, a) not in etcd.tree(), 10, what="die read")
    assert "cannot parse" not in r.output() and "bad event" not in r.output(), r.output()
    r.stop()


@suite.test
def ndjson_event_stream():
    stream_types("application/x-ndjson", "lines")


@suite.test
def json_seq_event_stream():
    # RFC 7464 records: RS (0x1e) before each JSON text (docker.c: skip a
    # leading RS of each record)
    stream_types("application/json-seq", "json-seq")


suite.run()

"""Faults a real dockerd will not produce, from a fake Docker API server:
malformed JSON, a stream cut mid-object, one enormous line, unknown event
types, a 500 from inspect, a container that vanishes between event and
inspect, old and new API versions.  Each gets a clear log line, and nothing
registered is lost."""
import asyncio
import datetime
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from fake_docker import FakeDocker  # noqa: E402
from harness import Etcd, Register, Suite, default_value, log, tmpdir, wait_for  # noqa: E402

IP = "10.7.7.7"
suite = Suite()
etcd = Etcd().start()
suite.defer(etcd.cleanup)

# The default policy, and a log line for every event register reads (the
# event hook runs as the event is handled): what shows that register has
# seen an event that changes nothing in etcd.
EVENTS_POLICY = os.path.join(tmpdir("rp"), "events.lua")
with open(EVENTS_POLICY, "w") as f:
    f.write("""local register = require "register"
local default = require "register.default"
return { prefix = default.prefix, records = default.records,
  event = function(ev)
    register.log.info("event seen: %s %s container=%s", ev.action, ev.id or "",
                      ev.attributes.container or ev.id or "")
  end }
""")


class LateDocker(FakeDocker):
    """The fake with one more inspect fault: ("late", gate), a
    threading.Event.  The reply is made when the request comes (the
    container as it is then) and sent once the test sets gate: an inspect
    in flight across whatever the test does meanwhile.  late_replies: the
    ids whose late reply went out."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.late_replies = []

    async def _route(self, method, path, writer):
        parts = path.split("/")
        if len(parts) == 5 and parts[2] == "containers" and parts[4] == "json":
            cid = parts[3]
            with self.lock:
                faults = self.inspect_faults.get(cid)
                gate = None
                if faults and isinstance(faults[0], tuple) and faults[0][0] == "late":
                    gate = faults.pop(0)[1]
                    body = json.dumps(self.containers[cid])
            if gate is not None:
                deadline = time.time() + 60
                while not gate.is_set() and time.time() < deadline:
                    await asyncio.sleep(0.01)
                self._respond(writer, 200, body)
                try:
                    await writer.drain()
                except ConnectionError:
                    pass  # register gave up on it: the test looks at what it did
                self.late_replies.append(cid)
                return True
        return await super()._route(method, path, writer)


def setup(api="1.41"):
    fake = LateDocker(os.path.join(tmpdir("rf"), "d.sock"), api=api).start()
    suite.defer(fake.stop)
    return fake


def logged_at(r, text):
    """When register logged the first line with text (its own clock)."""
    line = next(l for l in r.output().splitlines() if text in l)
    t = datetime.datetime.strptime(line.split()[0], "%Y-%m-%dT%H:%M:%S.%fZ")
    return t.replace(tzinfo=datetime.timezone.utc).timestamp()


def expected(fake):
    out = {}
    for c in fake.running():
        binds = []
        for port, bl in c["NetworkSettings"]["Ports"].items():
            if bl is None:
                continue
            p, _, proto = port.partition("/")
            binds += [(b["HostIp"], b["HostPort"], p, proto) for b in bl]
        if binds:
            img = c["Config"]["Image"].replace("/", "::")
            out[f"/registered/{IP}/{img}/{c['Id']}"] = default_value(c["Id"], img, binds)
    return out


def converged(fake, timeout=15):
    wait_for(lambda: etcd.tree(f"/registered/{IP}") == expected(fake), timeout,
             what="etcd to equal the fake daemon's truth")


def start(fake, *extra):
    r = Register("--etcd", etcd.url, "--docker", fake.host, *extra, host_ip=IP).start()
    suite.defer(r.cleanup)
    r.wait_log("in sync")
    return r


def finish(r, fake):
    """Every test ends clean: remove what it registered."""
    for c in list(fake.containers):
        fake.remove(c)
        fake.emit(fake.event("destroy", c))
    wait_for(lambda: etcd.tree(f"/registered/{IP}") == {}, what="clean up")
    r.stop()


@suite.test
def malformed_event_json_is_logged_and_resynced():
    fake = setup()
    base = fake.add(ports=[("53/udp", [("127.0.0.1", "5353")]), ("80/tcp", [("127.0.0.1", "32768")])])
    r = start(fake)
    converged(fake)
    before = etcd.tree()
    # a container starts, but its start event arrives mangled
    silent = fake.add()
    fake.emit(b'{"Type":"container","Action":"start","Actor":{"ID":"' + silent.encode() + b'"\n')
    r.wait_log("event skipped: invalid JSON at byte")
    converged(fake)  # the listing after a lost event finds it
    assert all(etcd.tree().get(k) == v for k, v in before.items())
    finish(r, fake)


@suite.test
def stream_cut_mid_object_reconnects_and_converges():
    fake = setup()
    keep = fake.add()
    gone = fake.add()
    r = start(fake)
    converged(fake)
    fake.wait_streams(1)
    # while the stream is down: one container dies, another starts
    fake.set_running(gone, False)
    new = fake.add()
    fake.cut(b'{"Type":"container","Action":"st')
    r.wait_log("Docker event stream ended")
    assert "cut mid-event" in r.output(), r.output()
    fake.wait_streams(2)
    converged(fake)
    assert f"/registered/{IP}/bbx/{keep}" in etcd.tree()
    assert f"/registered/{IP}/bbx/{new}" in etcd.tree()
    # and events work on the new stream
    late = fake.add()
    fake.emit(fake.event("start", late))
    converged(fake)
    finish(r, fake)


@suite.test
def enormous_line_is_dropped_next_events_work():
    fake = setup()
    base = fake.add()
    r = start(fake)
    converged(fake)
    huge = b'{"Type":"container","Action":"start","x":"' + b"y" * (3 << 20) + b'"}\n'
    fake.emit(huge)
    r.wait_log("over the 1048576 byte limit")
    nxt = fake.add()
    fake.emit(fake.event("start", nxt))
    converged(fake)
    assert f"/registered/{IP}/bbx/{base}" in etcd.tree()
    finish(r, fake)


@suite.test
def unknown_event_types_and_actions_are_ignored():
    fake = setup()
    base = fake.add()
    r = start(fake, "--policy", EVENTS_POLICY)
    converged(fake)
    before = etcd.tree()
    fake.emit({"Type": "plugin", "Action": "enable", "Actor": {"ID": "p1", "Attributes": {}}, "time": 1},
              {"Type": "plugin", "Action": "disable", "Actor": {"ID": "p1", "Attributes": {}}, "time": 1},
              fake.event("frobnicate", base),
              fake.event("exec_start: /bin/true", base))
    r.wait_log('ignoring events of type "plugin"')
    r.wait_log(f"event seen: exec_start: /bin/true {base}")  # the last one, read
    assert r.output().count('ignoring events of type "plugin"') == 1
    assert etcd.tree() == before
    finish(r, fake)


@suite.test
def inspect_500_and_bad_json_are_retried():
    fake = setup()
    r = start(fake)
    c = fake.add()
    fake.fault_inspect(c, 500, "badjson")
    fake.emit(fake.event("start", c))
    r.wait_log(f'docker: inspect failed; retrying container={c} error="HTTP 500: inspect exploded"')
    r.wait_log("error=\"invalid JSON")
    converged(fake, timeout=20)  # retries after 1 s, then 2 s
    # a reply past the cap: a clear error, not read, retried
    c2 = fake.add()
    fake.fault_inspect(c2, "huge")
    fake.emit(fake.event("start", c2))
    r.wait_log("reply larger than the 33554432 byte cap; not read")
    converged(fake, timeout=20)
    finish(r, fake)


@suite.test
def container_vanishing_between_event_and_inspect():
    fake = setup()
    base = fake.add()
    r = start(fake, "--policy", EVENTS_POLICY)
    converged(fake)
    ghost = "ab" * 32
    fake.emit(fake.event("start", ghost))  # no such container: inspect 404
    r.wait_log(f"docker: the container vanished before it could be inspected container={ghost}")
    converged(fake)
    # a die for a container never registered is a no-op
    fake.emit(fake.event("die", "cd" * 32))
    r.wait_log(f"event seen: die {'cd' * 32}")
    converged(fake)
    assert "error" not in r.output().lower(), r.output()
    finish(r, fake)


@suite.test
def event_order_start_die_start():
    fake = setup()
    r = start(fake, "--policy", EVENTS_POLICY)
    c = fake.add()
    # start, die, start in quick succession: ends registered
    fake.emit(fake.event("start", c), fake.event("die", c), fake.event("start", c))
    converged(fake)
    assert f"/registered/{IP}/bbx/{c}" in etcd.tree()
    # start, then die while the start's inspect is in flight; that inspect's
    # reply (made before the die: running) arrives after register handled
    # the die: ends unregistered
    d = fake.add()
    gate = threading.Event()
    fake.fault_inspect(d, ("late", gate))
    fake.emit(fake.event("start", d))
    wait_for(lambda: ("GET", f"/v1.41/containers/{d}/json") in fake.requests, what="the inspect of the start")
    fake.set_running(d, False)
    fake.emit(fake.event("die", d))
    r.wait_log(f"event seen: die {d}")
    gate.set()
    wait_for(lambda: d in fake.late_replies, what="the late reply")
    # after it, another container comes and goes through register: had the
    # late reply registered d, etcd would show it by then
    e = fake.add()
    fake.emit(fake.event("start", e))
    converged(fake)
    assert f"/registered/{IP}/bbx/{e}" in etcd.tree()
    assert f"/registered/{IP}/bbx/{d}" not in etcd.tree()
    finish(r, fake)


@suite.test
def legacy_api_uses_status_id_from():
    fake = setup(api="1.21")
    r = start(fake)
    c = fake.add()
    fake.emit(fake.event("start", c))  # {"status","id","from"} only
    converged(fake)
    fake.set_running(c, False)
    fake.emit(fake.event("die", c))
    converged(fake)
    assert ("GET", "/v1.21/events") in fake.requests
    finish(r, fake)


@suite.test
def api_1_52_without_legacy_fields():
    fake = setup(api="1.52")
    r = start(fake)
    c = fake.add()
    ev = fake.event("start", c)
    assert "status" not in ev and "id" not in ev
    fake.emit(ev)
    converged(fake)
    finish(r, fake)


@suite.test
def docker_29_refuses_versions_below_1_44():
    """Upstream Docker 29 answers a path below API 1.44 with a 400: register
    speaks the version the daemon names (capped at the newest it knows), so
    every request it makes is accepted."""
    for api in ("1.52", "1.53"):
        fake = setup(api=api)
        fake.min_api = "1.44"
        r = start(fake)
        c = fake.add()
        fake.emit(fake.event("start", c))
        converged(fake)
        versioned = [p for _, p in fake.requests if p.startswith("/v")]
        assert versioned and all(p.startswith("/v1.52/") for p in versioned), versioned
        assert "too old" not in r.output(), r.output()
        finish(r, fake)
    # the fake refuses for real: a daemon whose header names an old version
    # while it refuses it gets the daemon's own message in register's log
    fake = setup(api="1.41")
    fake.min_api = "1.44"
    r = Register("--etcd", etcd.url, "--docker", fake.host, host_ip=IP).start()
    suite.defer(r.cleanup)
    r.wait_log("Minimum supported API version is 1.44")
    r.stop()


@suite.test
def newer_api_is_capped_and_missing_header_uses_version():
    fake = setup(api="1.99")
    r = start(fake)
    assert ("GET", "/v1.52/events") in fake.requests, fake.requests
    finish(r, fake)
    fake2 = setup(api=None)  # no Api-Version header on /_ping
    r2 = start(fake2)
    assert ("GET", "/version") in fake2.requests
    assert ("GET", "/v1.41/containers/json") in fake2.requests
    finish(r2, fake2)


@suite.test
def list_failure_and_refused_stream_retry():
    fake = setup()
    c = fake.add()
    fake.list_faults = [500, "badjson"]
    fake.events_status = 500
    r = Register("--etcd", etcd.url, "--docker", fake.host, host_ip=IP).start()
    suite.defer(r.cleanup)
    r.wait_log("cannot open the Docker event stream: HTTP 500: events refused")
    fake.events_status = None
    r.wait_log("listing containers failed: HTTP 500: list exploded")
    r.wait_log("container list: invalid JSON")
    r.wait_log("in sync", timeout=30)
    converged(fake)
    finish(r, fake)


@suite.test
def nothing_registered_is_lost_when_docker_goes_away():
    fake = setup()
    a = fake.add()
    b = fake.add()
    r = start(fake)
    converged(fake)
    before = etcd.tree()
    sock = fake.sock
    fake.stop()  # the daemon is gone: the socket too
    r.wait_log("Docker event stream ended")
    time.sleep(1.5)
    assert etcd.tree() == before  # kept while Docker is away
    fake2 = FakeDocker(sock).start()
    suite.defer(fake2.stop)
    fake2.add(cid=a)
    r.wait_log("docker: connected", count=2, timeout=40)
    converged(fake2)  # b is gone, a stays
    assert f"/registered/{IP}/bbx/{b}" not in etcd.tree()
    finish(r, fake2)



@suite.test
def docker_rm_costs_no_wasted_inspect():
    """`docker rm -f` sends a network disconnect just before die: the
    disconnect's inspect waits for the die, so none is sent; a disconnect
    alone is still followed by an inspect (the policy may use networks)."""
    fake = setup()
    r = start(fake, "--policy", EVENTS_POLICY)
    converged(fake)
    inspects = lambda cid: sum(1 for m, p in list(fake.requests)  # noqa: E731
                               if p.startswith(f"/v1.41/containers/{cid}/json"))
    # dockerd sends die a few ms after the disconnect; here the die goes
    # once register has read the disconnect, and must be read within
    # register's 100 ms wait (by its own clock): when this machine was too
    # slow for that, an inspect is right, and the test tries again
    for attempt in range(5):
        c = fake.add()
        fake.start_container(c)
        converged(fake)
        before = inspects(c)
        fake.emit(fake.event("disconnect", "n1", etype="network", attrs={"container": c, "name": "bridge"}))
        wait_for(lambda: f"event seen: disconnect n1 container={c}" in r.output(), interval=0.002,
                 what="register to read the disconnect")
        fake.die(c)
        r.wait_log(f"event seen: die {c}")
        converged(fake)
        gap = logged_at(r, f"event seen: die {c}") - logged_at(r, f"event seen: disconnect n1 container={c}")
        # past the end of the wait (register's clock), another event read
        # and handled: the wait's inspect, had it been sent, was sent before
        while time.time() < logged_at(r, f"event seen: disconnect n1 container={c}") + 0.3:
            time.sleep(0.05)
        b = fake.add()
        fake.start_container(b)
        converged(fake)
        fake.die(b)
        converged(fake)
        if gap < 0.08:
            assert inspects(c) == before, (before, inspects(c))
            break
        log(f"the die came {gap * 1000:.0f} ms after the disconnect: again")
    else:
        raise AssertionError("the die never came within 80 ms of the disconnect")
    c2 = fake.add()
    fake.start_container(c2)
    converged(fake)
    path2 = f"/v1.41/containers/{c2}/json"
    n2 = sum(1 for m, p in list(fake.requests) if p.startswith(path2))
    fake.emit(fake.event("disconnect", "n1", etype="network", attrs={"container": c2, "name": "bridge"}))
    wait_for(lambda: sum(1 for m, p in list(fake.requests) if p.startswith(path2)) == n2 + 1,
             what="the inspect after a disconnect alone")
    finish(r, fake)


suite.run()

"""Policies in the running daemon (real etcd, the fake Docker daemon):
SIGHUP reload as all-or-nothing, --dry-run, --once, the event and changed
hooks with real HTTP to a receiver on loopback, and safety (budget, pure
records, bad records)."""
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from fake_docker import FakeDocker  # noqa: E402
from harness import REGISTER, SRC, Etcd, Register, Suite, tmpdir, wait_for  # noqa: E402

IP = "10.3.3.3"
suite = Suite()
etcd = Etcd().start()
suite.defer(etcd.cleanup)
fake = FakeDocker(os.path.join(tmpdir("rf"), "d.sock")).start()
suite.defer(fake.stop)
POL = tmpdir("rp")


def policy(name, text):
    p = os.path.join(POL, name)
    with open(p, "w") as f:
        f.write(text)
    return p


def register(*extra, env=None):
    r = Register("--etcd", etcd.url, "--docker", fake.host, *extra, host_ip=IP, env=env).start()
    suite.defer(r.cleanup)
    return r


def reset():
    for c in list(fake.containers):
        fake.remove(c)
        fake.emit(fake.event("destroy", c))
    etcd.etcdctl("rm", "--recursive", "/p", check=False)
    etcd.etcdctl("rm", "--recursive", "/registered", check=False)


V1 = '''return {
  prefix = function(h) return "/p/" .. h.ip end,
  records = function(c, h)
    local out = {}
    out["/p/" .. h.ip .. "/same/" .. c.name] = "unchanged"
    out["/p/" .. h.ip .. "/v/" .. c.name] = "one"
    out["/p/" .. h.ip .. "/only-v1/" .. c.name] = "x"
    return out
  end }
'''
V2 = '''return {
  prefix = function(h) return "/p/" .. h.ip end,
  records = function(c, h)
    local out = {}
    out["/p/" .. h.ip .. "/same/" .. c.name] = "unchanged"
    out["/p/" .. h.ip .. "/v/" .. c.name] = "two"
    out["/p/" .. h.ip .. "/only-v2/" .. c.name] = "y"
    return out
  end }
'''


def tree():
    return etcd.tree("/p")


@suite.test
def sighup_reload_all_or_nothing():
    reset()
    pol = policy("live.lua", V1)
    a, b = fake.add(name="a"), fake.add(name="b")
    r = register("--policy", pol)
    r.wait_log("in sync")
    P = f"/p/{IP}"
    wait_for(lambda: len(tree()) == 6, what="v1 keys")
    same_idx = etcd.v2(f"{P}/same/a")[0]["node"]["modifiedIndex"]
    idx = etcd.index()

    # 1. a script that does not load: old policy stays, one line with file:line
    policy("live.lua", "return {\n  records = function(c) return {} end,\n  oops(\n}\n")
    r.proc.send_signal(signal.SIGHUP)
    r.wait_log("policy reload failed, keeping the old policy")
    assert "live.lua:4: unexpected symbol" in r.output(), r.output()
    # 2. records() fails for one container: old policy stays
    policy("live.lua", V2.replace("local out = {}", 'if c.name == "b" then error("no b here") end\n    local out = {}'))
    r.proc.send_signal(signal.SIGHUP)
    r.wait_log("no b here")
    assert "live.lua:4: no b here" in r.output(), r.output()
    time.sleep(0.3)
    assert etcd.index() == idx, "a failed reload must not touch etcd"
    assert tree()[f"{P}/v/a"] == "one"
    # 3. a good one: changed keys written, gone keys deleted, the rest untouched
    policy("live.lua", V2)
    r.proc.send_signal(signal.SIGHUP)
    r.wait_log("policy " + pol + " reloaded: 2 containers re-evaluated")
    wait_for(lambda: tree() == {f"{P}/same/a": "unchanged", f"{P}/same/b": "unchanged",
                                f"{P}/v/a": "two", f"{P}/v/b": "two",
                                f"{P}/only-v2/a": "y", f"{P}/only-v2/b": "y"}, what="v2 keys")
    assert etcd.v2(f"{P}/same/a")[0]["node"]["modifiedIndex"] == same_idx
    # and the new policy is the one in force for new containers
    fake.start_container(fake.add(name="c"))
    wait_for(lambda: tree().get(f"{P}/v/c") == "two", what="new container under v2")
    r.stop()


@suite.test
def reload_to_another_prefix():
    reset()
    pol = policy("moving.lua", V1)
    fake.add(name="m")
    r = register("--policy", pol)
    r.wait_log("in sync")
    wait_for(lambda: len(tree()) == 3)
    policy("moving.lua", V1.replace('"/p/" .. h.ip', '"/p/moved/" .. h.ip'))
    r.proc.send_signal(signal.SIGHUP)
    r.wait_log("the owned prefix is now /p/moved/" + IP)
    wait_for(lambda: sorted(tree()) == sorted(f"/p/moved/{IP}/{k}/m" for k in ("same", "v", "only-v1")),
             what="keys moved to the new prefix")
    r.stop()


@suite.test
def dry_run_output_lines():
    reset()
    c = fake.add(ports=[("80/tcp", [("127.0.0.1", "32768")])])
    env = dict(os.environ, HOST_IP=IP)
    errf = open(os.path.join(POL, "dry-run.err"), "w+")
    p = subprocess.Popen([REGISTER, "--dry-run", "--etcd", etcd.url, "--docker", fake.host],
                         env=env, stdout=subprocess.PIPE, stderr=errf, text=True)
    suite.defer(lambda: p.poll() is None and p.kill())
    out = []
    reader = threading.Thread(target=lambda: out.extend(p.stdout), daemon=True)
    reader.start()
    # the put line says the container was seen; the delete line, the die
    wait_for(lambda: len(out) >= 1, what="the dry run's put line")
    fake.die(c)
    wait_for(lambda: len(out) >= 2, what="the dry run's delete line")
    p.send_signal(signal.SIGTERM)
    p.wait(10)
    reader.join(10)
    errf.seek(0)
    assert p.returncode == 0, errf.read()
    lines = [json.loads(l) for l in out]
    assert len(lines) == 2, lines
    key = f"/registered/{IP}/bbx/{c}"
    assert lines[0]["op"] == "put" and lines[0]["key"] == key and lines[0]["container"] == c
    assert lines[0]["value"].startswith('[{"container":"%s"' % c)
    assert lines[1] == {"op": "delete", "key": key, "container": c}, lines
    assert etcd.tree(f"/registered/{IP}") == {}


@suite.test
def once_exits_0_when_in_sync_and_1_when_not():
    reset()
    fake.add()
    env = dict(os.environ, HOST_IP=IP)
    t0 = time.time()
    r = subprocess.run([REGISTER, "--once", "--etcd", etcd.url, "--docker", fake.host],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "etcd matches" in r.stderr and time.time() - t0 < 10
    assert len(etcd.tree(f"/registered/{IP}")) == 1
    r = subprocess.run([REGISTER, "--once", "--timeout", "2", "--etcd", "127.0.0.1:1", "--docker", fake.host],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "--once: etcd does not match after 2 s" in r.stderr, r.stderr
    reset()


class Receiver(http.server.ThreadingHTTPServer):
    """A webhook receiver on loopback that records what it is sent."""

    def __init__(self, delay=0.0):
        self.got = []
        self.delay = delay
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                time.sleep(outer.delay)
                outer.got.append((self.path, self.headers.get("Content-Type"), json.loads(body)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *a):
                pass
        super().__init__(("127.0.0.1", 0), H)
        threading.Thread(target=self.serve_forever, daemon=True).start()
        suite.defer(self.shutdown)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


@suite.test
def webhook_example_posts_every_change():
    reset()
    rcv = Receiver()
    c = fake.add()
    r = register("--policy", os.path.join(SRC, "lua", "examples", "webhook.lua"), "--log-level", "debug",
                 "--policy-env", "REGISTER_WEBHOOK", env={"REGISTER_WEBHOOK": rcv.url})
    r.wait_log("in sync")
    key = f"/registered/{IP}/bbx/{c}"
    wait_for(lambda: any(g[2]["op"] == "put" for g in rcv.got), what="webhook for the put")
    path, ctype, body = rcv.got[0]
    assert path == "/hook" and ctype == "application/json"
    assert body["key"] == key and body["value"] == etcd.tree()[key]
    fake.die(c)
    wait_for(lambda: any(g[2]["op"] == "delete" for g in rcv.got), what="webhook for the delete")
    deletes = [g[2] for g in rcv.got if g[2]["op"] == "delete"]
    assert deletes == [{"op": "delete", "key": key}], rcv.got
    # the event hook saw the die
    r.wait_log("event")
    assert " die " in r.output(), r.output()
    r.stop()


@suite.test
def slow_or_dead_webhook_never_blocks_registration():
    reset()
    rcv = Receiver(delay=3.0)
    r = register("--policy", os.path.join(SRC, "lua", "examples", "webhook.lua"),
                 "--policy-env", "REGISTER_WEBHOOK", env={"REGISTER_WEBHOOK": rcv.url})
    r.wait_log("in sync")
    t0 = time.time()
    cs = [fake.add() for _ in range(3)]
    for c in cs:
        fake.emit(fake.event("start", c))
    wait_for(lambda: len(etcd.tree(f"/registered/{IP}")) == 3, what="registrations")
    assert time.time() - t0 < 2.0, "registration waited for the webhook"
    wait_for(lambda: len(rcv.got) == 3, 15, what="the slow webhooks")
    r.stop()
    # a webhook that nobody answers: a warning, registrations go on
    reset()
    r = register("--policy", os.path.join(SRC, "lua", "examples", "webhook.lua"),
                 "--policy-env", "REGISTER_WEBHOOK", env={"REGISTER_WEBHOOK": "http://127.0.0.1:1/hook"})
    r.wait_log("in sync")
    c = fake.add()
    fake.emit(fake.event("start", c))
    r.wait_log("webhook http://127.0.0.1:1/hook:")
    assert f"/registered/{IP}/bbx/{c}" in etcd.tree()
    r.stop()


@suite.test
def hooks_read_etcd_and_fail_safely():
    reset()
    etcd.etcdctl("set", "/config/greeting", "hello")
    pol = policy("hooks.lua", '''
local register = require "register"
local default = require "register.default"
return {
  prefix = default.prefix, records = default.records,
  event = function(ev, host)
    if ev.action ~= "start" then return end
    local v, err = register.etcd.get("/config/greeting")
    local all = register.etcd.list("/config")
    register.log.info("hook read %s, %s entries, for %s", v, all and
      (function() local n = 0 for _ in pairs(all) do n = n + 1 end return n end)() or "?", ev.id)
    local missing = register.etcd.get("/config/nope")
    register.log.info("missing is %s", tostring(missing))
    error("hook error on purpose")
  end,
}''')
    r = register("--policy", pol)
    r.wait_log("in sync")
    c = fake.add()
    fake.emit(fake.event("start", c))
    r.wait_log(f"hook read hello, 1 entries, for {c}")
    r.wait_log("missing is nil")
    r.wait_log("event hook failed:")
    assert "hooks.lua:14: hook error on purpose" in r.output(), r.output()
    wait_for(lambda: f"/registered/{IP}/bbx/{c}" in etcd.tree(), what="registration despite the hook")
    etcd.etcdctl("rm", "/config/greeting")
    r.stop()


@suite.test
def endless_loop_io_in_records_and_bad_records():
    reset()
    pol = policy("unsafe.lua", '''
local register = require "register"
local default = require "register.default"
return {
  prefix = default.prefix,
  records = function(c, host)
    if c.name == "loop" then while true do end end
    if c.name == "io" then register.http.request{url = "http://127.0.0.1:1/"} end
    if c.name == "bad" then
      return { ["relative/key"] = "x", ["/registered/" .. host.ip .. "/good/" .. c.id] = "kept" }
    end
    return default.records(c, host)
  end,
}''')
    r = register("--policy", pol)
    r.wait_log("in sync")
    loop, io, bad, fine = (fake.add(name=n) for n in ("loop", "io", "bad", "fine"))
    for c in (loop, io, bad, fine):
        fake.emit(fake.event("start", c))
    wait_for(lambda: f"/registered/{IP}/bbx/{fine}" in etcd.tree(), what="the fine container")
    # a rejected record fails the evaluation as a whole: none of its records
    # is applied (the container keeps what it had: nothing here)
    wait_for(lambda: "1 record rejected" in r.output(), what="the rejection of bad")
    out = r.output()
    assert "instruction budget" in out and loop[:12] in out, out
    assert "may only be called from the event and changed hooks" in out, out
    assert f'container {bad[:12]}: key "relative/key": key is not absolute' in out, out
    assert f"/registered/{IP}/good/{bad}" not in etcd.tree()
    assert not any(loop in k or io in k for k in etcd.tree()), [k for k in etcd.tree() if loop in k or io in k]
    r.stop()


class SlowWrites(http.server.ThreadingHTTPServer):
    """A proxy in front of etcd that holds every v2 write (PUT) for `delay`
    seconds and passes everything else (deletes, reads) through at once: a
    put in flight while the delete of the same container's old key is
    sent would land after it, and a consumer would see the service lose a
    backend."""

    def __init__(self, upstream, delay=0.0):
        self.delay = delay
        host, port = upstream[len("http://"):].split(":")
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
                if self.command == "PUT":
                    time.sleep(outer.delay)
                import http.client
                c = http.client.HTTPConnection(host, int(port), timeout=30)
                hdrs = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "authorization")}
                c.request(self.command, self.path, body=body or None, headers=hdrs)
                resp = c.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "date"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                c.close()
            do_GET = do_PUT = do_DELETE = do_POST = forward

            def log_message(self, *a):
                pass
        super().__init__(("127.0.0.1", 0), H)
        self.daemon_threads = True
        threading.Thread(target=self.serve_forever, daemon=True).start()
        suite.defer(self.shutdown)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


MBB = '''return {
  prefix = function(h) return "/p/" .. h.ip end,
  records = function(c, h)
    if NAMING == "a" then return { ["/p/" .. h.ip .. "/a/" .. c.name] = "up" } end
    if c.name:sub(1, 1) == "f" then return { ["/mbb-blocked/" .. c.name] = "up" } end
    return { ["/p/" .. h.ip .. "/b/" .. c.name] = "up" }
  end }
'''


@suite.test
def reload_rekeying_is_make_before_break():
    """A reload that renames every container's key (v2): for each of 40
    containers a watcher of the prefix sees the new key written before the
    old one is deleted, even though etcd answers the writes slowly and the
    deletes at once.  Two containers whose new key etcd refuses keep their
    old key; one of them removed, its old key goes at once."""
    reset()
    etcd.etcdctl("rm", "--recursive", "/mbb-blocked", check=False)
    pol = policy("mbb.lua", 'NAMING = "a"\n' + MBB)
    names = [f"c{i:02d}" for i in range(40)] + ["f0", "f1"]
    ids = {n: fake.add(name=n) for n in names}
    proxy = SlowWrites(etcd.url)
    r = Register("--etcd", proxy.url, "--docker", fake.host, "--policy", pol, "--ttl", "30",
                 host_ip=IP).start()
    suite.defer(r.cleanup)
    r.wait_log("in sync")
    P = f"/p/{IP}"
    wait_for(lambda: sorted(tree()) == sorted(f"{P}/a/{n}" for n in names), what="the old naming")
    # etcd refuses a put where a directory is
    for n in ("f0", "f1"):
        etcd.etcdctl("mkdir", f"/mbb-blocked/{n}")
    idx = etcd.index()
    proxy.delay = 0.3
    policy("mbb.lua", 'NAMING = "b"\n' + MBB)
    r.proc.send_signal(signal.SIGHUP)
    r.wait_log(f"policy {pol} reloaded: 42 containers re-evaluated")
    want = {f"{P}/b/{n}": "up" for n in names if n[0] == "c"}
    want.update({f"{P}/a/f0": "up", f"{P}/a/f1": "up"})
    wait_for(lambda: tree() == want, 20, what="the new naming")
    r.wait_log("etcd refused the write", count=2)
    time.sleep(1.0)  # the refused ones keep their old key
    assert tree() == want, tree()
    evs = etcd.events_since(idx, "/p")  # the whole history, or an error
    at = {}
    for e in evs:
        at.setdefault((e["action"], e["node"]["key"]), e["node"]["modifiedIndex"])
    for n in names:
        if n[0] != "c":
            continue
        put = min((at[(a, f"{P}/b/{n}")] for a in ("set", "create", "update") if (a, f"{P}/b/{n}") in at), default=None)
        gone = at.get(("delete", f"{P}/a/{n}"))
        assert put and gone, (n, put, gone, evs)
        assert put < gone, f"{n}: old key deleted at {gone} before the new one was written at {put}"
    assert not [e for e in evs if e["action"] in ("delete", "expire") and "/a/f" in e["node"]["key"]], evs
    # a container that goes has nothing to wait for: its held delete goes
    proxy.delay = 0.0
    fake.remove(ids["f0"])
    fake.emit(fake.event("destroy", ids["f0"]))
    wait_for(lambda: f"{P}/a/f0" not in tree(), 5, what="the removed container's key")
    assert f"{P}/a/f1" in tree()
    r.stop()
    etcd.etcdctl("rm", "--recursive", "/mbb-blocked", check=False)


@suite.test
def v2_rekeying_into_a_directory_of_the_old_key_and_back():
    """A reload from the default schema to lua/examples/per-port.lua puts
    <id>/80/tcp where <id> was a key: v2 cannot write it while <id> is a
    key, so make-before-break cannot hold for that pair; the old key goes
    first (a warning) and the reload converges, both ways (back: <id> where
    <id>/80/tcp was, and the empty directories it leaves)."""
    reset()
    pol = policy("switch.lua", open(os.path.join(SRC, "lua", "default.lua")).read())
    r = register("--policy", pol)
    c = fake.add()
    fake.emit(fake.event("start", c))
    base = f"/registered/{IP}"
    wait_for(lambda: list(etcd.tree(base)) == [f"{base}/bbx/{c}"], 10, what="the default key")
    for src, want in ((os.path.join(SRC, "lua", "examples", "per-port.lua"), f"{base}/bbx/{c}/80/tcp"),
                      (os.path.join(SRC, "lua", "default.lua"), f"{base}/bbx/{c}")):
        policy("switch.lua", open(src).read())
        r.proc.send_signal(signal.SIGHUP)
        try:
            wait_for(lambda: list(etcd.tree(base)) == [want], 10, what=f"{want} alone")
        except AssertionError:
            raise AssertionError(f"{etcd.tree(base)}\n{r.output()[-2000:]}")
    assert "stands in the way of a key its container produces now" in r.output()
    r.stop()
    reset()


suite.run()

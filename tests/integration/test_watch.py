"""`register watch` on a real etcd 3.4, v2 and v3: the file follows the
prefix (a full read, then the watch), is written only when its text
changes, atomically, with its mode kept; --check runs on the candidate and
a refusal keeps the old file; --reload runs once per burst of changes;
renders that raise, return a non-string or loop forever keep the last
good file with a one-line error; a watch that etcd's history has left
behind (v2: "event index cleared") reads the prefix again; --once exits
0/1.  Every test starts its processes in its own temporary directory and
stops them."""
import base64
import http.client
import http.server
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
from harness import REGISTER, Etcd, FreezableProxy, Suite, free_port, log, tmpdir, wait_for  # noqa: E402
from toolkit import Cluster, HttpServer, sigstop  # noqa: E402

suite = Suite()
etcd = Etcd().start()
suite.defer(etcd.cleanup)

LINES = """return { render = function(kv, ctx)
  local out = { "# " .. ctx.api .. " " .. ctx.prefix .. " " .. #ctx.keys }
  for _, k in ipairs(ctx.keys) do out[#out + 1] = k .. "=" .. kv[k] end
  return table.concat(out, "\\n") .. "\\n"
end }
"""


def v3(path, body):
    req = urllib.request.Request(etcd.url + path, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def b64(s):
    return base64.b64encode(s.encode()).decode()


def put(api, key, value):
    if api == "v2":
        etcd.v2(key, method="PUT", data=urllib.parse.urlencode({"value": value}).encode())
    else:
        v3("/v3/kv/put", {"key": b64(key), "value": b64(value)})


def delete(api, key):
    if api == "v2":
        etcd.v2(key, method="DELETE")
    else:
        v3("/v3/kv/deleterange", {"key": b64(key)})


def expected(prefix, api, kv):
    lines = [f"# {api} {prefix} {len(kv)}"] + [f"{k}={kv[k]}" for k in sorted(kv)]
    return "\n".join(lines) + "\n"


class Watch:
    """A `register watch` process of the test's own."""

    def __init__(self, prefix, api="v2", render=LINES, args=(), out=None):
        self.dir = tmpdir("rw")
        self.render = os.path.join(self.dir, "render.lua")
        with open(self.render, "w") as f:
            f.write(render)
        self.out = out or os.path.join(self.dir, "out.cfg")
        self.log = os.path.join(self.dir, "watch.log")
        self.port = free_port()
        self.cmd = [REGISTER, "watch", prefix, "--render", self.render, "--out", self.out,
                    "--etcd", etcd.url, "--etcd-api", api, "--metrics", f"127.0.0.1:{self.port}",
                    *args]
        self.proc = None

    def start(self, env=None):
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL,
                                     stderr=open(self.log, "w"),
                                     env=dict(os.environ, **env) if env else None)
        suite.defer(self.stop)
        return self

    def once(self, *extra, timeout=30):
        r = subprocess.run(self.cmd + ["--once", *extra], capture_output=True, text=True,
                           timeout=timeout)
        return r.returncode, r.stderr

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("register watch did not stop on SIGTERM")
        return self.proc.returncode if self.proc else None

    def text(self):
        try:
            with open(self.out) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def output(self):
        with open(self.log) as f:
            return f.read()

    def metric(self, name):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[-1])
        raise AssertionError(f"no metric {name}")

    def healthz(self):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()


def follows(api):
    prefix = f"/follow{api}"
    kv = {f"{prefix}/a": "1", f"{prefix}/b/c": "two words"}
    for k, v in kv.items():
        put(api, k, v)
    reloads = os.path.join(tmpdir("rr"), "reloads")
    # a quiet period longer than the gaps between the burst's writes (a
    # busy machine included), and a MAX that does not cut the burst
    w = Watch(prefix, api, args=["--reload", f"sh -c 'echo reloaded >> {reloads}'",
                                 "--wait", "500ms:20s"]).start()
    wait_for(lambda: w.text() == expected(prefix, api, kv), what="the first render")
    os.chmod(w.out, 0o640)
    ino = os.stat(w.out).st_ino
    # a burst of changes: one file, one reload
    wait_for(lambda: os.path.exists(reloads), what="the first reload")
    with open(reloads) as f:
        first = len(f.read().splitlines())
    for i in range(20):
        kv[f"{prefix}/k{i:02d}"] = str(i)
        put(api, f"{prefix}/k{i:02d}", str(i))
    del kv[f"{prefix}/a"]
    delete(api, f"{prefix}/a")
    wait_for(lambda: w.text() == expected(prefix, api, kv), what="the burst rendered")
    time.sleep(1)
    with open(reloads) as f:
        n = len(f.read().splitlines()) - first
    assert n == 1, f"{n} reloads for a burst of 21 changes"
    st = os.stat(w.out)
    assert st.st_ino != ino, "the file was rewritten in place, not renamed over"
    assert st.st_mode & 0o777 == 0o640, oct(st.st_mode)
    assert not [f for f in os.listdir(os.path.dirname(w.out)) if f.startswith(".out.cfg")], \
        "a temporary file was left behind"
    # a sibling that only shares the prefix's start is not ours
    put(api, f"{prefix}x/other", "no")
    assert w.metric("register_watch_keys") == len(kv)
    status, body = w.healthz()
    assert status == 200, body
    assert w.metric("register_watch_lags_total") >= 1
    # the same text is not written again
    mtime = os.stat(w.out).st_mtime_ns
    put(api, f"{prefix}/b/c", "two words")  # a change of nothing
    time.sleep(1)
    assert os.stat(w.out).st_mtime_ns == mtime
    assert w.stop() == 0


@suite.test
def follows_the_prefix_v2():
    follows("v2")


@suite.test
def follows_the_prefix_v3():
    follows("v3")


@suite.test
def follows_etcd_within_a_second_of_its_return_after_a_long_outage():
    # etcd down 8 s, nothing listening: a refused connection costs etcd
    # nothing, so the watch tries again every 125-250 ms rather than backing
    # off to 5 s, and a change made right after etcd is back is in the file
    # within a fraction of a second.  With the backoff (0.2 s doubling to
    # 5 s, halved at random) the tries after the first 3 s came 2.5-5 s
    # apart: 7 or 8 failures in the 8 s, and the change up to 5 s late.
    own = Etcd()
    own.start()
    suite.defer(own.cleanup)
    prefix = "/outage"
    w = Watch(prefix, "v3")
    w.cmd[w.cmd.index("--etcd") + 1] = own.url

    def put_own(k, v):
        with urllib.request.urlopen(urllib.request.Request(
                own.url + "/v3/kv/put", data=json.dumps({"key": b64(k), "value": b64(v)}).encode()),
                timeout=5) as r:
            r.read()

    put_own(f"{prefix}/a", "1")
    w.start()
    wait_for(lambda: w.text() == expected(prefix, "v3", {f"{prefix}/a": "1"}), what="the first render")
    own.stop()
    time.sleep(8)
    own.start()
    t0 = time.time()
    put_own(f"{prefix}/b", "2")
    want = expected(prefix, "v3", {f"{prefix}/a": "1", f"{prefix}/b": "2"})
    wait_for(lambda: w.text() == want, timeout=30, interval=0.02, what="the change after etcd's return")
    late = time.time() - t0
    assert late < 1.5, f"the file followed etcd {late:.1f} s after its return"
    log = w.output()
    assert "watch: etcd:" in log and "the file stays as it is" in log, log[-2000:]
    m = re.search(r"etcd answers again \(after (\d+) failures\)", log)
    assert m and int(m.group(1)) >= 25, log[-2000:]
    assert w.stop() == 0


class Unavailable(http.server.BaseHTTPRequestHandler):
    """An "etcd" that takes every connection and answers 503."""

    def do_POST(self):
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST

    def log_message(self, *a):
        pass


@suite.test
def backs_off_from_an_etcd_that_answers_with_errors():
    # an endpoint that listens but fails (no leader, overloaded: here a
    # 503): the listing is tried again after 0.2 s doubling to 5 s, halved
    # at random, not every 250 ms as when nothing listens
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Unavailable)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    suite.defer(srv.server_close)
    suite.defer(srv.shutdown)
    w = Watch("/busy", "v3")
    w.cmd[w.cmd.index("--etcd") + 1] = f"127.0.0.1:{srv.server_address[1]}"
    w.start()
    time.sleep(10)
    failures = wait_for(lambda: w.metric("register_watch_etcd_failures_total"), what="the failures' metric")
    # 0.1-0.2, 0.2-0.4, 0.4-0.8, 0.8-1.6, 1.6-3.2, 2.5-5 s...: 6 to 10 in
    # 10 s; every 250 ms would be 40 or more
    assert 4 <= failures <= 12, (failures, w.output()[-2000:])
    assert "503" in w.output(), w.output()[-2000:]
    assert w.stop() == 0


@suite.test
def backs_off_from_an_etcd_name_that_does_not_resolve():
    # a name that does not resolve is no stopped etcd: probing it every
    # 250 ms would have every host of a fleet ask its resolver four times
    # a second through a DNS outage; it backs off as other failures do
    w = Watch("/nodns", "v3")
    w.cmd[w.cmd.index("--etcd") + 1] = "http://etcd.invalid:2379"
    w.start()
    time.sleep(10)
    failures = wait_for(lambda: w.metric("register_watch_etcd_failures_total"), what="the failures' metric")
    assert 1 <= failures <= 12, (failures, w.output()[-2000:])
    assert "etcd.invalid" in w.output(), w.output()[-2000:]
    assert w.stop() == 0


@suite.test
def once_renders_and_exits():
    prefix = "/once"
    put("v3", f"{prefix}/x", "y")
    w = Watch(prefix, "v3")
    rc, err = w.once()
    assert rc == 0, err
    assert w.text() == expected(prefix, "v3", {f"{prefix}/x": "y"})
    # a render that fails: exit 1, with one line naming the renderer's line
    bad = Watch(prefix, "v3", render='return { render = function(kv, ctx) error("no backends") end }')
    rc, err = bad.once()
    assert rc == 1 and bad.text() is None, (rc, err)
    assert "render.lua:1: no backends" in err and "render() failed" in err, err
    # etcd that never answers: exit 1 after --timeout
    dead = Watch(prefix, "v2")
    dead.cmd[dead.cmd.index("--etcd") + 1] = f"127.0.0.1:{free_port()}"
    t0 = time.time()
    rc, err = dead.once("--timeout", "2")
    assert rc == 1 and time.time() - t0 < 10, (rc, err)
    assert "not rendered within 2 s" in err, err
    # a member that takes connections and never answers: the line said no
    # cause (every request failed over to the next try, none failed yet)
    proxy = FreezableProxy(etcd.url)
    suite.defer(proxy.close)
    proxy.freeze()
    hung = Watch(prefix, "v3")
    hung.cmd[hung.cmd.index("--etcd") + 1] = proxy.url
    rc, err = hung.once("--timeout", "8")
    assert rc == 1, (rc, err)
    assert re.search(r"not rendered within 8 s: etcd: .*timed out", err), err


BAD_RENDERS = {
    "raises": ('error("boom")', "boom"),
    "returns a table": ("return {}", "returned a table, not the file's text"),
    "loops": ("while true do end", "(reason: budget)"),
    "runs long in C": ('string.rep("a", 1e6):find(string.rep("a", 5e5) .. "b", 1, true)',
                       "(reason: timeout)"),
}


@suite.test
def a_bad_render_keeps_the_last_good_file():
    prefix = "/badrender"
    put("v2", f"{prefix}/a", "1")
    for what, (body, said) in BAD_RENDERS.items():
        w = Watch(prefix, "v2", render=(
            'return { render = function(kv, ctx)\n'
            '  if kv["' + prefix + '/trigger"] then ' + body + ' end\n'
            '  local n = 0 for _ in pairs(kv) do n = n + 1 end\n'
            '  return "keys " .. n .. "\\n"\n'
            'end }\n'))
        w.start()
        wait_for(lambda: w.text() == "keys 1\n", what="the first render")
        put("v2", f"{prefix}/trigger", "1")
        wait_for(lambda: said in w.output(), 10, what=f"{what}: the error")
        assert w.text() == "keys 1\n", (what, w.text())
        status, body_ = w.healthz()
        assert status == 503 and "render()" in body_, (what, status, body_)
        lines = [l for l in w.output().splitlines() if said in l and " watch: " in l]
        assert lines[0].count("\n") == 0 and "keeping the last good" in lines[0], lines
        delete("v2", f"{prefix}/trigger")
        put("v2", f"{prefix}/b", "2")
        wait_for(lambda: w.text() == "keys 2\n", 10, what=f"{what}: a good render after")
        assert w.healthz()[0] == 200
        assert w.stop() == 0
        delete("v2", f"{prefix}/b")


@suite.test
def check_refuses_and_reload_fails():
    prefix = "/checked"
    put("v2", f"{prefix}/a", "ok")
    marks = tmpdir("rc")
    # the check refuses any file with "bad" in it, and says why
    check = f"sh -c 'if grep -q bad %s; then echo \"line 2: bad server\" >&2; exit 1; fi'"
    reload_ = f"sh -c 'if [ -e {marks}/fail ]; then echo reload broke; exit 3; fi; touch {marks}/reloaded'"
    w = Watch(prefix, "v2", args=["--check", check, "--reload", reload_]).start()
    wait_for(lambda: os.path.exists(f"{marks}/reloaded"), what="the first reload")
    good = w.text()
    os.unlink(f"{marks}/reloaded")
    put("v2", f"{prefix}/b", "bad")
    wait_for(lambda: "refused the new file" in w.output(), what="the check's refusal")
    line = [l for l in w.output().splitlines() if "refused the new file" in l][0]
    assert "exit status 1" in line and "line 2: bad server" in line, line
    assert w.text() == good and not os.path.exists(f"{marks}/reloaded")
    assert not [f for f in os.listdir(os.path.dirname(w.out)) if f.startswith(".out.cfg")]
    assert w.healthz()[0] == 503
    # fixed: the new file goes in and is reloaded
    put("v2", f"{prefix}/b", "fine")
    wait_for(lambda: os.path.exists(f"{marks}/reloaded"), what="a reload after the fix")
    assert "fine" in w.text()
    # a reload that fails is said, with its output; the file is in place
    open(f"{marks}/fail", "w").close()
    put("v2", f"{prefix}/c", "3")
    def failed():
        return [l for l in w.output().splitlines() if "failed (exit" in l and "reload broke" in l]
    wait_for(failed, what="the failed reload")
    line = failed()[0]
    assert "exit status 3" in line, line
    assert f"{prefix}/c=3" in w.text()
    assert w.metric('register_watch_reloads_total{result="failed"}') >= 1
    # tried again on its own (1 s, doubling): no change needed
    os.unlink(f"{marks}/reloaded")
    os.unlink(f"{marks}/fail")
    wait_for(lambda: os.path.exists(f"{marks}/reloaded"), 10, what="the reload tried again")
    wait_for(lambda: w.healthz()[0] == 200, what="healthy again")
    assert w.stop() == 0


@suite.test
def a_check_that_hangs_is_killed():
    prefix = "/hangs"
    put("v2", f"{prefix}/a", "1")
    w = Watch(prefix, "v2", args=["--check", "sh -c 'sleep 60' %s", "--command-timeout", "1"])
    t0 = time.time()
    rc, err = w.once()
    assert rc == 1 and time.time() - t0 < 15, (rc, err)
    assert "killed after 1 s" in err and w.text() is None, err


@suite.test
def a_watch_left_behind_by_the_history_reads_again():
    """etcd v2 keeps the last 1000 events: a watcher stopped (SIGSTOP)
    while 1100 changes go by asks, once woken, for an index that is gone;
    it reads the prefix again and renders what is there."""
    prefix = "/behind"
    put("v2", f"{prefix}/a", "1")
    w = Watch(prefix, "v2", render='return function(kv, ctx) local n = 0 '
              'for _ in pairs(kv) do n = n + 1 end return "keys " .. n .. "\\n" end').start()
    wait_for(lambda: w.text() == "keys 1\n", what="the first render")
    w.proc.send_signal(signal.SIGSTOP)
    try:
        for i in range(1100):
            put("v2", f"{prefix}/k", str(i))
        put("v2", f"{prefix}/z", "last")
    finally:
        w.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: w.text() == "keys 3\n", 15, what="the prefix read again")
    assert "compacted past" in w.output(), w.output()[-2000:]
    assert w.stop() == 0


@suite.test
def a_quiet_prefix_is_not_an_etcd_failure_at_its_renewals():
    """A quiet prefix's watch is renewed every 60 s.  Meanwhile etcd moves
    on: v2 writes elsewhere (and TTL refreshes, which wake no watcher) push
    the prefix out of the last 1000 events; v3 compacts.  Each renewal may
    find its revision gone once and read the prefix again; that is no
    failure (no warning, /healthz 200, no etcd failure counted), twice,
    three times.  v2 renews from the index etcd says it is at when the
    wait begins, so writes before a wait cost nothing at its renewal."""
    ws = {}
    for api in ("v2", "v3"):
        prefix = f"/quiet{api}"
        put(api, f"{prefix}/a", "1")
        ws[api] = Watch(prefix, api).start()
    for api, w in ws.items():
        wait_for(lambda: w.text() == expected(f"/quiet{api}", api, {f"/quiet{api}/a": "1"}),
                 what=f"{api}: the first render")

    def move_on():
        for i in range(1100):
            put("v2", "/elsewhere/k", str(i))
        rev = v3("/v3/kv/put", {"key": b64("/elsewhere/k"), "value": b64("x")})["header"]["revision"]
        v3("/v3/kv/compaction", {"revision": rev})
    move_on()  # during the first wait: its renewal (v2 too) is below the history
    unhealthy = []
    t0 = time.time()
    moved = False
    while time.time() - t0 < 130:  # the renewals at 60 s and 120 s
        if not moved and time.time() - t0 > 65:
            move_on()  # before the second
            moved = True
        for api, w in ws.items():
            st = w.healthz()
            if st[0] != 200:
                unhealthy.append((api, round(time.time() - t0, 1), st[1].strip()))
        time.sleep(0.25)
    for api, w in ws.items():
        out = w.output()
        assert " warn " not in out and " error " not in out, out[-3000:]
        assert w.metric("register_watch_etcd_failures_total") == 0, out[-3000:]
        assert w.text() == expected(f"/quiet{api}", api, {f"/quiet{api}/a": "1"})
        log(f"{api}: {int(w.metric('register_watch_compactions_total'))} compactions at the renewals")
    assert not unhealthy, unhealthy
    # v3's compactions were each read again (at a renewal: that is how a
    # quiet v3 watch learns of one)
    assert ws["v3"].metric("register_watch_compactions_total") >= 1
    for w in ws.values():
        assert w.stop() == 0


@suite.test
def the_file_removed_or_edited_is_written_again():
    """The text is compared with the file, not with a memory of it: a file
    removed or edited by hand since it was written is put back by the next
    render (a change in etcd, or SIGHUP), said once at warn."""
    prefix = "/restored"
    put("v2", f"{prefix}/a", "1")
    w = Watch(prefix, "v2").start()
    want = expected(prefix, "v2", {f"{prefix}/a": "1"})
    wait_for(lambda: w.text() == want, what="the first render")
    os.unlink(w.out)
    w.proc.send_signal(signal.SIGHUP)  # the same text
    wait_for(lambda: w.text() == want, 10, what="the removed file written again")
    assert "was removed since register watch wrote it" in w.output(), w.output()
    with open(w.out, "w") as f:
        f.write("edited by hand\n")
    put("v2", f"{prefix}/a", "1")  # a new index, the same text
    wait_for(lambda: w.text() == want, 10, what="the edited file written again")
    assert "was changed since register watch wrote it" in w.output(), w.output()
    assert w.output().count("since register watch wrote it") == 2, w.output()
    assert w.healthz()[0] == 200
    assert w.stop() == 0


@suite.test
def metrics_are_valid_and_the_age_is_zero_while_in_sync():
    prefix = "/agemetric"
    put("v2", f"{prefix}/a", "1")
    w = Watch(prefix, "v2", render='return function(kv, ctx) for k, v in pairs(kv) do '
              'if v == "boom" then error("boom in " .. k) end end return "n " .. #ctx.keys .. "\\n" end').start()
    wait_for(lambda: w.text() == "n 1\n", what="the first render")
    with urllib.request.urlopen(f"http://127.0.0.1:{w.port}/metrics", timeout=5) as r:
        body = r.read().decode()
    promtool = shutil.which("promtool")
    if promtool:
        p = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr
    for line in body.splitlines():  # every metric has its HELP and TYPE
        if line and not line.startswith("#"):
            name = line.split("{")[0].split()[0]
            assert f"# HELP {name} " in body and f"# TYPE {name} " in body, name
    time.sleep(2)
    assert w.metric("register_watch_last_good_render_age_seconds") == 0  # the file matches etcd
    put("v2", f"{prefix}/b", "boom")  # a render that fails: the file is behind etcd from now
    wait_for(lambda: w.healthz()[0] == 503, what="the failed render")
    time.sleep(2)
    age = w.metric("register_watch_last_good_render_age_seconds")
    assert 1.5 < age < 30, age
    delete("v2", f"{prefix}/b")
    wait_for(lambda: w.healthz()[0] == 200, 10, what="in sync again")
    assert w.metric("register_watch_last_good_render_age_seconds") == 0
    assert w.stop() == 0


class CompactingGateway:
    """A v3 gateway that a real etcd cannot be made to be on cue: its
    listing is at revision 10, and every watch it is asked for answers
    that revision 20 has been compacted (as etcd does when a watch starts
    below the compaction).  Where a real etcd cannot go, a fake."""

    def __init__(self):
        import http.server
        import threading
        gw = self
        self.ranges = 0
        self.watches = []

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/v3/kv/range":
                    gw.ranges += 1
                    kv = {"key": b64("/fake/a"), "value": b64(f"read {gw.ranges}"), "mod_revision": "10"}
                    out = json.dumps({"header": {"cluster_id": "1", "member_id": "2", "revision": "10",
                                                 "raft_term": "2"}, "kvs": [kv], "count": "1"}).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                    return
                if self.path == "/v3/watch":
                    gw.watches.append(body["create_request"]["start_revision"])
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    hdr = {"cluster_id": "1", "member_id": "2", "revision": "30", "raft_term": "2"}
                    try:
                        for msg in ({"result": {"header": hdr, "created": True}},
                                    {"result": {"header": hdr, "compact_revision": "20", "canceled": True}}):
                            line = (json.dumps(msg) + "\n").encode()
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                            self.wfile.flush()
                        time.sleep(0.5)
                        self.wfile.write(b"0\r\n\r\n")
                    except OSError:
                        pass  # the watcher went (it reads the prefix again)
                    return
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.http = HttpServer(H)
        self.url = self.http.url

    def close(self):
        self.http.close()


@suite.test
def a_v3_watch_below_the_compaction_reads_again():
    gw = CompactingGateway()
    suite.defer(gw.close)
    w = Watch("/fake", "v3", render=LINES)
    w.cmd[w.cmd.index("--etcd") + 1] = gw.url
    w.start()
    wait_for(lambda: gw.ranges >= 3, what="the prefix read again after each compaction")
    assert gw.watches[0] == "11", gw.watches  # from the listing's revision + 1
    assert "compacted past" in w.output(), w.output()
    # compaction again and again (this gateway never stops): read again
    # with a backoff, not in a tight loop
    time.sleep(3)
    assert gw.ranges <= 6, (gw.ranges, w.output()[-3000:])
    wait_for(lambda: (w.text() or "").startswith("# v3 /fake 1\n/fake/a=read "), what="rendered")
    assert w.stop() == 0


def leaves_a_hung_member(api):
    # two endpoints, the first a member that hangs once the file is
    # rendered: it accepts connections and never answers.  The watch on it
    # heard nothing and waited for its renewal (60 s; v2 never left it):
    # now its probe finds the member silent within seconds, the watch ends
    # with a warning, and the listing and the new watch go to the other.
    prefix = f"/hung{api}"
    put(api, f"{prefix}/a", "1")
    proxy = FreezableProxy(etcd.url)
    suite.defer(proxy.close)
    w = Watch(prefix, api, args=["--etcd-discovery", "off"])
    w.cmd[w.cmd.index("--etcd") + 1] = f"{proxy.url},{etcd.url}"
    w.start()
    wait_for(lambda: w.text() == expected(prefix, api, {f"{prefix}/a": "1"}), what="the first render")
    time.sleep(1)  # the watch is on the proxy, waiting
    proxy.freeze()
    t0 = time.time()
    put(api, f"{prefix}/b", "2")
    want = expected(prefix, api, {f"{prefix}/a": "1", f"{prefix}/b": "2"})
    wait_for(lambda: w.text() == want, timeout=30, interval=0.1, what="the change past the hung member")
    late = time.time() - t0
    assert late < 8, f"the file followed {late:.1f} s after the member hung"
    log = w.output()
    assert "no answer to a probe" in log and proxy.url in log, log[-2000:]
    # from now on, changes come through the healthy member's watch
    put(api, f"{prefix}/c", "3")
    want = expected(prefix, api, {f"{prefix}/a": "1", f"{prefix}/b": "2", f"{prefix}/c": "3"})
    wait_for(lambda: w.text() == want, timeout=5, interval=0.05, what="the next change")
    assert w.healthz()[0] == 200, w.healthz()
    assert w.stop() == 0


@suite.test
def leaves_a_hung_member_v2():
    leaves_a_hung_member("v2")


@suite.test
def leaves_a_hung_member_v3():
    leaves_a_hung_member("v3")


@suite.test
def healthz_says_etcd_when_every_member_hangs():
    # the only member hangs: nothing to fail over to; /healthz says so
    # ("etcd: ...") well before the listing's own budget runs out
    prefix = "/allhung"
    put("v3", f"{prefix}/a", "1")
    proxy = FreezableProxy(etcd.url)
    suite.defer(proxy.close)
    w = Watch(prefix, "v3", args=["--etcd-discovery", "off"])
    w.cmd[w.cmd.index("--etcd") + 1] = proxy.url
    w.start()
    wait_for(lambda: w.text() is not None, what="the first render")
    assert w.healthz()[0] == 200
    proxy.freeze()
    t0 = time.time()
    wait_for(lambda: w.healthz()[0] == 503, timeout=30, what="unhealthy")
    assert time.time() - t0 < 20, time.time() - t0
    status, body = w.healthz()
    assert body.startswith("unhealthy: etcd: "), body
    assert w.stop() == 0


@suite.test
def a_refused_file_that_etcd_no_longer_asks_for_is_healthy():
    # a key that makes the check refuse, then deleted: the text rendered
    # is the file in place again, nothing to check, and /healthz is 200
    prefix = "/refusedthengone"
    put("v2", f"{prefix}/a", "ok")
    check = "sh -c 'if grep -q bad %s; then echo bad >&2; exit 1; fi'"
    w = Watch(prefix, "v2", args=["--check", check]).start()
    wait_for(lambda: w.text() == expected(prefix, "v2", {f"{prefix}/a": "ok"}), what="the first render")
    put("v2", f"{prefix}/b", "bad")
    wait_for(lambda: w.healthz()[0] == 503, what="the refusal")
    assert "refused the new file" in w.healthz()[1]
    delete("v2", f"{prefix}/b")
    wait_for(lambda: w.healthz()[0] == 200, timeout=10, what="healthy once etcd matches the file")
    assert w.stop() == 0


@suite.test
def failures_after_the_render_are_tried_again():
    # a check that fails once, a check that cannot start, a reload that
    # cannot start: each is said and tried again (1 s, doubling) with no
    # change in etcd
    marks = tmpdir("rt")
    prefix = "/afterrender"
    put("v2", f"{prefix}/a", "1")
    want = expected(prefix, "v2", {f"{prefix}/a": "1"})
    once = f"sh -c 'if [ ! -e {marks}/checked ]; then touch {marks}/checked; exit 1; fi' %s"
    w = Watch(prefix, "v2", args=["--check", once]).start()
    wait_for(lambda: w.text() == want, 10, what="the file after a check that failed once")
    assert "refused the new file" in w.output() and "(tried again in 1 s)" in w.output(), w.output()
    assert w.healthz()[0] == 200, w.healthz()
    assert w.stop() == 0
    # --check and --reload that cannot start (no such program yet)
    for flag in ("--check", "--reload"):
        prog = os.path.join(marks, f"later{flag[2:]}")
        ran = os.path.join(marks, f"ran{flag[2:]}")
        w = Watch(prefix, "v2", args=[flag, prog + (" %s" if flag == "--check" else "")]).start()
        wait_for(lambda: "(tried again in 1 s)" in w.output(), what=f"{flag}: the failure")
        with open(prog + ".new", "w") as f:
            f.write(f"#!/bin/sh\ntouch {ran}\n")
        os.chmod(prog + ".new", 0o755)
        os.rename(prog + ".new", prog)
        wait_for(lambda: os.path.exists(ran), 10, what=f"{flag}: tried again")
        wait_for(lambda: w.text() == want, what=f"{flag}: the file")
        wait_for(lambda: w.healthz()[0] == 200, what=f"{flag}: healthy")
        assert w.stop() == 0
    # a write that fails and is tried again: out_follows_a_link_and_refuses_what_is_no_file


@suite.test
def out_follows_a_link_and_refuses_what_is_no_file():
    prefix = "/outkinds"
    put("v3", f"{prefix}/a", "1")
    want = expected(prefix, "v3", {f"{prefix}/a": "1"})
    d = tmpdir("ro")
    # a symbolic link: its target is written, the link stays
    os.mkdir(os.path.join(d, "real"))
    target = os.path.join(d, "real", "haproxy.cfg")
    with open(target, "w") as f:
        f.write("old\n")
    link = os.path.join(d, "link.cfg")
    os.symlink("real/haproxy.cfg", link)
    w = Watch(prefix, "v3", out=link)
    rc, err = w.once()
    assert rc == 0, err
    assert os.path.islink(link) and os.readlink(link) == "real/haproxy.cfg"
    with open(target) as f:
        assert f.read() == want
    assert not [f for f in os.listdir(os.path.join(d, "real")) if f.startswith(".haproxy")]
    # a link made ahead of the file it names (config management), or whose
    # file was removed: the file is created, the link stays
    os.unlink(target)
    rc, err = w.once()
    assert rc == 0, err
    assert os.path.islink(link) and open(target).read() == want
    dangling = os.path.join(d, "ahead.cfg")
    os.symlink("real/not-yet.cfg", dangling)
    rc, err = Watch(prefix, "v3", out=dangling).once()
    assert rc == 0, err
    assert os.path.islink(dangling) and open(os.path.join(d, "real", "not-yet.cfg")).read() == want
    # a FIFO, a directory, a device, a link to a device: one line, exit 1,
    # at once, and nothing replaced
    fifo = os.path.join(d, "fifo")
    os.mkfifo(fifo)
    devlink = os.path.join(d, "null.cfg")
    os.symlink("/dev/null", devlink)
    for out, said in [(fifo, "is a FIFO"), (d, "is a directory"), ("/dev/null", "is a character device"),
                      (devlink, "leads to /dev/null, a character device")]:
        w = Watch(prefix, "v3", out=out)
        t0 = time.time()
        rc, err = w.once(timeout=10)
        assert rc == 1 and time.time() - t0 < 5, (out, rc, err)
        lines = [l for l in err.splitlines() if said in l]
        assert len(lines) == 1 and "not a regular file" in lines[0], (out, err)
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode) and os.path.islink(devlink)
    # one that changes kind while watched: refused at write time, said,
    # and tried again
    out = os.path.join(d, "changes.cfg")
    w = Watch(prefix, "v3", out=out).start()
    wait_for(lambda: w.text() == want, what="the first render")
    os.unlink(out)
    os.mkfifo(out)
    put("v3", f"{prefix}/b", "2")
    wait_for(lambda: "is a FIFO, not a regular file" in w.output(), what="the refusal at write time")
    assert w.healthz()[0] == 503
    os.unlink(out)
    wait_for(lambda: w.text() == expected(prefix, "v3", {f"{prefix}/a": "1", f"{prefix}/b": "2"}), 10,
             what="written once the FIFO is gone")
    assert w.stop() == 0
    delete("v3", f"{prefix}/b")


@suite.test
def sigterm_during_once_fails():
    # --once stopped before the file is in place did not do its job
    w = Watch("/sigonce", "v2")
    w.cmd[w.cmd.index("--etcd") + 1] = f"127.0.0.1:{free_port()}"
    p = subprocess.Popen(w.cmd + ["--once", "--timeout", "30"], stderr=subprocess.PIPE, text=True)
    time.sleep(1)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=10)
    assert p.returncode == 1 and w.text() is None, (p.returncode, err)
    assert "SIGTERM before" in err, err


@suite.test
def the_group_is_kept_when_the_owner_cannot_be():
    # not root (nobody, made with setpriv): the owner cannot be kept, the
    # group can when the process is in it; said once
    if os.geteuid() != 0:
        log("the_group_is_kept_when_the_owner_cannot_be: needs root to become nobody; not run")
        return
    prefix = "/owner"
    put("v2", f"{prefix}/a", "1")
    d = tmpdir("rg")
    os.chmod(d, 0o777)
    out = os.path.join(d, "out.cfg")
    with open(out, "w") as f:
        f.write("old\n")
    # the file's group is one the process has beside its own (nobody's)
    nobody, users = 65534, 100
    os.chown(out, 0, users)
    os.chmod(out, 0o664)
    w = Watch(prefix, "v2", out=out)
    os.chmod(w.dir, 0o755)
    os.chmod(w.render, 0o644)
    r = subprocess.run(["setpriv", f"--reuid={nobody}", f"--regid={nobody}", f"--groups={users}"] + w.cmd
                       + ["--once"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    st = os.stat(out)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (nobody, users, 0o664), st
    said = [l for l in r.stderr.splitlines() if "cannot keep" in l]
    assert len(said) == 1 and "owner 0:100" in said[0] and "is 65534:100" in said[0], r.stderr


@suite.test
def bad_flags_say_what():
    for args, said in [
        ([], "which PREFIX"),
        (["/p"], "--render FILE.lua is required"),
        (["/p", "--render", "x.lua"], "--out PATH is required"),
        (["p", "--render", "x.lua", "--out", "o"], "must be an absolute key path"),
        # v2 resolved it (the whole keyspace, every backend filtered out)
        (["/registered/..", "--render", "x.lua", "--out", "o"], 'has a ".." segment'),
        (["/registered/./", "--render", "x.lua", "--out", "o"], 'has a "." segment'),
        (["/p", "--render", "x.lua", "--out", "o", "--wait", "5parsecs"], "is not MIN[:MAX]"),
        (["/p", "--render", "x.lua", "--out", "o", "--wait", "nan"], "is not MIN[:MAX]"),
        (["/p", "--render", "x.lua", "--out", "o", "--wait", "1s:infs"], "is not MIN[:MAX]"),
        (["/p", "--render", "x.lua", "--out", "o", "--check", "haproxy -c -q -f /etc/haproxy/haproxy.cfg"],
         "does not name the candidate"),
        (["/p", "--render", "x.lua", "--out", "o", "--docker", "unix:///x"], "unknown option"),
        (["/p", "--render", "x.lua", "--out", "o", "--check", "haproxy -c -f '%s"], "quote is not closed"),
        (["/p", "--render", "x.lua", "--out", "o", "--reload", "  "], "is empty"),
    ]:
        r = subprocess.run([REGISTER, "watch", *args], capture_output=True, text=True, timeout=10)
        assert r.returncode == 2 and said in r.stderr and r.stderr.count("\n") == 1, (args, r.stderr)
        assert r.stderr.count("register watch:") == 1, r.stderr
    r = subprocess.run([REGISTER, "watch", "/p", "--render", "/nonexistent.lua", "--out", "o", "--once"],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 1 and "/nonexistent.lua" in r.stderr, r.stderr
    r = subprocess.run([REGISTER, "watch", "--help"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0 and "--render" in r.stdout and "--docker" not in r.stdout


@suite.test
def a_key_with_a_nul_byte_is_left_out():
    """No C string holds a key with a NUL byte: cut there, it passed for
    another key and shadowed it ("/nul/a\\0x" = evil rendered as the value
    of "/nul/a").  Such a key is left out of the listing, with a warning,
    for v2 and v3 alike: one line per listing, however many such keys
    (the rest are counted), so that a writer of many cannot flood the log."""
    for api in ("v2", "v3"):
        prefix = f"/nul{api}"
        put(api, f"{prefix}/a", "real")
        for tail in ("x", "y", "z"):
            if api == "v2":
                req = urllib.request.Request(f"{etcd.url}/v2/keys{prefix}/a%00{tail}", data=b"value=evil",
                                             method="PUT")
                req.add_header("Content-Type", "application/x-www-form-urlencoded")
                urllib.request.urlopen(req, timeout=5).read()
            else:
                v3("/v3/kv/put", {"key": base64.b64encode(f"{prefix}/a".encode() + b"\0" + tail.encode()).decode(),
                                  "value": b64("evil")})
        w = Watch(prefix, api)
        rc, err = w.once()
        assert rc == 0, err
        assert w.text() == expected(prefix, api, {f"{prefix}/a": "real"}), w.text()
        assert err.count("a key with a NUL byte is left out") == 1, err
        assert err.count("2 more keys with a NUL byte are left out") == 1, err


@suite.test
def a_reload_cut_short_is_run_at_the_next_start():
    """The file was put in place, then the watch stopped while --reload ran
    (or the reload failed, or the process died): the next start found the
    file equal to its render and never reloaded, so the load balancer kept
    the old configuration until the next change.  A mark beside the file
    says a reload is pending; the next watch (not --once) runs it."""
    prefix = "/pending"
    put("v2", f"{prefix}/a", "1")
    d = tmpdir("rpd")
    count = os.path.join(d, "reloads")
    w = Watch(prefix, "v2", args=["--reload", "sh -c 'sleep 1000'"])
    w.start()
    wait_for(lambda: w.text() == expected(prefix, "v2", {f"{prefix}/a": "1"}), 10, what="the file")
    time.sleep(0.5)  # the reload runs (and hangs)
    assert w.stop() == 0
    mark = os.path.join(os.path.dirname(w.out), ".out.cfg.register-reload-pending")
    assert os.path.exists(mark), os.listdir(os.path.dirname(w.out))
    once = Watch(prefix, "v2", out=w.out, args=["--reload", f"sh -c 'echo once >> {count}'"])
    rc, err = once.once()
    assert rc == 0 and not os.path.exists(count), (rc, err)  # --once leaves it to the watch
    again = Watch(prefix, "v2", out=w.out, args=["--reload", f"sh -c 'echo r >> {count}'"])
    again.start()
    wait_for(lambda: os.path.exists(count), 10, what="the pending reload")
    wait_for(lambda: not os.path.exists(mark), 10, what="the mark removed")
    assert "reloading at the first render" in again.output(), again.output()
    assert again.stop() == 0
    assert open(count).read() == "r\n"


@suite.test
def min_keys_keeps_the_last_file_when_etcd_empties():
    """An etcd wiped or restored from an empty snapshot was rendered at
    once: every backend gone from the load balancer.  With --min-keys N a
    listing of fewer keys is not rendered: the last good file stays,
    /healthz says why, and a listing with enough keys renders again."""
    prefix = "/minkeys"
    kv = {f"{prefix}/{k}": k for k in "abc"}
    for k, v in kv.items():
        put("v3", k, v)
    w = Watch(prefix, "v3", args=["--min-keys", "2"])
    w.start()
    full = expected(prefix, "v3", kv)
    wait_for(lambda: w.text() == full, 10, what="three keys rendered")
    for k in list(kv)[:2]:
        delete("v3", k)
    wait_for(lambda: "fewer than --min-keys 2" in w.healthz()[1], 10, what="/healthz to say why")
    assert w.healthz()[0] == 503
    assert w.text() == full, w.text()
    put("v3", f"{prefix}/a", "a")
    two = expected(prefix, "v3", {f"{prefix}/a": "a", f"{prefix}/c": "c"})
    wait_for(lambda: w.text() == two, 10, what="two keys rendered")
    wait_for(lambda: w.healthz()[0] == 200, 10, what="healthy again")
    assert w.stop() == 0
    empty = Watch("/minkeys-none", "v3", args=["--min-keys", "1"])
    rc, err = empty.once()
    assert rc == 1 and empty.text() is None and "fewer than --min-keys 1" in err, (rc, err)


@suite.test
def commands_do_not_get_the_etcd_password():
    """--check and --reload ran with register's whole environment: a
    reload script's `env` (or a crash dump of it) held the etcd password.
    They get the environment without register's secrets (ETCDCTL_PASSWORD,
    ETCDCTL_USER, which may hold USER:PW); the rest, paths included, stay."""
    prefix = "/secretenv"
    put("v2", f"{prefix}/a", "1")
    d = tmpdir("rse")
    envs = {n: os.path.join(d, n) for n in ("check", "reload")}
    w = Watch(prefix, "v2", args=["--check", f"sh -c 'env > {envs['check']}; test -f %s'",
                                  "--reload", f"sh -c 'env > {envs['reload']}'"])
    env = dict(os.environ, ETCDCTL_PASSWORD="s3cret", ETCDCTL_USER="nobody:s3cret",
               REGISTER_KEPT="kept")
    r = subprocess.run(w.cmd + ["--once"], capture_output=True, text=True, timeout=30, env=env)
    # etcd has no auth: the user is sent and ignored
    assert r.returncode == 0, r.stderr
    for what, path in envs.items():
        text = open(path).read()
        assert "s3cret" not in text, (what, text)
        assert "REGISTER_KEPT=kept" in text, (what, text)


@suite.test
def a_prefix_that_is_a_key_is_not_in_kv():
    """kv maps each key under PREFIX (PREFIX/...): v3's range leaves a key
    that is PREFIX itself out, v2 listed it.  Both leave it out."""
    for api in ("v2", "v3"):
        prefix = f"/selfkey{api}"
        put(api, prefix, "itself")  # v2: a key, not a directory
        w = Watch(prefix, api)
        rc, err = w.once()
        assert rc == 0, err
        assert w.text() == expected(prefix, api, {}), (api, w.text())
        delete(api, prefix)
        put(api, f"{prefix}/a", "1")
        rc, err = w.once()
        assert rc == 0 and w.text() == expected(prefix, api, {f"{prefix}/a": "1"}), (api, err, w.text())


@suite.test
def a_candidate_left_by_a_kill_is_removed_at_start():
    """A SIGKILL while --check ran left .NAME.register-XXXXXX beside --out
    for good.  The next start removes such candidates of this --out (that
    pattern exactly, regular files of its own), said at info; nothing else
    of the directory."""
    prefix = "/leftover"
    put("v2", f"{prefix}/a", "1")
    w = Watch(prefix, "v2", args=["--check", "sh -c 'sleep 2; test -f \"$0\"' %s"])
    w.start()
    d = os.path.dirname(w.out)
    cands = lambda: [f for f in os.listdir(d) if re.fullmatch(r"\.out\.cfg\.register-[A-Za-z0-9]{6}", f)
                     and not os.path.islink(os.path.join(d, f))]
    wait_for(lambda: cands(), 10, what="the candidate under --check")
    left = cands()
    w.proc.kill()
    w.proc.wait()
    time.sleep(2.5)  # the check ends by itself
    assert cands() == left and w.text() is None, os.listdir(d)
    keep = [".out.cfg.register-reload-pending", ".out.cfg.register-abc12", ".other.register-abcdef",
            "out.cfg.register-abcdef"]
    for f in keep:
        open(os.path.join(d, f), "w").close()
    os.symlink("/etc/hostname", os.path.join(d, ".out.cfg.register-link01"))
    again = Watch(prefix, "v2", out=w.out)
    rc, err = again.once()
    assert rc == 0, err
    assert not cands(), os.listdir(d)
    for f in keep + [".out.cfg.register-link01"]:
        assert os.path.lexists(os.path.join(d, f)), (f, os.listdir(d))
    said = [l for l in err.splitlines() if left[0] in l]
    assert len(said) == 1 and "removed" in said[0] and "info" in said[0].lower(), err


@suite.test
def a_candidate_being_checked_is_not_taken_by_a_run_beside_it():
    """A `--once` run by hand beside the service, with the same --out,
    removed the service's candidate while its --check ran (the check then
    failed, and the file waited for a retry).  The running one holds its
    candidate locked; only a candidate no run holds is removed."""
    prefix = "/beside"
    put("v2", f"{prefix}/a", "1")
    w = Watch(prefix, "v2", args=["--check", "sh -c 'sleep 3; test -f \"$0\"' %s"])
    w.start()
    d = os.path.dirname(w.out)
    cands = lambda: [f for f in os.listdir(d) if re.fullmatch(r"\.out\.cfg\.register-[A-Za-z0-9]{6}", f)]
    wait_for(lambda: cands(), 10, what="the candidate under --check")
    held = cands()
    rc, err = Watch(prefix, "v2", out=w.out).once()
    assert rc == 0, err
    assert all(os.path.exists(os.path.join(d, f)) for f in held), (held, os.listdir(d), err)
    assert "removed" not in err, err
    wait_for(lambda: w.metric('register_watch_checks_total{result="ok"}') == 1 and not cands(), 15,
             what="the service's check to pass and its file to go in place")
    assert w.metric('register_watch_checks_total{result="failed"}') == 0, w.output()
    assert w.text() == expected(prefix, "v2", {f"{prefix}/a": "1"}), w.text()
    assert w.stop() == 0


def put_many(kv):
    """kv into etcd (v3) quickly: transactions of 128 puts (etcd's
    --max-txn-ops), a few at a time."""
    items = list(kv.items())
    chunks = [items[i:i + 128] for i in range(0, len(items), 128)]

    def run(part):
        for chunk in part:
            v3("/v3/kv/txn", {"success": [{"requestPut": {"key": b64(k), "value": b64(v)}} for k, v in chunk]})
    threads = [threading.Thread(target=run, args=(chunks[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def registered(n):
    """n containers of the default schema on 100 hosts, 400 images, one
    published port each."""
    kv = {}
    for i in range(n):
        host, image, cid = f"10.1.{i % 100}.{1 + i // 100 % 250}", f"team{i % 40}::app{i % 400}", "%064x" % (i + 1)
        kv[f"/registered/{host}/{image}/{cid}"] = json.dumps(
            [{"container": cid, "image": image, "ip": host, "public_port": str(30000 + i % 30000),
              "private_port": "8080", "port_type": "tcp"}], separators=(",", ":"))
    return kv


@suite.test
def forty_thousand_keys_render_with_the_shipped_haproxy():
    """The shipped renderers ran out of their 10,000,000 instructions
    between 15,000 and 25,000 keys ("an endless loop?"), and no flag
    raised it: a render's budget grows with its keys, so that the wall
    clock (--policy-timeout) is what bounds it."""
    put_many(registered(40000))
    try:
        w = Watch("/registered", "v3", render='return require "register.render.haproxy"',
                  args=["--policy-timeout", "60000", "--host-ip", "10.0.0.1"])
        rc, err = w.once("--timeout", "120", timeout=180)
        assert rc == 0, err[-2000:]
        text = w.text()
        assert text.count("\n    server ") == 40000, text[:2000]
    finally:
        v3("/v3/kv/deleterange", {"key": b64("/registered/"), "range_end": b64("/registered0")})
    # a render that loops all the same: the budget it had, and why
    loop = 'return { render = function(kv, ctx) while true do end end }'
    put("v3", "/budget/a", "1")
    put("v3", "/budget/b", "2")
    rc, err = Watch("/budget", "v3", render=loop, args=["--policy-timeout", "60000"]).once()
    assert rc == 1 and "instruction budget of 10004000 exceeded (10000000 and 2000 per key for 2 keys)" in err, err
    assert "endless loop" not in err, err
    rc, err = Watch("/budget-none", "v3", render=loop, args=["--policy-timeout", "60000"]).once()
    assert rc == 1 and "instruction budget of 10000000 exceeded (an endless loop?)" in err, err


class Notify:
    """systemd's side of sd_notify: a unix datagram socket of the test's."""

    def __init__(self):
        self.path = os.path.join(tmpdir("rnf"), "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.got = []
        suite.defer(self.sock.close)

    def until(self, pred, timeout=15, what="a message"):
        """Messages until pred(message); that message."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.time()))
            try:
                m = self.sock.recv(4096).decode()
            except socket.timeout:
                break
            self.got.append(m)
            if pred(m):
                return m
        raise AssertionError(f"no {what} in {self.got}")

    def quiet(self, seconds):
        """The messages of the next `seconds`."""
        out, deadline = [], time.time() + seconds
        while time.time() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.time()))
            try:
                out.append(self.sock.recv(4096).decode())
            except socket.timeout:
                break
        self.got += out
        return out


@suite.test
def systemd_status_follows_the_state():
    """sd_notify: with etcd unreachable at start, nothing was sent (no
    READY=1, no STATUS=), and after READY=1 "STATUS=rendered" stayed
    through failing renders and etcd outages.  STATUS= now follows the
    state; READY=1 comes once --out holds a file a load balancer can start
    with: the first render, or, etcd unreachable, a file already there."""
    prefix = "/notified"
    down = Etcd()  # started later
    suite.defer(down.cleanup)
    n = Notify()
    render = ('return { render = function(kv, ctx)\n'
              '  if kv["' + prefix + '/bad"] then error("a bad key") end\n'
              '  return #ctx.keys .. " keys\\n"\n'
              'end }\n')
    w = Watch(prefix, "v3", render=render)
    w.cmd[w.cmd.index("--etcd") + 1] = down.url
    w.start(env={"NOTIFY_SOCKET": n.path})
    m = n.until(lambda m: "waiting for etcd: " in m, 10, what="STATUS=waiting for etcd")
    assert "out.cfg not rendered yet" in m and "READY=1" not in m, m
    assert not [g for g in n.quiet(1.5) + n.got if "READY=1" in g], n.got  # no file yet
    down.start()
    dv3 = lambda path, body: urllib.request.urlopen(urllib.request.Request(
        down.url + path, data=json.dumps(body).encode(), method="POST"), timeout=5).read()
    dv3("/v3/kv/put", {"key": b64(f"{prefix}/a"), "value": b64("1")})
    m = n.until(lambda m: "READY=1" in m, 20, what="READY=1")
    assert re.search(r"STATUS=rendered [01] keys at revision \d+", m), m  # the put may come after
    if "rendered 1 keys" not in m:
        n.until(lambda m: re.search(r"STATUS=rendered 1 keys at revision \d+", m), 10, what="1 key rendered")
    assert w.text() == "1 keys\n"
    dv3("/v3/kv/put", {"key": b64(f"{prefix}/bad"), "value": b64("1")})
    m = n.until(lambda m: "STATUS=render failed: " in m, 10, what="render failed")
    assert "a bad key" in m, m
    dv3("/v3/kv/deleterange", {"key": b64(f"{prefix}/bad")})
    n.until(lambda m: re.search(r"STATUS=rendered 1 keys at revision \d+", m), 10, what="rendered again")
    down.stop()
    m = n.until(lambda m: "STATUS=waiting for etcd: " in m, 20, what="the outage")
    assert "out.cfg stays as it is" in m, m
    assert len([g for g in n.got if "READY=1" in g]) == 1, n.got
    assert w.stop() == 0
    # a file from before and etcd unreachable: ready, with the wait in STATUS=
    n2 = Notify()
    again = Watch(prefix, "v3", render=render, out=w.out)
    again.cmd[again.cmd.index("--etcd") + 1] = down.url
    again.start(env={"NOTIFY_SOCKET": n2.path})
    m = n2.until(lambda m: "READY=1" in m, 10, what="READY=1 with the file there")
    assert "STATUS=waiting for etcd: " in m and "out.cfg stays as it is" in m, m
    assert again.stop() == 0


@suite.test
def not_ready_while_no_render_has_made_a_file():
    """READY=1 came at the first cycle's end even when its render (or its
    check) failed and there was no file from before: haproxy, ordered
    after the unit, then started with no configuration.  It now waits
    until a file is in place; STATUS= says why meanwhile."""
    prefix = "/notready"
    put("v3", f"{prefix}/bad", "1")
    n = Notify()
    render = ('return { render = function(kv, ctx)\n'
              '  if kv["' + prefix + '/bad"] then error("a bad key") end\n'
              '  return #ctx.keys .. " keys\\n"\n'
              'end }\n')
    w = Watch(prefix, "v3", render=render).start(env={"NOTIFY_SOCKET": n.path})
    m = n.until(lambda m: "STATUS=render failed: " in m, 10, what="render failed")
    assert "READY=1" not in m, m
    assert not [g for g in n.quiet(1.5) + n.got if "READY=1" in g], n.got
    assert w.text() is None
    delete("v3", f"{prefix}/bad")
    n.until(lambda m: "READY=1" in m, 10, what="READY=1 once rendered")
    assert w.text() == "0 keys\n"
    assert w.stop() == 0


@suite.test
def sigterm_abandons_a_render_in_progress():
    """A render that runs long (here up to its 20 s limit) held the loop,
    and SIGTERM waited for it; it is abandoned now, as the daemon's policy
    calls are (the worker killed)."""
    prefix = "/slowrender"
    put("v2", f"{prefix}/a", "1")
    render = ('return { render = function(kv, ctx)\n'
              '  string.find(string.rep("a", 3000), ".-.-.-.-.-b")\n'
              '  return "x\\n"\n'
              'end }\n')
    w = Watch(prefix, "v2", render=render, args=["--policy-timeout", "20000"]).start()
    time.sleep(2)  # the render is under way
    t0 = time.time()
    w.proc.send_signal(signal.SIGTERM)
    try:
        w.proc.wait(10)
    except subprocess.TimeoutExpired:
        pass
    took = time.time() - t0
    assert w.proc.poll() is not None, "still running 10 s after SIGTERM"
    assert took < 3, f"stopped {took:.1f} s after SIGTERM"
    assert w.text() is None


@suite.test
def an_etcd_without_the_v2_api_is_named():
    """etcd 3.4 without --enable-v2 answers the v2 keys API with a 404
    that is not JSON: the error said only that, retried for ever."""
    no_v2 = Etcd(extra=["--enable-v2=false"]).start()
    suite.defer(no_v2.cleanup)
    w = Watch("/nov2", "v2")
    w.cmd[w.cmd.index("--etcd") + 1] = no_v2.url
    rc, err = w.once("--timeout", "3")
    assert rc == 1, err
    assert "no v2 keys API here (etcd runs without --enable-v2?); use --etcd-api v3" in err, err


@suite.test
def a_file_removed_or_edited_behind_its_back_is_put_back():
    """With a quiet prefix, --out removed or edited by hand stayed so (for
    good: nothing rendered again), while /healthz said ok.  The file is
    looked at between cycles; a change is rendered again, put back (a
    removed one with the mode and owner it had) and reloaded.  Each
    API."""
    for api in ("v2", "v3"):
        prefix = f"/handedit-{api}"
        put(api, f"{prefix}/a", "1")
        d = tmpdir("rw")
        reloads = os.path.join(d, "reloads")
        w = Watch(prefix, api, args=["--reload", f"sh -c 'echo r >> {reloads}'"]).start()
        want = expected(prefix, api, {f"{prefix}/a": "1"})
        wait_for(lambda: w.text() == want, what=f"the first render ({api})")
        wait_for(lambda: os.path.exists(reloads), what=f"the first reload ({api})")
        # its mode and group as the admin set them: kept when it is put
        # back (it came back 0644 root:root, readable by all)
        os.chmod(w.out, 0o640)
        os.chown(w.out, 0, 65534)
        time.sleep(6)  # the disk check (every 5 s) sees them
        os.unlink(w.out)
        wait_for(lambda: w.text() == want, 20, what=f"the removed file put back ({api})")
        st = os.stat(w.out)
        assert (st.st_mode & 0o7777, st.st_gid) == (0o640, 65534), (oct(st.st_mode), st.st_gid)
        assert f"{w.out} was removed since register watch wrote it" in w.output(), w.output()[-2000:]
        with open(w.out, "a") as f:
            f.write("backend hand-edited\n")
        wait_for(lambda: w.text() == want, 20, what=f"the edited file put back ({api})")
        assert f"{w.out} was changed since register watch wrote it" in w.output(), w.output()[-2000:]
        wait_for(lambda: len(open(reloads).read().split()) == 3, 10, what=f"reloaded after each ({api})")
        assert w.stop() == 0


@suite.test
def a_process_a_reload_leaves_behind_may_write_later():
    """A process a reload leaves behind keeps the reload's stdout and
    stderr; after the 1 s drain register closed its ends of them, and the
    process died of SIGPIPE at its next write (the README says such
    processes are left alone).  They are read and discarded now, until
    the process closes them, and closed when register stops."""
    prefix = "/leftbehind"
    put("v2", f"{prefix}/a", "1")
    d = tmpdir("rw")
    alive = os.path.join(d, "alive")
    w = Watch(prefix, "v2", args=[
        "--reload", f"sh -c '(sleep 2; echo to stdout; echo to stderr >&2; echo $$ > {alive}; "
                    "exec sleep 31.25) &'"]).start()
    try:
        wait_for(lambda: os.path.exists(alive) and open(alive).read().strip(), 10,
                 what="the process left behind writing after the drain")
        put("v2", f"{prefix}/b", "2")  # later reloads are not held by it
        wait_for(lambda: "b=2" in (w.text() or ""), what="the next change rendered")
        # it still holds the pipes: register stops all the same, cleanly
        assert w.stop() == 0
        assert "still has handles" not in w.output(), w.output()[-2000:]
    finally:
        subprocess.run(["pkill", "-f", alive])  # the subshell, until its exec
        subprocess.run(["pkill", "-f", "^sleep 31.25$"])


@suite.test
def commands_get_their_stdio_only():
    """--check and --reload inherited register's etcd connections (libcurl's
    sockets are not close-on-exec), and a process a reload leaves behind
    (haproxy -D) held them after register stopped.  Each API: the
    commands' shell has what it has when started with stdio only."""
    for api in ("v2", "v3"):
        prefix = f"/fds-{api}"
        put(api, f"{prefix}/a", "1")
        d = tmpdir("rw")
        seen = {k: os.path.join(d, k) for k in ("check", "reload")}
        w = Watch(prefix, api, args=[
            "--check", f"sh -c 'ls /proc/$$/fd > {seen['check']}; true' %s",
            "--reload", f"sh -c 'ls /proc/$$/fd > {seen['reload']}; true'"]).start()
        wait_for(lambda: all(os.path.exists(f) and open(f).read() for f in seen.values()),
                 what=f"both commands ran ({api})")
        put(api, f"{prefix}/b", "2")  # and again, with the watch's stream open
        wait_for(lambda: "b=2" in (w.text() or ""), what=f"the change rendered ({api})")
        # the shell's own (dash keeps one), as a process with stdio only sees
        base = os.path.join(d, "base")
        subprocess.run(["sh", "-c", f"ls /proc/$$/fd > {base}; true"], check=True)
        own = sorted(int(x) for x in open(base).read().split())
        for k, f in seen.items():
            # a later run truncates it before ls writes (one write): not empty
            wait_for(lambda: open(f).read().strip(), what=f"the {k} command's fds ({api})")
            fds = sorted(int(x) for x in open(f).read().split())
            assert fds == own, f"{api}: {k} command's fds: {fds} (a shell with stdio only: {own})"
        assert w.stop() == 0


@suite.test
def v2_reads_are_quorum_reads():
    """A member cut off from the others answered v2 listings from its own
    copy, however old: `--once` rendered a key the cluster had deleted and
    exited 0 (v3's reads are linearizable and refused).  The member falls
    behind while stopped and the others take enough writes that the
    leader gives up streaming to it; then only it answers."""
    cl = Cluster(3).start()
    suite.defer(cl.cleanup)
    m0, m2 = cl.members[0], cl.members[2]
    m0.v2("/pq/b", method="PUT", data=b"value=2")
    wait_for(lambda: '"/pq/b"' in urllib.request.urlopen(f"{m2.url}/v2/keys/pq/b").read().decode(),
             what="the key on the third member")
    sigstop(m2.proc.pid)

    def writes(t):
        c = http.client.HTTPConnection("127.0.0.1", int(m0.url.rsplit(":", 1)[1]), timeout=30)
        for i in range(300):
            c.request("PUT", f"/v2/keys/other/{t}_{i}", body="value=" + "x" * 2000,
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
            c.getresponse().read()
    ts = [threading.Thread(target=writes, args=(i,)) for i in range(10)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    m0.v2("/pq/b", method="DELETE")
    m0.v2("/pq/c", method="PUT", data=b"value=3")
    sigstop(cl.members[0].proc.pid)
    sigstop(cl.members[1].proc.pid)
    os.kill(m2.proc.pid, signal.SIGCONT)
    try:
        w = Watch("/pq", "v2")
        w.cmd[w.cmd.index("--etcd") + 1] = m2.url
        w.cmd += ["--etcd-discovery", "off"]
        rc, err = w.once("--timeout", "4")
        assert rc == 1 and w.text() is None, (rc, w.text(), err)
    finally:
        for m in cl.members:
            os.kill(m.proc.pid, signal.SIGCONT)
    # with the others back, the same read is the cluster's
    rc, err = w.once("--timeout", "20")
    assert rc == 0, err
    assert w.text() == expected("/pq", "v2", {"/pq/c": "3"}), w.text()


if __name__ == "__main__":
    suite.run()

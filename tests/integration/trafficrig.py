"""Traffic through a real haproxy that `register watch` keeps in step with
etcd: the pieces that tests/integration/test_traffic.py (CI, short) and
bench/traffic.py (the benchmark, every scenario) share.

    backends   busybox httpd in the bbx image; GET /app answers with the
               container's hostname (its short id), so each answer names the
               backend that gave it; 404 once /www/app is removed.
               "graceful": on SIGTERM it goes on serving for 2 s, then stops
               accepting, lets the requests in flight finish and exits (what
               a well-made service does); "abrupt": stops accepting at once
    register   the daemon, publishing to etcd (default schema)
    watch      `register watch /registered --render R --out CFG --check
               "haproxy -c -q -f %s" --reload "sh -c 'kill -USR2 <master>
               && <wait until the master takes signals again>'"`, with a
               renderer of this file's own (RENDERER), so that the test does
               not depend on the shipped one (see RELOAD_WAIT for the wait)
    haproxy    2.6 in master-worker mode (-W, master CLI -S), no retries, no
               redispatch; its master's stderr is read line by line and
               time-stamped: "Reloading HAProxy" (SIGUSR2 taken) and
               "Loading success." (the new worker is up) bound each reload
    load       an open-loop HTTP client (this file, `python3 trafficrig.py
               load ...`, a process of its own): requests at a fixed rate on
               a fixed schedule, each on a new connection, whatever the
               earlier ones do; latency counted from the scheduled time, so
               that a stall is not hidden by sending later; every request
               that is not a 2xx is a failure, by kind (refused, reset,
               timeout, HTTP 5xx, ...)
    keys       a v2 watch of /registered, time-stamping each event as it
               arrives, and a poller of haproxy's config file (2 ms): with
               haproxy's reload lines they give, for each key event that
               changed haproxy's servers, the time from the event to the end
               of the reload that carried it (key -> reload)

Only loopback; free ports; everything is stopped at cleanup (Rig.cleanup).
"""
import asyncio
import http.client
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from toolkit import free_port, log, tmpdir, wait_for  # noqa: E402

HAPROXY = os.environ.get("REGISTER_TEST_HAPROXY", "/usr/sbin/haproxy")
PREFIX = "/registered"
SERVICE = "bbx"  # the service: the image's name, the key's third segment
PATH = "/app"
# registrator's layout (bench/traffic.py --registrator): /services/<name>/<id>
REGISTRATOR_PREFIX = "/services"


def ident(s):
    """The backend a key's last segment or a server's name stands for: the
    container's short id (register's keys and servers), or, for
    registrator, the container's name ("rb" + 10 hex digits; registrator's
    service id is <host>:<container name>:<port>, and the rig names each
    container and its hostname so)."""
    m = re.search(r"rb[0-9a-f]{10}", s)
    return m.group(0) if m else s[:12]

# ---------------------------------------------------------------------------
# backends
# ---------------------------------------------------------------------------

def backend_script(grace):
    """The container's command (sh -c): the app is a file naming the
    container (its hostname, the short id), served by busybox httpd in the
    background; on SIGTERM, `grace` seconds more of service, then the
    listener goes (httpd's main process is killed: nothing more is
    accepted), the requests in flight finish (each is a forked httpd of its
    own) and the container exits."""
    drain = "while pidof httpd >/dev/null; do sleep 0.05; done"
    wait = f"sleep {grace}; " if grace else ""
    return (f"mkdir -p /www && hostname > /www/app; httpd -f -p 80 -h /www & pid=$!; "
            f"trap '{wait}kill $pid; wait $pid; {drain}; exit 0' TERM; wait")


GRACEFUL = backend_script(2)
ABRUPT = backend_script(0)


def check_labels(interval=1.0, timeout=1.0, fall=2, rise=1):
    """The labels that ask register for an HTTP check of the app (the
    default policy registers a container that asks for checks only while
    they pass): a backend that answers 404 (its /www/app removed) fails it."""
    return ["-l", f"SERVICE_CHECK_HTTP={PATH}", "-l", f"SERVICE_CHECK_INTERVAL={int(interval * 1000)}ms",
            "-l", f"SERVICE_CHECK_TIMEOUT={int(timeout * 1000)}ms", "-l", f"SERVICE_CHECK_RISE={rise}",
            "-l", f"SERVICE_CHECK_FALL={fall}"]


# ---------------------------------------------------------------------------
# the renderer (the default schema to a whole haproxy config)
# ---------------------------------------------------------------------------

RENDERER = r"""-- the traffic test's own renderer: keys of the default schema,
-- /registered/<host>/<service>/<id>, value a JSON array of bindings, to a
-- whole haproxy config; one frontend per service of FRONTENDS; a server per
-- published binding of port 80/tcp, named <container 12>-<public port>;
-- one server per address (two keys for one binding, as during a policy
-- reload's make-before-break, are one server)
local register = require "register"

local FRONTENDS = { [@SERVICE@] = @FRONTEND@ }
local STATS = @STATS@

local M = {}

function M.render(kv, ctx)
  local services = {}
  for _, key in ipairs(ctx.keys) do
    local svc = key:match("^/registered/[^/]+/([^/]+)/")
    local value = svc and FRONTENDS[svc] and kv[key]
    local binds = value and register.json.decode(value)
    if type(binds) == "table" then
      local s = services[svc] or { seen = {}, list = {} }
      services[svc] = s
      for _, b in ipairs(binds) do
        if b.port_type == "tcp" and b.private_port == "80" then
          local ip = b.ip
          if ip == "0.0.0.0" or ip == "" then ip = "127.0.0.1" end
          local addr = ip .. ":" .. b.public_port
          if not s.seen[addr] then
            s.seen[addr] = true
            s.list[#s.list + 1] = { name = b.container:sub(1, 12) .. "-" .. b.public_port, addr = addr }
          end
        end
      end
    end
  end
  local out = {
    "global",
    "  stats socket " .. STATS .. " mode 600 level admin expose-fd listeners",
    "  hard-stop-after 30s",
    "  httpclient.ssl.verify none",  -- as the shipped renderer: no CA store loaded at each reload
    "defaults",
    "  mode http",
    "  timeout connect 5s",
    "  timeout client 30s",
    "  timeout server 10s",
    "  timeout http-request 10s",
    "  retries 0",
    "  no option redispatch",
  }
  local names = {}
  for svc in pairs(FRONTENDS) do names[#names + 1] = svc end
  table.sort(names)
  for _, svc in ipairs(names) do
    out[#out + 1] = "frontend fe_" .. svc
    out[#out + 1] = "  bind " .. FRONTENDS[svc]
    out[#out + 1] = "  default_backend be_" .. svc
    out[#out + 1] = "backend be_" .. svc
    out[#out + 1] = "  balance roundrobin"
    local list = services[svc] and services[svc].list or {}
    table.sort(list, function(a, b) return a.name < b.name end)
    for _, s in ipairs(list) do
      out[#out + 1] = "  server " .. s.name .. " " .. s.addr
    end
  end
  return table.concat(out, "\n") .. "\n"
end

return M
"""


def write_renderer(path, frontend, stats):
    text = (RENDERER.replace("@SERVICE@", json.dumps(SERVICE)).replace("@FRONTEND@", json.dumps(frontend))
            .replace("@STATS@", json.dumps(stats)))
    with open(path, "w") as f:
        f.write(text)
    return path


# the shipped renderer for registrator's layout, with its defaults (the
# service is registrator's name: "<image>-<port>", since bbx exposes more
# than one port)
SHIPPED_REGISTRATOR = """return require("register.render.registrator_haproxy").new{
  frontends = { [@SERVICE@] = @FRONTEND@ },
  stats = false,
}
"""


def write_registrator_renderer(path, frontend):
    with open(path, "w") as f:
        f.write(SHIPPED_REGISTRATOR.replace("@SERVICE@", json.dumps(SERVICE + "-80"))
                .replace("@FRONTEND@", json.dumps(frontend)))
    return path


# the shipped renderer (lua/render/haproxy.lua), with its defaults (no
# retries, no redispatch, no stats socket): the service is image:port
SHIPPED = """return require("register.render.haproxy").new{
  frontends = { [@SERVICE@] = @FRONTEND@ },
  stats = false,
}
"""


def write_shipped_renderer(path, frontend):
    with open(path, "w") as f:
        f.write(SHIPPED.replace("@SERVICE@", json.dumps(SERVICE + ":80")).replace("@FRONTEND@", json.dumps(frontend)))
    return path


def servers_in(text):
    """{backend: address} of the servers of a rendered config (both
    renderers name a server after the container's short id first; the
    registrator renderer after the service id: ident())."""
    out = {}
    for line in text.splitlines():
        p = line.split()
        if len(p) >= 3 and p[0] == "server":
            out[ident(p[1])] = p[2]
    return out


# ---------------------------------------------------------------------------
# processes whose stderr lines are time-stamped as they arrive
# ---------------------------------------------------------------------------

class Stamped:
    """A process whose stderr (and stdout) lines are kept with their arrival
    time, and also written to a log file."""

    def __init__(self, args, logpath, env=None):
        self.args = args
        self.logpath = logpath
        self.env = env
        self.lines = []  # (time, line)
        self.proc = None
        self.cond = threading.Condition()

    def start(self):
        self.log = open(self.logpath, "a")
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, text=True, env=self.env,
                                     start_new_session=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        return self

    def _read(self):
        for line in self.proc.stdout:
            t = time.time()
            line = line.rstrip("\n")
            with self.cond:
                self.lines.append((t, line))
                self.cond.notify_all()
            self.log.write(f"{t:.6f} {line}\n")
            self.log.flush()

    def output(self):
        with self.cond:
            return "\n".join(l for _, l in self.lines)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc:
            self.reader.join(5)
        rc = self.proc.returncode if self.proc else None
        return rc


# The reload command's second half.  haproxy 2.6's master drops a SIGUSR2
# that comes while it re-executes itself (measured: a second signal 0-150 ms
# after the first is lost, even after "Loading success."; the file then
# waits for the next change), so `kill -USR2` alone is not a reload command
# for a watch that may reload twice in a row.  After the signal, this waits
# until the master's CLI answers again with its reload counter past the one
# it had (its loop runs again: a signal now is taken); register watch runs
# one command at a time, so the next reload comes after that.  A reload
# that has not happened 1 s after the signal is signalled again (seen: with
# reloads 20 ms apart, one dropped even so).
RELOAD_WAIT = r"""import os, signal, socket, sys, time
sock, state, master = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(state) as f:
    want = int(f.read()) + 1
deadline = time.time() + 20
again = time.time() + 1
while time.time() < deadline:
    if time.time() > again:  # no reload after 1 s: the signal was dropped
        os.kill(master, signal.SIGUSR2)
        again = time.time() + 1
    try:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(2)
        s.connect(sock)
        s.sendall(b"show proc;quit\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        for line in data.decode().splitlines():
            f = line.split()
            if len(f) > 2 and f[1] == "master" and int(f[2]) >= want:
                with open(state + ".tmp", "w") as out:
                    out.write(f[2])
                os.rename(state + ".tmp", state)
                sys.exit(0)
    except (OSError, ValueError):
        pass
    time.sleep(0.005)
sys.exit("haproxy's master did not reload within 20 s")
"""


def master_reloads(sock):
    """The reload counter of haproxy's master (its CLI's show proc)."""
    import socket
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(2)
    s.connect(sock)
    s.sendall(b"show proc;quit\n")
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    for line in data.decode().splitlines():
        f = line.split()
        if len(f) > 2 and f[1] == "master":
            return int(f[2])
    raise AssertionError(f"no master in show proc: {data!r}")


class Haproxy(Stamped):
    """haproxy -W (master-worker) in the foreground, with its master CLI
    (-S); the Popen's pid is the master's.  reload_cmd() is the command
    that reloads it (SIGUSR2, then the wait above)."""

    def __init__(self, cfg, dir):
        self.dir = dir
        self.master_sock = os.path.join(dir, "master.sock")
        super().__init__([HAPROXY, "-W", "-S", self.master_sock, "-f", cfg, "-p", os.path.join(dir, "haproxy.pid")],
                         os.path.join(dir, "haproxy.log"))

    def start(self, timeout=20):
        super().start()
        wait_for(lambda: self._up(), timeout, what="haproxy's first worker")
        self.state = os.path.join(self.dir, "reloads")
        with open(self.state, "w") as f:
            f.write(str(wait_for(lambda: str(master_reloads(self.master_sock)), timeout,
                                 what="haproxy's master CLI")))
        self.waiter = os.path.join(self.dir, "reload-wait.py")
        with open(self.waiter, "w") as f:
            f.write(RELOAD_WAIT)
        return self

    def reload_cmd(self, wait=True):
        kill = f"kill -USR2 {self.proc.pid}"
        if not wait:
            return kill
        return (f"sh -c '{kill} && exec {sys.executable} -S {self.waiter} {self.master_sock} {self.state} "
                f"{self.proc.pid}'")

    def _up(self):
        if self.proc.poll() is not None:
            raise AssertionError("haproxy exited:\n" + self.output())
        return "Loading success." in self.output()

    def reloads(self):
        """[(start, done or None, ok)] for every reload: "Reloading HAProxy"
        to the "Loading success." (or failure) that follows it."""
        out = []
        with self.cond:
            lines = list(self.lines)
        cur = None
        for t, line in lines:
            if "Reloading HAProxy" in line:
                if cur is not None:
                    out.append((cur, None, False))
                cur = t
            elif cur is not None and "Loading success." in line:
                out.append((cur, t, True))
                cur = None
            elif cur is not None and "Loading failure" in line:
                out.append((cur, t, False))
                cur = None
        if cur is not None:
            out.append((cur, None, False))
        return out


class Watch(Stamped):
    """register watch, rendering haproxy's config."""

    def __init__(self, register_bin, dir, etcd_urls, renderer, out, reload_cmd=None, extra=(), check=True,
                 prefix=PREFIX):
        args = [register_bin, "watch", prefix, "--render", renderer, "--out", out, "--etcd", etcd_urls, *extra]
        if check:
            args += ["--check", f"{HAPROXY} -c -q -f %s"]
        if reload_cmd:
            args += ["--reload", reload_cmd]
        super().__init__(args, os.path.join(dir, "watch.log"))


def render_once(register_bin, dir, etcd_urls, renderer, out, prefix=PREFIX):
    """The first config, before haproxy runs: register watch --once."""
    r = subprocess.run([register_bin, "watch", prefix, "--render", renderer, "--out", out, "--etcd", etcd_urls,
                        "--check", f"{HAPROXY} -c -q -f %s", "--once"],
                       capture_output=True, text=True, timeout=60)
    with open(os.path.join(dir, "watch-once.log"), "w") as f:
        f.write(r.stdout + r.stderr)
    if r.returncode != 0 or not os.path.exists(out):
        raise AssertionError(f"register watch --once failed ({r.returncode}): {r.stderr.strip()}")


# ---------------------------------------------------------------------------
# what happened, time-stamped: etcd's events and the config file's versions
# ---------------------------------------------------------------------------

class KeyWatcher(threading.Thread):
    """Follows etcd's v2 events below PREFIX (keep-alive connection; the next
    endpoint when one fails, from the last index seen) and notes when each
    arrived: [(time, action, key)]."""

    def __init__(self, urls, prefix=PREFIX):
        super().__init__(daemon=True)
        self.prefix = prefix
        self.urls = urls if isinstance(urls, list) else urls.split(",")
        self.events = []
        self.halt = threading.Event()
        self.index = None
        self.initial = set()  # the keys when it started
        self.errors = 0

    def _conn(self, i):
        host = self.urls[i % len(self.urls)].split("://", 1)[-1]
        return http.client.HTTPConnection(host, timeout=2)

    def start(self):
        from toolkit import v2_tree_index
        for i in range(len(self.urls) * 3):
            try:
                tree, index = v2_tree_index(self.urls[i % len(self.urls)], self.prefix)
                if index is None:  # no PREFIX yet: the index of the whole store
                    c = self._conn(i)
                    c.request("GET", "/v2/keys/")
                    r = c.getresponse()
                    r.read()
                    index = int(r.getheader("X-Etcd-Index"))
                    c.close()
                self.initial, self.index = set(tree), index
                break
            except OSError:
                time.sleep(0.2)
        assert self.index is not None, "etcd does not answer"
        super().start()
        return self

    def run(self):
        i = 0
        conn = None
        while not self.halt.is_set():
            try:
                if conn is None:
                    conn = self._conn(i)
                conn.request("GET", f"/v2/keys{self.prefix}?wait=true&recursive=true&waitIndex={self.index + 1}")
                r = conn.getresponse()
                body = r.read()
                t = time.time()
                ev = json.loads(body)
                if "node" not in ev:
                    # 401 EventIndexCleared: history lost; go on from now
                    self.index = int(r.getheader("X-Etcd-Index", self.index))
                    self.errors += 1
                    continue
                self.events.append((t, ev["action"], ev["node"]["key"]))
                self.index = ev["node"]["modifiedIndex"]
            except (OSError, http.client.HTTPException, ValueError):
                # a wait that timed out (nothing happened in 2 s) or a member gone
                if conn is not None:
                    conn.close()
                conn = None
                if not self.halt.is_set():
                    i += 1
                    time.sleep(0.01)

    def stop(self):
        self.halt.set()


class ConfigPoller(threading.Thread):
    """Polls a file every 2 ms; [(time, text)] for each new version."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path = path
        self.versions = []
        self.halt = threading.Event()

    def run(self):
        last = None
        while not self.halt.is_set():
            try:
                st = os.stat(self.path)
                sig = (st.st_ino, st.st_mtime_ns, st.st_size)
                if sig != last:
                    t = time.time()
                    with open(self.path) as f:
                        text = f.read()
                    if not self.versions or self.versions[-1][1] != text:
                        self.versions.append((t, text))
                    last = sig
            except OSError:
                pass
            time.sleep(0.002)

    def text_at(self, t):
        text = None
        for tv, x in self.versions:
            if tv <= t:
                text = x
        return text

    def stop(self):
        self.halt.set()


def key_to_reload(events, versions, reloads, t0, t1, initial=()):
    """For each key event in [t0, t1) that changed the servers haproxy gets
    (the container's first key written: its server comes; its last key
    deleted: its server goes), the time from the event's arrival to the end
    of the first reload that began after a config with the change was
    written.  Returns ([(seconds to the reload's end, seconds to the file
    written)], [events that changed nothing], [events whose change was never
    loaded])."""
    lat, same, lost = [], [], []
    live = set(initial)
    for t, action, key in events:
        cid = ident(key.rsplit("/", 1)[-1])
        if action in ("delete", "expire", "compareAndDelete"):
            live.discard(key)
        else:
            live.add(key)
        if not (t0 <= t < t1):
            continue
        want = any(ident(k.rsplit("/", 1)[-1]) == cid for k in live)

        def has(text):
            return cid in servers_in(text or "")
        before = None
        for tv, text in versions:
            if tv <= t:
                before = text
        if has(before) == want:
            same.append((t, action, key))
            continue
        written = next((tv for tv, text in versions if tv > t and has(text) == want), None)
        if written is None:
            lost.append((t, action, key))
            continue
        # the reload that read it began after it was written (the poller
        # sees a write within 2 ms; the check runs before the reload)
        done = next((d for s, d, ok in reloads if s >= written - 0.002 and ok and d), None)
        if done is None:
            lost.append((t, action, key))
            continue
        lat.append((done - t, written - t))
    return lat, same, lost


def keyless(events, initial, t0, t1):
    """The key deletions in [t0, t1) that left their container with no key
    at all (its server goes): [(time, container 12)].  While nothing stops,
    a policy reload that renames keys must leave none (make-before-break)."""
    live = set(initial)
    out = []
    for t, action, key in events:
        if action in ("delete", "expire", "compareAndDelete"):
            live.discard(key)
            cid = ident(key.rsplit("/", 1)[-1])
            if t0 <= t < t1 and not any(ident(k.rsplit("/", 1)[-1]) == cid for k in live):
                out.append((t, cid))
        else:
            live.add(key)
    return out


# ---------------------------------------------------------------------------
# the load generator (a process of its own)
# ---------------------------------------------------------------------------

def classify(exc):
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, (ConnectionResetError, asyncio.IncompleteReadError, BrokenPipeError)):
        return "reset"
    return type(exc).__name__


async def one_request(port, path, sched, timeout, results):
    t_send = time.time()
    rec = {"t": sched, "lag": t_send - sched}
    try:
        async def go():
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(f"GET {path} HTTP/1.1\r\nHost: traffic\r\nConnection: close\r\n\r\n".encode())
                await writer.drain()
                data = await reader.read()  # to EOF
            finally:
                writer.close()
            return data
        data = await asyncio.wait_for(go(), timeout)
        head, _, body = data.partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0].split()
        if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/"):
            rec["err"] = "reset" if not data else "bad response"
        else:
            rec["status"] = int(status_line[1])
            if not 200 <= rec["status"] < 300:
                rec["err"] = f"HTTP {rec['status']}"
            rec["body"] = body.decode(errors="replace").strip()[:64]
    except Exception as e:  # noqa: BLE001 - every failure is counted
        rec["err"] = classify(e)
    rec["lat"] = time.time() - sched
    results.append(rec)


async def load_main(port, rate, path, timeout, out):
    """Requests at `rate` per second until stdin closes; then the ones in
    flight finish (at most `timeout`), and the records go to `out` as JSON."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_stdin():
        if not sys.stdin.buffer.read1(4096):
            loop.remove_reader(sys.stdin.fileno())
            stop.set()
    loop.add_reader(sys.stdin.fileno(), on_stdin)
    results = []
    tasks = set()
    t0 = time.time() + 0.05
    i = 0
    print("started", flush=True)
    while not stop.is_set():
        sched = t0 + i / rate
        delay = sched - time.time()
        if delay > 0:
            try:
                await asyncio.wait_for(stop.wait(), delay)
                break
            except asyncio.TimeoutError:
                pass
        task = asyncio.ensure_future(one_request(port, path, sched, timeout, results))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        i += 1
    if tasks:
        await asyncio.wait(tasks, timeout=timeout + 2)
    with open(out + ".tmp", "w") as f:
        json.dump(results, f)
    os.rename(out + ".tmp", out)


class Load:
    """The load generator's process: start(), then stop() returns the
    records of every request, sorted by scheduled time."""

    def __init__(self, port, rate=100, path=PATH, timeout=5.0, dir=None):
        self.port, self.rate, self.path, self.timeout = port, rate, path, timeout
        self.out = os.path.join(dir or tmpdir("rl"), f"load-{time.time():.3f}.json")
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "load", str(self.port),
                                      str(self.rate), self.path, str(self.timeout), self.out],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "started", "the load generator did not start"
        self.t_start = time.time()
        return self

    def stop(self):
        self.t_stop = time.time()
        self.proc.stdin.close()
        self.proc.wait(self.timeout + 30)
        self.proc = None
        with open(self.out) as f:
            recs = json.load(f)
        os.unlink(self.out)
        return sorted(recs, key=lambda r: r["t"])

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def summary(recs):
    """Counts, failures by kind, latency percentiles (ms) and the backends
    that answered."""
    failed = [r for r in recs if "err" in r]
    kinds = {}
    for r in failed:
        kinds[r["err"]] = kinds.get(r["err"], 0) + 1
    lat = [r["lat"] * 1000 for r in recs if "err" not in r]
    return {"requests": len(recs), "failed": len(failed), "kinds": kinds,
            "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "max_ms": max(lat) if lat else None,
            "max_lag_ms": max((r["lag"] for r in recs), default=0) * 1000,
            "backends": sorted({r["body"] for r in recs if "err" not in r and r.get("body")})}


class Registrator(Stamped):
    """gliderlabs/registrator (bench/registrator.sh builds v7) in register's
    place, writing its etcd layout under REGISTRATOR_PREFIX: its defaults
    (no TTL, deregistration at `die`), -ip as register's host ip; its etcd
    client follows the first endpoint and the members it lists."""

    def __init__(self, binary, dir, docker_host, etcd_urls, ip="127.0.0.1"):
        first = etcd_urls.split(",")[0].split("://", 1)[-1]
        env = dict(os.environ, DOCKER_HOST=docker_host)
        super().__init__([binary, "-ip", ip, f"etcd://{first}{REGISTRATOR_PREFIX}"],
                         os.path.join(dir, "registrator.log"), env)

    def wait_log(self, text, timeout):
        wait_for(lambda: text in self.output() or not self.alive(), timeout, what=f"registrator: {text}")
        assert self.alive(), "registrator exited:\n" + self.output()

    def kill9(self):
        self.stop(signal.SIGKILL)

    def cleanup(self):
        self.stop()


# ---------------------------------------------------------------------------
# the rig: register, register watch, haproxy and the backends on one dockerd
# ---------------------------------------------------------------------------

class Rig:
    """register (the daemon, host ip 127.0.0.1) on dockerd `d` and the etcd
    at `urls`; register watch rendering haproxy's config; haproxy; the
    time-stamping of keys, config versions and reloads.  scenario() runs an
    action under load and returns its row."""

    def __init__(self, d, urls, register_bin, policy=None, rate=100, timeout=5.0, checks=None, watch_extra=(),
                 watch_check=True, shipped=False, registrator=None):
        self.d = d
        # registrator's binary: it registers, in its layout, instead of register
        self.registrator = registrator
        self.prefix = REGISTRATOR_PREFIX if registrator else PREFIX
        self.checks = checks or {}  # check_labels() arguments
        self.timeout = timeout  # a request not answered in time is a failure
        self.urls = urls
        self.bin = register_bin
        self.policy = policy
        self.rate = rate
        self.watch_extra = list(watch_extra)  # more options of register watch (--wait ...)
        self.watch_check = watch_check  # --check "haproxy -c -q -f %s"
        self.shipped = shipped  # the shipped renderer instead of RENDERER
        self.dir = tmpdir("rt")
        self.cfg = os.path.join(self.dir, "haproxy.cfg")
        self.port = free_port()
        self.reg = self.haproxy = self.watch = self.keys = self.poller = None
        self.loads = []
        self.backends = []  # running, oldest first
        self.rows = []

    # -- set-up and clean-up --
    def start_register(self):
        if self.registrator:
            self.reg = Registrator(self.registrator, self.dir, self.d.host, self.urls).start()
            self.reg.wait_log("Listening for Docker events", 30)
            return self.reg
        from harness import Register
        args = ["--etcd", self.urls, "--docker", self.d.host]
        if self.policy:
            args += ["--policy", self.policy]
        self.reg = Register(*args, host_ip="127.0.0.1").start()
        self.reg.wait_log("in sync", 30)
        return self.reg

    def start(self):
        self.start_register()
        path = os.path.join(self.dir, "haproxy.lua")
        if self.registrator:
            renderer = write_registrator_renderer(path, f"127.0.0.1:{self.port}")
        elif self.shipped:
            renderer = write_shipped_renderer(path, f"127.0.0.1:{self.port}")
        else:
            renderer = write_renderer(path, f"127.0.0.1:{self.port}", os.path.join(self.dir, "admin.sock"))
        render_once(self.bin, self.dir, self.urls, renderer, self.cfg, self.prefix)
        self.haproxy = Haproxy(self.cfg, self.dir).start()
        self.keys = KeyWatcher(self.urls, self.prefix).start()
        self.poller = ConfigPoller(self.cfg)
        self.poller.start()
        self.renderer = renderer
        self.start_watch()
        return self

    def start_watch(self, wait=True):
        """register watch; wait=False reloads with a bare `kill -USR2`."""
        if self.watch:
            self.watch.stop()
        self.watch = Watch(self.bin, self.dir, self.urls, self.renderer, self.cfg,
                           self.haproxy.reload_cmd(wait), self.watch_extra, self.watch_check, self.prefix).start()
        time.sleep(1)
        assert self.watch.alive(), "register watch exited:\n" + self.watch.output()

    def stop(self):
        """Stops register watch and register (SIGTERM); each must exit 0
        (under ASan: no leaks either)."""
        rc = self.watch.stop()
        assert rc == 0, f"register watch exited {rc}:\n" + self.watch.output()[-3000:]
        self.reg.stop()

    def cleanup(self):
        for load in self.loads:
            load.kill()
        for t in (self.keys, self.poller):
            if t:
                t.stop()
        for p in (self.watch, self.haproxy):
            if p:
                p.stop()
        if self.reg:
            self.reg.cleanup()
        if os.environ.get("REGISTER_KEEP_LOGS"):
            log("traffic logs kept in", self.dir)
        else:
            import shutil
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- backends --
    def backend(self, script=GRACEFUL, checks=True, wait=True):
        """A new backend; with wait, returns once haproxy routes to it."""
        args = ["-p", "127.0.0.1::80"]
        if checks:
            args += check_labels(**self.checks)
        if self.registrator:
            # named so that registrator's service id (<host>:<name>:80)
            # and the answers (the hostname) name it: ident()
            name = "rb" + secrets.token_hex(5)
            args += ["--name", name, "--hostname", name]
        cid = self.d.docker("run", "-d", *args, "bbx", "sh", "-c", script)
        if self.registrator:
            cid = name
        self.backends.append(cid)
        if wait:
            self.wait_in(cid)
        return cid

    def stop_backend(self, cid, how=("stop",)):
        self.d.docker(*how, cid, timeout=60)
        self.backends.remove(cid)
        self.d.docker("rm", "-f", cid, check=False)

    def remove_all(self):
        for cid in list(self.backends):
            self.d.docker("rm", "-f", cid, check=False)
            self.backends.remove(cid)
        wait_for(lambda: not servers_in(open(self.cfg).read()), 30, what="no server left")

    def routed(self, cid):
        """True once a reload that began after a config with cid's server was
        written has finished: haproxy's worker routes to it."""
        short = cid[:12]
        written = next((tv for tv, text in self.poller.versions if short in servers_in(text)), None)
        if written is None:
            return False
        return any(ok and d and s >= written - 0.002 for s, d, ok in self.haproxy.reloads())

    def wait_in(self, cid, timeout=30):
        def ok():
            if not self.watch.alive():
                raise AssertionError("register watch exited:\n" + self.watch.output())
            return self.routed(cid)
        wait_for(ok, timeout, 0.01, what=f"haproxy to route to {cid[:12]}")

    def wait_out(self, cid, timeout=30):
        short = cid[:12]

        def gone():
            after = None
            for tv, text in self.poller.versions:
                if short in servers_in(text):
                    after = None
                elif after is None:
                    after = tv
            return after is not None and any(ok and d and s >= after - 0.002
                                             for s, d, ok in self.haproxy.reloads())
        wait_for(gone, timeout, 0.01, what=f"haproxy to drop {cid[:12]}")

    # -- a measured scenario --
    def scenario(self, name, action, tail=1.5, note=""):
        """Runs action() under load (1 s of load before it, `tail` after);
        action may return {"from": t} to count failures only after t too
        (failed_after) and {"note": ...}.  Returns the row."""
        load = Load(self.port, self.rate, timeout=self.timeout, dir=self.dir)
        self.loads.append(load)
        load.start()
        load_avg = os.getloadavg()[0]
        time.sleep(1)
        t_action = time.time()
        extra = {}
        try:
            extra = action() or {}
        finally:
            time.sleep(tail)
            t_end = time.time()
            recs = load.stop()
            self.loads.remove(load)
        s = summary(recs)
        both, same, lost = key_to_reload(self.keys.events, self.poller.versions, self.haproxy.reloads(),
                                         t_action, t_end, self.keys.initial)
        lat = [x for x, _ in both]
        written = [w for _, w in both]
        row = {"scenario": name, **s, "key_reload_ms": [round(x * 1000, 1) for x in lat],
               "key_reload_p50_ms": pct(lat, 50) and pct(lat, 50) * 1000,
               "key_reload_p99_ms": pct(lat, 99) and pct(lat, 99) * 1000,
               "key_written_p50_ms": pct(written, 50) and pct(written, 50) * 1000,
               "key_written_p99_ms": pct(written, 99) and pct(written, 99) * 1000,
               "key_events_without_change": len(same), "key_events_not_loaded": len(lost),
               "reloads": sum(1 for st, dn, ok in self.haproxy.reloads() if t_action <= st < t_end),
               "keyless": keyless(self.keys.events, self.keys.initial, t_action, t_end),
               "load": [round(load_avg, 2), round(os.getloadavg()[0], 2)],
               "note": extra.get("note", note)}
        if "from" in extra:
            row["failed_after"] = sum(1 for r in recs if "err" in r and r["t"] >= extra["from"])
            row["failed_before"] = row["failed"] - row["failed_after"]
        row["_recs"] = recs
        if os.environ.get("REGISTER_KEEP_LOGS"):
            with open(os.path.join(self.dir, f"requests-{len(self.rows)}.json"), "w") as f:
                json.dump({"row": {k: v for k, v in row.items() if k != "_recs"}, "recs": recs,
                           "t_action": t_action, "t_end": t_end}, f)
        assert self.haproxy.alive(), "haproxy exited:\n" + self.haproxy.output()
        assert self.watch.alive(), "register watch exited:\n" + self.watch.output()
        self.rows.append(row)
        log(fmt_row(row))
        return row


def fmt_ms(v):
    return "-" if v is None else f"{v:.0f}" if v >= 10 else f"{v:.1f}"


def fmt_row(r):
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(r["kinds"].items()))
    kr = (f"{fmt_ms(r['key_reload_p50_ms'])}/{fmt_ms(r['key_reload_p99_ms'])} ms "
          f"(n={len(r['key_reload_ms'])}; the file written {fmt_ms(r['key_written_p50_ms'])}/"
          f"{fmt_ms(r['key_written_p99_ms'])} ms)" if r["key_reload_ms"] else "n/a")
    extra = f" [after the window: {r['failed_after']}]" if "failed_after" in r else ""
    return (f"{r['scenario']}: {r['requests']} requests, {r['failed']} failed{extra}"
            f"{' (' + kinds + ')' if kinds else ''}, p50/p99 {fmt_ms(r['p50_ms'])}/{fmt_ms(r['p99_ms'])} ms, "
            f"key->reload {kr}, {r['reloads']} reloads, load average {r['load'][0]} -> {r['load'][1]}")


def table(rows):
    lines = ["| scenario | requests | failed | p50 / p99 latency | key → reload p50 / p99 (events) "
             "| key → file written p50 / p99 | notes |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        failed = str(r["failed"])
        if "failed_after" in r:
            failed += f" ({r['failed_after']} after the window)"
        if r["kinds"]:
            failed += ": " + ", ".join(f"{k} {n}" for k, n in sorted(r["kinds"].items()))
        kr = (f"{fmt_ms(r['key_reload_p50_ms'])} / {fmt_ms(r['key_reload_p99_ms'])} ms ({len(r['key_reload_ms'])})"
              if r["key_reload_ms"] else "n/a")
        kw = (f"{fmt_ms(r['key_written_p50_ms'])} / {fmt_ms(r['key_written_p99_ms'])} ms"
              if r["key_reload_ms"] else "n/a")
        lines.append(f"| {r['scenario']} | {r['requests']} | {failed} | {fmt_ms(r['p50_ms'])} / "
                     f"{fmt_ms(r['p99_ms'])} ms | {kr} | {kw} | {r['note']} |")
    return "\n".join(lines)


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "load":
    _, _, port, rate, path, timeout, out = sys.argv
    asyncio.run(load_main(int(port), float(rate), path, float(timeout), out))
    sys.exit(0)

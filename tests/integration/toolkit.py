"""One toolkit for tests/ and bench/: the etcd launcher (a member, a
cluster; on loopback or, for bench/fleet.py, one member per network
namespace), the v2 tree reader and the default schema's value.

tests/integration/harness.py and bench/*.py import these; nothing here
knows about Docker or register.  issue_cert() makes certificates with any
validity window (an expired one too) for the TLS tests and bench/chaos.py.  lua/default.lua is what writes the value
that default_value() builds; keep the two in step.

  REGISTER_TEST_ETCD=PATH   the etcd binary (default: etcd on PATH);
                            REGISTER_TEST_ETCD=debian13 means etcd 3.5 from
                            the cache that scripts/fetch-debian13.sh fills;
                            REGISTER_TEST_ETCD=sid Debian unstable's etcd
                            3.5 in a systemd-nspawn machine (sidmachine.py)
                            on this machine's network
"""
import base64
import http.server
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

SRC = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEBIAN13 = os.environ.get("REGISTER_DEBIAN13_CACHE", "/var/cache/register-test/debian13")


def debian13(rel):
    """A file from Debian 13's packages, fetched into the cache on first use."""
    path = os.path.join(DEBIAN13, rel)
    if not os.path.exists(path):
        subprocess.run([os.path.join(SRC, "scripts", "fetch-debian13.sh"), DEBIAN13], check=True,
                       stdout=subprocess.DEVNULL)
    return path


def etcd_binary():
    e = os.environ.get("REGISTER_TEST_ETCD", "etcd")
    if e == "debian13":
        return debian13("etcd-server/usr/bin/etcd")
    if e == "sid":
        return "/usr/bin/etcd"  # in the sid machine
    return e


def etcd_in_sid():
    return os.environ.get("REGISTER_TEST_ETCD") == "sid"


def log(*a):
    print("[test]", *a, file=sys.stderr, flush=True)


_ports_held = {}


def free_port():
    """A port free on 127.0.0.1, drawn below the kernel's ephemeral range
    (ip_local_port_range, 32768 and up here): a port the kernel hands out
    itself is taken again by any outgoing connection (curl's, etcd's
    peers', another test's under ctest -j2) before the service it was
    meant for binds it.  Seen: an etcd member added at a port that was no
    longer free 30 s later.

    A port is handed out once per run: until the service binds it, it is
    still free, and a second call drew it again (seen: an etcd's client and
    peer URLs on one port).  The claim is an abstract unix socket named
    after the port, held until this process exits, so that another test
    running beside this one (ctest -j2) does not draw it either; the kernel
    drops it with the process, and nothing is left on disk."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            top = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        top = 32768
    low = max(1024, top - 12000)
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(low, top)
        if port in _ports_held:
            continue
        claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            claim.bind(f"\0register-test-port-{port}")
        except OSError:  # another test process has it
            claim.close()
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                claim.close()
                continue
        _ports_held[port] = claim
        if len(_ports_held) > 256:  # a long run (chaos, a soak): the oldest is bound by now
            _ports_held.pop(next(iter(_ports_held))).close()
        return port
    raise AssertionError(f"no free port on 127.0.0.1 between {low} and {top}")


def wait_for(pred, timeout=15.0, interval=0.05, what="condition"):
    """Polls pred() until it returns a truthy value; fails the test after timeout."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = pred()
            if last:
                return last
        except Exception as e:  # a service still starting
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def sigstop(pid, timeout=10.0):
    """SIGSTOP, then waits until every thread of pid is stopped.  kill()
    returns once the signal is queued; the thread that takes it stops the
    others, and on a loaded machine a Go program (etcd) served requests for
    a while after (CI: a delete answered 1 ms after the kill)."""
    os.kill(pid, signal.SIGSTOP)

    def stopped():
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except (FileNotFoundError, ProcessLookupError):
                continue  # a thread that ended
            if state not in ("T", "t"):
                return False
        return True
    wait_for(stopped, timeout, interval=0.005, what=f"every thread of {pid} stopped")


def run_netns_mounted():
    """Whether something is mounted on /run/netns (os.path.ismount() does
    not see a bind mount of a directory on itself: the same device).
    `ip netns add` makes that bind mount the first time and leaves it
    behind once the last namespace is gone."""
    try:
        with open("/proc/self/mountinfo") as f:
            return any(line.split()[4] == "/run/netns" for line in f)
    except OSError:
        return False


def run_netns_unmount(was_mounted):
    """Undoes the /run/netns bind mount when it was not there before
    (was_mounted: run_netns_mounted() then) and no namespace is left."""
    if not was_mounted and run_netns_mounted() and not os.listdir("/run/netns"):
        subprocess.run(["umount", "/run/netns"], capture_output=True)


_TMPDIRS = []


def tmpdir(prefix="rt"):
    """A new directory in /tmp.  A test script's Suite removes those it
    made once every test in it has passed (remove_tmpdirs()); after a
    failure they stay, with the logs in them, and the Suite names them."""
    # short paths: unix sockets have a 108-byte limit
    d = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    _TMPDIRS.append(d)
    return d


def remove_tmpdirs():
    """Removes the directories tmpdir() made in this process, except one
    with something still mounted in it (a container's root left behind
    would take the cached images' files with it) or, with
    REGISTER_KEEP_LOGS=1, all of them.  Returns those it kept."""
    if os.environ.get("REGISTER_KEEP_LOGS"):
        return [d for d in _TMPDIRS if os.path.exists(d)]
    try:
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split()[4] for line in f]
    except OSError:
        return list(_TMPDIRS)
    kept = []
    for d in _TMPDIRS:
        if any(m == d or m.startswith(d + "/") for m in mounts):
            kept.append(d)
            continue
        shutil.rmtree(d, ignore_errors=True)
    del _TMPDIRS[:]
    return kept


# ---------------------------------------------------------------------------
# the default schema's value
# ---------------------------------------------------------------------------

def default_value(cid, image, bindings):
    """The exact bytes the default policy must write: bindings are
    (host_ip, host_port, private_port, proto) in Docker's order."""
    objs = [
        '{"container":"%s","image":"%s","ip":"%s","public_port":"%s","private_port":"%s","port_type":"%s"}'
        % (cid, image, ip, hp, pp, proto)
        for ip, hp, pp, proto in bindings
    ]
    return "[" + ",".join(objs) + "]"


# ---------------------------------------------------------------------------
# the v2 tree reader
# ---------------------------------------------------------------------------

def v2_tree_index(url, prefix="/registered", timeout=5, context=None, auth=None):
    """({key: value} for every key below prefix, X-Etcd-Index) from the v2
    API at url (recursive read); ({}, None) when prefix does not exist.
    auth is "user:password" (basic authentication) or None."""
    req = urllib.request.Request(url + "/v2/keys" + urllib.parse.quote(prefix) + "?recursive=true")
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as r:
            body = json.loads(r.read())
            index = int(r.headers.get("X-Etcd-Index", 0))
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return {}, None
        raise
    out = {}

    def walk(n):
        if n.get("dir"):
            for c in n.get("nodes", []):
                walk(c)
        else:
            out[n["key"]] = n.get("value")
    walk(body["node"])
    return out, index


def v2_tree(url, prefix="/registered", timeout=5, context=None, auth=None):
    """{key: value} for every key below prefix (v2, recursive)."""
    return v2_tree_index(url, prefix, timeout, context, auth)[0]


# ---------------------------------------------------------------------------
# certificates
# ---------------------------------------------------------------------------

CA_CNF = """[ca]
default_ca = issuer
[issuer]
database = index.txt
new_certs_dir = .
serial = serial
default_md = sha256
policy = any
unique_subject = no
copy_extensions = none
[any]
commonName = optional
organizationName = optional
[ext]
basicConstraints = CA:FALSE
extendedKeyUsage = %(usage)s
%(san)s
"""


def issue_cert(ca, ca_key, out, subject, key=None, days=2, not_before=None, not_after=None,
               usage="clientAuth", ips=(), dns=()):
    """A certificate for subject ("/CN=name", "/O=org": etcd 3.4 refuses a
    request through its JSON gateway made with a client certificate that
    has a CN, once auth is on) signed by the CA (files ca, ca_key), written
    to out: for key (a PEM private key file; None: a new P-256 key written to
    out's name with -key.pem for .pem), valid for days from now, or from
    not_before to not_after (seconds since the epoch: `openssl ca
    -startdate/-enddate`, so an expired certificate too, which `openssl x509
    -days` cannot make).  usage: extendedKeyUsage; ips, dns: subjectAltName.
    The file is written in place (callers that replace a file in use write
    elsewhere and rename).  Returns (certificate, key) paths."""
    out = os.path.abspath(out)
    if key is None:
        key = out[:-4] + "-key.pem" if out.endswith(".pem") else out + ".key"
        r = subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                            "-out", key], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"openssl genpkey: {r.stderr.strip()}")
    d = tempfile.mkdtemp(prefix="ca-")
    try:
        san = ",".join([f"IP:{ip}" for ip in ips] + [f"DNS:{n}" for n in dns])
        with open(os.path.join(d, "ca.cnf"), "w") as f:
            f.write(CA_CNF % {"usage": usage, "san": f"subjectAltName = {san}" if san else ""})
        open(os.path.join(d, "index.txt"), "w").close()
        with open(os.path.join(d, "serial"), "w") as f:
            f.write("%032x\n" % int.from_bytes(os.urandom(15), "big"))
        csr = os.path.join(d, "req.csr")
        steps = [["openssl", "req", "-new", "-key", os.path.abspath(key), "-subj", subject, "-out", csr]]
        if not_before is not None:
            fmt = "%Y%m%d%H%M%SZ"
            when = ["-startdate", time.strftime(fmt, time.gmtime(not_before)),
                    "-enddate", time.strftime(fmt, time.gmtime(not_after))]
        else:
            when = ["-days", str(days)]
        steps.append(["openssl", "ca", "-batch", "-config", "ca.cnf", "-cert", os.path.abspath(ca),
                      "-keyfile", os.path.abspath(ca_key), "-in", csr, "-out", out,
                      "-extensions", "ext", "-notext", *when])
        for cmd in steps:
            r = subprocess.run(cmd, cwd=d, capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd[:2])}: {r.stderr.strip()}")
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return out, key


def make_ca(d, name="test"):
    """A CA (P-256, 30 days) in directory d: (certificate, key) paths."""
    os.makedirs(d, exist_ok=True)
    ca, key = os.path.join(d, f"{name}-ca.pem"), os.path.join(d, f"{name}-ca-key.pem")
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-days", "30", "-subj", f"/CN={name} CA", "-keyout", key, "-out", ca],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"openssl req -x509: {r.stderr.strip()}")
    return ca, key


# ---------------------------------------------------------------------------
# etcd
# ---------------------------------------------------------------------------

class Etcd:
    """One etcd member or a cluster member; v2 enabled.

    By default on 127.0.0.1 with free ports and short raft timings (50 ms
    heartbeat, 500 ms election).  ip= listens on that address instead and
    netns= runs the member in that network namespace (`ip netns exec`);
    timing=None keeps etcd's own heartbeat and election timeout."""

    def __init__(self, name="default", cluster=None, client_port=None, peer_port=None, data_dir=None,
                 tls=None, extra=(), ip="127.0.0.1", netns=None, timing=(50, 500)):
        self.name = name
        self.ip = ip
        self.netns = netns
        self.timing = timing
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        self.dir = data_dir or tmpdir("re")
        self.cluster = cluster  # "n1=http://...,n2=..." or None
        self.proc = None
        self.tls = tls  # make_pki() paths: https, client certificates required
        self.extra = list(extra)
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://{ip}:{self.client_port}"
        self.peer_url = f"http://{ip}:{self.peer_port}"

    def start(self, wait=True):
        peer = self.peer_url
        data = os.path.join(self.dir, "data")
        # "existing" only matters (and only is right) for a member that has
        # its data already: etcd ignores the flag then; a new or wiped one
        # starts "new"
        state = "existing" if os.path.isdir(os.path.join(data, "member")) else "new"
        args = [
            etcd_binary(), "--name", self.name, "--data-dir", data,
            "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", self.cluster or f"{self.name}={peer}",
            "--initial-cluster-state", state, "--enable-v2=true",
        ]
        if self.timing:
            args += ["--heartbeat-interval", str(self.timing[0]), "--election-timeout", str(self.timing[1])]
        args += self.extra
        if self.tls:
            args += ["--cert-file", self.tls["server"], "--key-file", self.tls["server-key"],
                     "--client-cert-auth", "--trusted-ca-file", self.tls["ca"]]
        if self.netns:
            args = ["ip", "netns", "exec", self.netns] + args
        os.makedirs(self.dir, exist_ok=True)
        self.log = open(os.path.join(self.dir, "etcd.log"), "ab")
        if etcd_in_sid():
            # the machine shares this machine's network and /tmp (the data
            # directory's path is the same inside)
            assert not self.netns, "REGISTER_TEST_ETCD=sid runs etcd on this machine's network only"
            import sidmachine
            self.proc = sidmachine.machine().popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        else:
            self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=30):
        wait_for(lambda: self.health(), timeout, what=f"etcd {self.name} healthy")
        if not getattr(Etcd, "_logged", False):
            Etcd._logged = True
            with urllib.request.urlopen(self.url + "/version", timeout=2, context=self._ctx()) as r:
                log("etcd:", etcd_binary() + (" (in the sid machine)" if etcd_in_sid() else ""),
                    json.loads(r.read()).get("etcdserver"))

    def _ctx(self):
        if not self.tls:
            return None
        import ssl
        ctx = ssl.create_default_context(cafile=self.tls["ca"])
        ctx.load_cert_chain(self.tls["client"], self.tls["client-key"])
        return ctx

    def health(self):
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2, context=self._ctx()) as r:
                return json.loads(r.read()).get("health") == "true"
        except urllib.error.HTTPError:
            return False

    def healthy(self):
        """health() that is False, never an exception, for a member that
        does not answer."""
        try:
            return self.health()
        except Exception:
            return False

    def get(self, path, timeout=2):
        with urllib.request.urlopen(self.url + path, timeout=timeout, context=self._ctx()) as r:
            return r.read()

    def is_leader(self):
        try:
            return json.loads(self.get("/v2/stats/self"))["state"] == "StateLeader"
        except Exception:
            return False

    def requests(self, api):
        """Client requests (api "v2" or "v3"; v3 without Watch streams) this
        member has seen since it started, from /metrics; None if it does not
        answer."""
        try:
            text = self.get("/metrics").decode()
        except Exception:
            return None
        n = 0
        for line in text.splitlines():
            if api == "v2" and line.startswith("etcd_http_received_total{"):
                n += int(float(line.rsplit(" ", 1)[1]))
            elif (api == "v3" and line.startswith("grpc_server_started_total{")
                  and 'grpc_method="Watch"' not in line):
                n += int(float(line.rsplit(" ", 1)[1]))
        return n

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def wipe(self):
        """Stops etcd and deletes its data: a member that lost everything."""
        self.kill()
        shutil.rmtree(os.path.join(self.dir, "data"), ignore_errors=True)

    def restore(self, snap, initial_cluster=None):
        """This (stopped) member's data replaced by snapshot snap (etcdctl
        snapshot restore: its name, peer URL and the default cluster token;
        initial_cluster names every member, or this one alone)."""
        data = os.path.join(self.dir, "data")
        shutil.rmtree(data, ignore_errors=True)
        subprocess.run(["etcdctl", "snapshot", "restore", snap, "--name", self.name, "--data-dir", data,
                        "--initial-cluster", initial_cluster or f"{self.name}={self.peer_url}",
                        "--initial-advertise-peer-urls", self.peer_url, "--initial-cluster-token",
                        "etcd-cluster"], env=dict(os.environ, ETCDCTL_API="3"), check=True,
                       capture_output=True)

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- v2 reads, straight over HTTP (the tests also use etcdctl) --
    def v2(self, path, method="GET", data=None, timeout=5):
        req = urllib.request.Request(self.url + "/v2/keys" + urllib.parse.quote(path), method=method, data=data)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return json.loads(r.read()), dict(r.headers)
        except urllib.error.HTTPError as e:
            return json.loads(e.read() or b"{}"), dict(e.headers)

    def tree(self, prefix="/registered", timeout=5):
        """{key: value} for every key below prefix (v2, recursive)."""
        return v2_tree(self.url, prefix, timeout, self._ctx(), getattr(self, "auth", None))

    def etcdctl(self, *args, api="2", check=True):
        env = dict(os.environ, ETCDCTL_API=api)
        ep = ["--endpoints", self.url]
        if self.tls:
            if api == "2":
                ep += ["--ca-file", self.tls["ca"], "--cert-file", self.tls["client"],
                       "--key-file", self.tls["client-key"]]
            else:
                ep += ["--cacert", self.tls["ca"], "--cert", self.tls["client"],
                       "--key", self.tls["client-key"]]
        r = subprocess.run(["etcdctl", *ep, *args], env=env, capture_output=True, text=True, timeout=20)
        if check and r.returncode != 0:
            raise AssertionError(f"etcdctl {args} failed: {r.stderr}")
        return r.stdout

    def ls(self, prefix="/registered"):
        """etcdctl ls --recursive, as the original README shows it."""
        out = self.etcdctl("ls", "--recursive", prefix, check=False)
        return [l for l in out.splitlines() if l]

    def index(self):
        _, h = self.v2("/")
        return int(h.get("X-Etcd-Index", 0))

    HISTORY_END = "/register-test-history-end"

    def events_since(self, index, prefix, timeout=10):
        """etcd's v2 history after `index` below prefix (what a watcher of
        the prefix saw), complete up to now: a marker key is written (outside
        prefix; deleted again) and the history of the whole key space is read
        up to it, so the end is that write, not a watch that happened to be
        slow.  A history etcd no longer has (it keeps the last 1000 events),
        a read that fails or times out is an error, never a shorter list."""
        body, _ = self.v2(self.HISTORY_END, "PUT", data=b"value=end")
        assert "node" in body, f"cannot write the history marker: {body}"
        end = body["node"]["modifiedIndex"]
        inside = prefix.rstrip("/") + "/"
        evs = []
        try:
            while index < end:
                url = f"{self.url}/v2/keys/?wait=true&recursive=true&waitIndex={index + 1}"
                try:
                    with urllib.request.urlopen(url, timeout=timeout, context=self._ctx()) as r:
                        ev = json.loads(r.read())
                except urllib.error.HTTPError as e:
                    raise AssertionError(f"etcd's history after index {index} cannot be read "
                                         f"(HTTP {e.code}): {e.read()[:300]!r}") from None
                except OSError as e:
                    raise AssertionError(f"etcd's history after index {index} cannot be read: {e!r}") from None
                node = ev["node"]
                assert node["modifiedIndex"] > index, (index, ev)
                index = node["modifiedIndex"]
                if node["key"] == prefix or node["key"].startswith(inside):
                    evs.append(ev)
        finally:
            try:
                self.v2(self.HISTORY_END, "DELETE")
            except OSError:
                pass  # what failed is said above
        return evs


class Cluster:
    """n etcd members, named m0, m1, ...: by default on loopback with free
    ports; with ips= (one address per member) on those addresses at ports
    2379 and 2380, and with netns= (one namespace name per member) each in
    its own network namespace.  base= puts member i's files in base/m<i>
    (default: a temporary directory each); extra=, timing= and tls= go to
    every member (see Etcd)."""

    def __init__(self, n=3, ips=None, netns=None, base=None, extra=(), timing=(50, 500), tls=None):
        names = [f"m{i}" for i in range(n)]
        if ips:
            assert len(ips) == n, (n, ips)
            addrs = [(ip, 2379, 2380) for ip in ips]
        else:
            addrs = [("127.0.0.1", free_port(), free_port()) for _ in names]
        cluster = ",".join(f"{nm}=http://{ip}:{pp}" for nm, (ip, _, pp) in zip(names, addrs))
        if base:
            os.makedirs(base, exist_ok=True)
        self.members = [Etcd(nm, cluster, cp, pp, data_dir=os.path.join(base, nm) if base else None,
                             tls=tls, extra=extra, ip=ip, netns=netns[i] if netns else None, timing=timing)
                        for i, (nm, (ip, cp, pp)) in enumerate(zip(names, addrs))]

    def start(self, quorum=False):
        """Starts every member that does not run; waits until each is
        healthy, or with quorum=True until a majority is and one leads."""
        for m in self.members:
            if not m.proc:
                m.start(wait=False)
        if quorum:
            self.wait_healthy()
        else:
            for m in self.members:
                m.wait_ready(60)
        return self

    def wait_healthy(self, timeout=60):
        """Waits until a majority of the running members is healthy and one
        of them leads."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if (sum(m.healthy() for m in self.members if m.proc) > len(self.members) // 2
                    and self.leader()):
                return
            time.sleep(0.05)
        raise RuntimeError("the etcd cluster did not become healthy")

    def leader(self):
        for m in self.members:
            if m.proc and m.is_leader():
                return m
        return None

    def endpoints(self):
        return ",".join(m.url for m in self.members)

    def kill(self):
        """kill -9 every member; their data stays."""
        for m in self.members:
            m.kill()

    def cleanup(self):
        for m in self.members:
            m.cleanup()


# A TCP proxy in its own process: SIGSTOP freezes it as a hung member is
# (its kernel still accepts connections; nothing is ever answered).
PROXY = r"""
import socket, sys, threading
up = ("127.0.0.1", int(sys.argv[1]))
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", 0))
ls.listen(64)
print(ls.getsockname()[1], flush=True)
def pipe(a, b):
    try:
        while True:
            d = a.recv(65536)
            if not d:
                break
            b.sendall(d)
    except OSError:
        pass
    for s in (a, b):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
while True:
    c, _ = ls.accept()
    u = socket.create_connection(up)
    threading.Thread(target=pipe, args=(c, u), daemon=True).start()
    threading.Thread(target=pipe, args=(u, c), daemon=True).start()
"""


class HttpServer:
    """A test's HTTP server on loopback (handler: a BaseHTTPRequestHandler
    class), a thread per request, served from a thread of its own until
    close().  A client that goes mid-answer (register resets connections
    it gives up on) is not an error to print."""

    class _Server(http.server.ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 256

        def handle_error(self, request, client_address):
            pass

    def __init__(self, handler):
        self.server = self._Server(("127.0.0.1", 0), handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class FreezableProxy:
    """A proxy in front of etcd that freeze() makes a hung member; the
    caller close()s it."""

    def __init__(self, upstream_url):
        port = urllib.parse.urlsplit(upstream_url).port
        self.proc = subprocess.Popen([sys.executable, "-c", PROXY, str(port)], stdout=subprocess.PIPE,
                                     text=True)
        self.url = f"http://127.0.0.1:{self.proc.stdout.readline().strip()}"

    def freeze(self):
        sigstop(self.proc.pid)

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()  # SIGKILL ends a stopped process too
            self.proc.wait()

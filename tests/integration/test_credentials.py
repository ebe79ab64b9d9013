"""Issue 22: credential and certificate files read again when they change,
without SIGHUP, on a real etcd 3.4 with the fake Docker API.

- a password rotated in etcd and in --etcd-password-file (a new file
  renamed over the old one): register logs in with the new one and keeps
  writing (v3 tokens, v2 basic auth);
- a client certificate, its key and the CA bundle rotated the way
  Kubernetes swaps a secret (the `..data` symlink renamed over) to a new
  CA, then etcd restarted trusting the new CA only: register goes on
  writing, no key lost; /metrics counts the files read again;
- garbage in the certificate file, a key that does not match, an empty
  password file: one warning line each, what was in use stays, and new
  connections (etcd restarted, a new login) still work with it;
- a client certificate that has expired (an expired one renamed over the
  file, as if it had expired in place): a warning says so, etcd refuses
  the host and its keys expire, every warning with etcd's error says
  why; a renewed certificate and key renamed over: every key back;
- a client certificate with a CN, which etcd's JSON gateway refuses once
  auth is on: the warning gives etcd's plain-text reason; one without a
  CN renamed over: every key written;
- Docker's DOCKER_CERT_PATH files rotated in place, behind a TLS proxy
  to the fake Docker API that is restarted trusting the new CA only;
- SIGHUP reads every file again and says so.

Each test starts its own etcd (free loopback ports) and fake Docker and
stops them, with everything in its temporary directories, when it ends.
`python3 test_credentials.py NAME...` runs some of them."""
import asyncio
import base64
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
from fake_docker import FakeDocker  # noqa: E402
from harness import Etcd, Register, Suite, default_value, free_port, log, make_pki, tmpdir, wait_for  # noqa: E402
from toolkit import issue_cert  # noqa: E402

IP = "10.22.33.44"
PREFIX = f"/registered/{IP}"
ROOT = "root:rootpw"
suite = Suite()
PKI = tmpdir("rk")
suite.defer(lambda: shutil.rmtree(PKI, ignore_errors=True))
A = make_pki(PKI, "a")  # the CA in use at start
B = make_pki(PKI, "b")  # the CA rotated to
# etcd while clients move from a to b: its certificate from a, both trusted
AB = dict(A, ca=os.path.join(PKI, "a+b-ca.pem"))
with open(AB["ca"], "w") as f:
    f.write(open(A["ca"]).read() + open(B["ca"]).read())


class Env:
    """One test's etcd, fake Docker and registers; all gone on exit."""

    def __init__(self, tls=None, etcd_extra=()):
        self.cleanups = []
        self.etcd = Etcd(tls=tls, extra=list(etcd_extra))
        self.cleanups.append(self.etcd.cleanup)
        self.fdir = tmpdir("rf")
        self.cleanups.append(lambda: shutil.rmtree(self.fdir, ignore_errors=True))
        self.fake = FakeDocker(os.path.join(self.fdir, "d.sock"))
        self.auth = None

    def __enter__(self):
        try:
            self.etcd.start()
            self.fake.start()
            self.cleanups.append(self.fake.stop)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        for c in reversed(self.cleanups):
            try:
                c()
            except Exception as e:
                log("cleanup failed:", e)
        return False

    def register(self, *extra, fake=True, env=None):
        args = ["--etcd", self.etcd.url]
        if fake:  # else DOCKER_HOST in env
            args += ["--docker", self.fake.host]
        r = Register(*args, *extra, host_ip=IP, env=env).start()
        self.cleanups.append(r.cleanup)  # before etcd and the fake go
        return r

    def ctl3(self, *args, check=True):
        auth = ["--user", self.auth] if self.auth else []
        return self.etcd.etcdctl(*auth, *args, api="3", check=check)

    def tree(self, api):
        if api == "v2":
            return self.etcd.tree(PREFIX)
        doc = json.loads(self.ctl3("get", "--prefix", PREFIX + "/", "-w", "json"))
        return {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv["value"]).decode()
                for kv in doc.get("kvs", [])}

    def expected(self):
        out = {}
        for c in self.fake.running():
            binds = []
            for port, bl in c["NetworkSettings"]["Ports"].items():
                p, _, proto = port.partition("/")
                binds += [(b["HostIp"], b["HostPort"], p, proto) for b in bl or []]
            if binds:
                img = c["Config"]["Image"].replace("/", "::")
                out[f"{PREFIX}/{img}/{c['Id']}"] = default_value(c["Id"], img, binds)
        return out

    def converged(self, api, timeout=20, what="etcd to equal the fake Docker's truth"):
        state = {}

        def ok():
            want, got = self.expected(), self.tree(api)
            state["diff"] = {"missing": sorted(set(want) - set(got)), "stale": sorted(set(got) - set(want))}
            return got == want
        try:
            wait_for(ok, timeout, interval=0.2, what=what)
        except AssertionError as e:
            raise AssertionError(f"{e}; {state.get('diff')}")

    def start_new(self, n):
        ids = []
        for _ in range(n):
            cid = self.fake.add()
            self.fake.start_container(cid)
            ids.append(cid)
        return ids

    def v3_auth(self):
        for cmd in (["user", "add", ROOT], ["user", "add", "reg:regpw"], ["role", "add", "regrole"],
                    ["role", "grant-permission", "regrole", "--prefix=true", "readwrite", PREFIX + "/"],
                    ["user", "grant-role", "reg", "regrole"], ["auth", "enable"]):
            self.ctl3(*cmd)
        self.auth = ROOT


def lines(r, level, text):
    return [ln for ln in r.output().splitlines() if f" {level} " in ln and text in ln]


def wait_line(r, level, text, timeout=20):
    wait_for(lambda: lines(r, level, text), timeout, interval=0.1, what=f"a {level} line {text!r}")
    return lines(r, level, text)


def replace(path, data):
    """A new file renamed over the old one, as `mv` does (a new inode)."""
    tmp = path + ".new"
    with open(tmp, "w") as f:
        f.write(data)
    os.rename(tmp, path)


def read(path):
    with open(path) as f:
        return f.read()


def secret_dir(d, files):
    """A directory laid out as Kubernetes mounts a secret: each name a
    symlink into ..data, itself a symlink to a timestamped directory."""
    os.makedirs(d, exist_ok=True)
    swap_secret(d, files, first=True)
    for name in files:
        os.symlink(os.path.join("..data", name), os.path.join(d, name))


def swap_secret(d, files, first=False):
    """The secret's new version: a new directory, and ..data renamed over
    (atomic) to point at it, as the kubelet does."""
    ver = f"..{time.time_ns()}"
    os.makedirs(os.path.join(d, ver))
    for name, content in files.items():
        with open(os.path.join(d, ver, name), "w") as f:
            f.write(content)
    tmp = os.path.join(d, "..data_tmp")
    os.symlink(ver, tmp)
    os.rename(tmp, os.path.join(d, "..data"))


def metric(port, name, file):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    want = f'{name}{{file="{file}"}} '
    for ln in text.splitlines():
        if ln.startswith(want):
            return int(ln[len(want):])
    raise AssertionError(f"no {want!r} in /metrics:\n{text}")


def passwd_v3(env, new):
    subprocess.run(["etcdctl", "--endpoints", env.etcd.url, "--user", ROOT, "user", "passwd", "reg",
                    "--interactive=false"], input=new + "\n", text=True, check=True,
                   env=dict(os.environ, ETCDCTL_API="3"), capture_output=True, timeout=20)


def v2_call(e, method, path, body=None, auth=None):
    req = urllib.request.Request(e.url + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None)
    req.add_header("Content-Type", "application/json")
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.status


def v2_auth(e):
    v2_call(e, "PUT", "/v2/auth/users/root", {"user": "root", "password": "rootpw"})
    v2_call(e, "PUT", "/v2/auth/roles/regrole", {"role": "regrole", "permissions": {
        "kv": {"read": ["/registered/*"], "write": ["/registered/*"]}}})
    v2_call(e, "PUT", "/v2/auth/users/reg", {"user": "reg", "password": "regpw", "roles": ["regrole"]})
    v2_call(e, "PUT", "/v2/auth/enable", auth=ROOT)
    v2_call(e, "PUT", "/v2/auth/roles/guest", {"role": "guest", "revoke": {
        "kv": {"read": ["/*"], "write": ["/*"]}}}, auth=ROOT)
    e.auth = ROOT


# ---- the password ----

def password_rotated_without_sighup(api):
    with Env(etcd_extra=["--auth-token-ttl", "2"]) as env:
        if api == "v3":
            env.v3_auth()
        else:
            v2_auth(env.etcd)
        pwfile = os.path.join(env.fdir, "pw")
        with open(pwfile, "w") as f:
            f.write("regpw\n")
        env.start_new(2)
        r = env.register("--etcd-api", api, "--ttl", "10", "--etcd-user", "reg",
                         "--etcd-password-file", pwfile)
        r.wait_log("in sync")
        env.converged(api)
        # the password changes in etcd, then the file (a new file renamed
        # over it), and no signal
        if api == "v3":
            passwd_v3(env, "rotated")
        else:
            v2_call(env.etcd, "PUT", "/v2/auth/users/reg", {"user": "reg", "password": "rotated"}, auth=ROOT)
        replace(pwfile, "rotated\n")
        got = wait_line(r, "info", "etcd: credentials read again (changed): password file " + pwfile, 10)
        assert len(got) == 1, got
        time.sleep(3)  # v3: the token expires, the next write logs in again
        env.start_new(2)
        env.converged(api, what="containers started after the rotation")
        if api == "v3":
            assert "authentication as user reg failed" not in r.output(), r.output()[-3000:]
        assert "rotated" not in r.output()  # the password never appears
        r.stop()


@suite.test
def password_rotated_without_sighup_v3():
    password_rotated_without_sighup("v3")


@suite.test
def password_rotated_without_sighup_v2():
    password_rotated_without_sighup("v2")


@suite.test
def empty_or_missing_password_file_keeps_the_password():
    with Env(etcd_extra=["--auth-token-ttl", "2"]) as env:
        env.v3_auth()
        pwfile = os.path.join(env.fdir, "pw")
        with open(pwfile, "w") as f:
            f.write("regpw\n")
        env.start_new(1)
        r = env.register("--etcd-api", "v3", "--ttl", "10", "--etcd-user", "reg",
                         "--etcd-password-file", pwfile)
        r.wait_log("in sync")
        env.converged("v3")
        replace(pwfile, "")
        got = wait_line(r, "warn", f"etcd: password file {pwfile}: its first line is empty; "
                        "still using the password read before", 10)
        time.sleep(5)  # more polls: said once; the token expires meanwhile
        assert len(lines(r, "warn", "password file")) == 1, got
        env.start_new(1)  # a new login, with the password kept
        env.converged("v3", what="a container started after the file was emptied")
        os.unlink(pwfile)  # gone altogether: another reason, said once
        wait_line(r, "warn", f"etcd: password file {pwfile}: cannot read it: No such file or directory", 10)
        time.sleep(3)
        assert len(lines(r, "warn", "password file")) == 2, lines(r, "warn", "password file")
        env.start_new(1)
        env.converged("v3", what="a container started after the file went")
        assert "authentication as user reg failed" not in r.output(), r.output()[-3000:]
        r.stop()


@suite.test
def sighup_reads_the_files_again():
    with Env() as env:
        env.v3_auth()
        pwfile = os.path.join(env.fdir, "pw")
        with open(pwfile, "w") as f:
            f.write("regpw\n")
        r = env.register("--etcd-api", "v3", "--etcd-user", "reg", "--etcd-password-file", pwfile)
        r.wait_log("in sync")
        r.proc.send_signal(signal.SIGHUP)
        wait_line(r, "info", f"etcd: credentials read again (SIGHUP): no change in password file {pwfile}")
        r.stop()


# ---- register watch: the same etcd code ----

LINES = """return { render = function(kv, ctx)
  local out = {}
  for _, k in ipairs(ctx.keys) do out[#out + 1] = k .. "=" .. kv[k] end
  return table.concat(out, "\\n") .. "\\n"
end }
"""


def v2_put(e, key, value, auth):
    req = urllib.request.Request(e.url + "/v2/keys" + key, method="PUT",
                                 data=urllib.parse.urlencode({"value": value}).encode())
    req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.status


@suite.test
def watch_reads_a_rotated_password_file():
    with Env() as env:
        v2_auth(env.etcd)
        pwfile = os.path.join(env.fdir, "pw")
        with open(pwfile, "w") as f:
            f.write("regpw\n")
        render = os.path.join(env.fdir, "render.lua")
        with open(render, "w") as f:
            f.write(LINES)
        out = os.path.join(env.fdir, "out.cfg")
        v2_put(env.etcd, PREFIX + "/a", "1", ROOT)
        port = free_port()
        w = Register("watch", PREFIX, "--render", render, "--out", out, "--etcd", env.etcd.url,
                     "--etcd-user", "reg", "--etcd-password-file", pwfile, "--wait", "100ms",
                     "--metrics", f"127.0.0.1:{port}").start()
        env.cleanups.append(w.cleanup)
        wait_for(lambda: os.path.exists(out) and read(out) == f"{PREFIX}/a=1\n", what="the first render")
        assert metric(port, "register_credentials_reloaded_total", pwfile) == 0
        v2_call(env.etcd, "PUT", "/v2/auth/users/reg", {"user": "reg", "password": "rotated"}, auth=ROOT)
        replace(pwfile, "rotated\n")
        wait_line(w, "info", "etcd: credentials read again (changed): password file " + pwfile, 10)
        # register watch counts it as the daemon does
        assert metric(port, "register_credentials_reloaded_total", pwfile) == 1
        assert metric(port, "register_credentials_refused_total", pwfile) == 0
        v2_put(env.etcd, PREFIX + "/b", "2", ROOT)
        wait_for(lambda: read(out) == f"{PREFIX}/a=1\n{PREFIX}/b=2\n", what="a render after the rotation")
        w.stop()


# ---- the client certificate, its key and the CA ----

@suite.test
def client_certificate_and_ca_rotated_without_sighup():
    # etcd requires client certificates (--client-cert-auth) and trusts CAs
    # a and b (a move under way); register's secret is rotated from a to b
    # (its CA bundle holds both while the servers move); etcd then restarts
    # with a certificate from b, trusting b only: the old client
    # certificate is refused from then on
    with Env(tls=AB) as env:
        sec = os.path.join(env.fdir, "etcd-tls")
        secret_dir(sec, {"ca.crt": read(A["ca"]), "tls.crt": read(A["client"]), "tls.key": read(A["client-key"])})
        files = {n: os.path.join(sec, n) for n in ("ca.crt", "tls.crt", "tls.key")}
        ids = env.start_new(3)
        port = free_port()
        r = env.register("--etcd-api", "v3", "--ttl", "10", "--etcd-cacert", files["ca.crt"],
                         "--etcd-cert", files["tls.crt"], "--etcd-key", files["tls.key"],
                         "--metrics", f"127.0.0.1:{port}")
        r.wait_log("in sync")
        env.converged("v3")
        swap_secret(sec, {"ca.crt": read(A["ca"]) + read(B["ca"]), "tls.crt": read(B["client"]),
                          "tls.key": read(B["client-key"])})
        got = wait_line(r, "info", "etcd: credentials read again (changed): ", 10)
        for n in ("ca.crt", "tls.crt", "tls.key"):
            assert files[n] in got[0], got
        assert "new connections use them" in got[0], got
        # a change meanwhile goes over the new certificate
        env.fake.die(ids.pop(0))
        ids += env.start_new(1)
        env.converged("v3", what="a change after the rotation")
        # etcd restarts on CA b alone (its own certificate too)
        env.etcd.stop()
        env.etcd.tls = B
        env.etcd.start()
        env.fake.die(ids.pop(0))
        ids += env.start_new(2)
        env.converged("v3", what="etcd to follow the containers on CA b only")
        # the lease lived on: nothing expired, nothing lost
        assert not lines(r, "warn", "is gone"), r.output()[-3000:]
        assert not lines(r, "warn", "credentials"), lines(r, "warn", "credentials")
        for n in ("ca.crt", "tls.crt", "tls.key"):
            assert metric(port, "register_credentials_reloaded_total", files[n]) == 1
            assert metric(port, "register_credentials_refused_total", files[n]) == 0
        if shutil.which("promtool"):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                body = resp.read().decode()
            p = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, text=True)
            assert p.returncode == 0, p.stdout + p.stderr
        r.stop()


def own_copies(env):
    """CA A's bundle, client certificate and key copied to files of the
    test's own (which it may then rewrite): {"ca", "client", "client-key"}."""
    cdir = os.path.join(env.fdir, "certs")
    os.makedirs(cdir)
    paths = {}
    for k in ("ca", "client", "client-key"):
        paths[k] = os.path.join(cdir, k + ".pem")
        shutil.copy(A[k], paths[k])
    return paths


@suite.test
def invalid_certificate_replacements_keep_the_pair_in_use():
    with Env(tls=A) as env:
        paths = own_copies(env)
        env.start_new(2)
        port = free_port()
        r = env.register("--etcd-api", "v3", "--ttl", "10", "--etcd-cacert", paths["ca"],
                         "--etcd-cert", paths["client"], "--etcd-key", paths["client-key"],
                         "--metrics", f"127.0.0.1:{port}")
        r.wait_log("in sync")
        env.converged("v3")
        # garbage in the certificate, rewritten in place
        with open(paths["client"], "w") as f:
            f.write("this is not a certificate\n")
        wait_line(r, "warn", f"etcd: client certificate {paths['client']}: no PEM certificate in it; "
                  "still using the one read before", 10)
        # new connections (etcd restarted) go on with the pair in use
        env.etcd.stop()
        env.etcd.start()
        env.start_new(1)
        env.converged("v3", what="a change after garbage in the certificate file")
        # a certificate that does not match the key (another CA's)
        replace(paths["client"], read(B["client"]))
        wait_line(r, "warn", f"etcd: client certificate {paths['client']}: it does not match the client key "
                  f"{paths['client-key']}", 10)
        # a CA bundle that is no PEM
        replace(paths["ca"], "-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
        wait_line(r, "warn", f"etcd: CA bundle {paths['ca']}: no PEM certificate in it", 10)
        time.sleep(5)  # more polls: each said once
        assert len(lines(r, "warn", "etcd: client certificate")) == 2, lines(r, "warn", "etcd: client")
        assert len(lines(r, "warn", "etcd: CA bundle")) == 1, lines(r, "warn", "etcd: CA bundle")
        env.etcd.stop()
        env.etcd.start()
        env.start_new(1)
        env.converged("v3", what="a change with every file invalid")
        assert not lines(r, "warn", "is gone"), r.output()[-3000:]
        assert metric(port, "register_credentials_refused_total", paths["client"]) == 2
        assert metric(port, "register_credentials_reloaded_total", paths["client"]) == 0
        # the pair in use back: nothing new to take or to say
        replace(paths["client"], read(A["client"]))
        replace(paths["ca"], read(A["ca"]))
        time.sleep(4)
        assert not lines(r, "info", "credentials read again"), lines(r, "info", "credentials read again")
        assert len(lines(r, "warn", "etcd: client certificate")) == 2, lines(r, "warn", "etcd: client")
        r.stop()
        # at start, an invalid file is one line and no daemon
        with open(paths["client-key"], "w") as f:
            f.write("garbage\n")
        r = env.register("--etcd-api", "v3", "--etcd-cacert", paths["ca"], "--etcd-cert", paths["client"],
                         "--etcd-key", paths["client-key"])
        assert r.proc.wait(20) == 1
        assert f"etcd: client key {paths['client-key']}: no PEM private key in it" in r.output(), r.output()


def log_time(line):
    """The time of a register log line (text format, UTC)."""
    import datetime
    t = datetime.datetime.strptime(line.split()[0], "%Y-%m-%dT%H:%M:%S.%fZ")
    return t.replace(tzinfo=datetime.timezone.utc).timestamp()


@suite.test
def expired_client_certificate_said_and_its_renewal_taken():
    # etcd 3.4 refuses an expired client certificate with a bare "alert bad
    # certificate" (TLS 1.3: after the handshake, at the first read).  A
    # certificate expires in place, its file unchanged: here an expired one
    # (the same CA and key) is renamed over it, which register takes as
    # given (it is what the operator's tooling wrote) and says
    with Env(tls=A) as env:
        paths = own_copies(env)
        env.start_new(2)
        r = env.register("--etcd-api", "v3", "--ttl", "3", "--etcd-cacert", paths["ca"],
                         "--etcd-cert", paths["client"], "--etcd-key", paths["client-key"], "--log-level", "debug")
        r.wait_log("in sync")
        env.converged("v3")
        t = time.time()
        issue_cert(A["ca"], A["ca-key"], paths["client"] + ".new", "/CN=register", key=paths["client-key"],
                   not_before=t - 86400, not_after=t - 60)
        os.rename(paths["client"] + ".new", paths["client"])
        until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(t - 60)))
        wait_line(r, "warn", f"etcd: client certificate {paths['client']}: expired at {until}; in use all the "
                  "same: connections made with it are refused until the file holds a renewed one", 10)
        # etcd refuses it: the lease's keep-alive fails, its keys expire,
        # and each warning with etcd's error says why
        hint = f"(client certificate {paths['client']} expired at {until}: renew it; it is read again when it changes)"
        wait_line(r, "warn", hint, 10)
        new = env.start_new(1)[0]
        wait_for(lambda: not env.tree("v3"), 10, what="the keys to expire with the lease")
        wait_line(r, "warn", "its keys have probably expired", 10)
        assert all(hint in ln for ln in lines(r, "warn", "https://")), lines(r, "warn", "https://")
        # the new container's put has failed for seconds: its pause is
        # 2.5-5 s now.  The certificate renewed (a fresh one for a new key,
        # the key renamed first) right after a failed attempt and read at
        # once (SIGHUP): the put must go then, not at the end of the pause
        retries = lambda: lines(r, "debug", "etcd still unavailable key=")  # noqa: E731
        wait_for(lambda: len(retries()) >= 5, 20, what="five attempts at the put")
        n = len(retries())
        wait_for(lambda: len(retries()) > n, 10, what="one more attempt at the put")
        cert, key = issue_cert(A["ca"], A["ca-key"], paths["client"] + ".new", "/CN=register")
        os.rename(key, paths["client-key"])
        os.rename(cert, paths["client"])
        r.proc.send_signal(signal.SIGHUP)
        got = wait_line(r, "info", "etcd: credentials read again (SIGHUP): client certificate", 10)
        env.converged("v3", timeout=10, what="every key back after the renewal")
        done = lines(r, "info", f"registered key={PREFIX}/bbx/{new}")
        assert done, r.output()[-3000:]
        took = log_time(done[-1]) - log_time(got[0])
        assert took < 1.5, f"the put went {took:.2f}s after the renewal was read (its backoff's pause?)"
        assert len(lines(r, "warn", "etcd: client certificate")) == 1, lines(r, "warn", "etcd: client certificate")
        r.stop()


@suite.test
def client_certificate_with_a_cn_refused_by_the_gateway_is_said():
    # etcd 3.4 with auth on refuses every /v3 request through its JSON
    # gateway made with a client certificate that has a CN (it could not
    # pass the CN on as the user), in plain text, not JSON
    with Env(tls=A) as env:
        env.v3_auth()
        pwfile = os.path.join(env.fdir, "pw")
        with open(pwfile, "w") as f:
            f.write("regpw\n")
        paths = own_copies(env)  # A's client certificate has CN=register
        env.start_new(2)
        r = env.register("--etcd-api", "v3", "--ttl", "10", "--etcd-user", "reg", "--etcd-password-file", pwfile,
                         "--etcd-cacert", paths["ca"], "--etcd-cert", paths["client"], "--etcd-key",
                         paths["client-key"])
        wait_line(r, "warn", "etcd answered HTTP 400: CommonName of client sending a request against gateway "
                  "will be ignored and not used as expected", 10)
        # a certificate without a CN: the user is the password's
        cert, key = issue_cert(A["ca"], A["ca-key"], paths["client"] + ".new", "/O=register")
        os.rename(key, paths["client-key"])
        os.rename(cert, paths["client"])
        wait_line(r, "info", "etcd: credentials read again (changed): client certificate", 10)
        env.converged("v3", timeout=10, what="the keys written with a certificate without a CN")
        r.stop()


# ---- Docker's TLS files ----

class TLSProxy:
    """A TLS endpoint (client certificates required) in front of the fake
    Docker API's unix socket, as dockerd --tlsverify would be."""

    def __init__(self, sock):
        self.sock = sock
        self.port = free_port()
        self.loop = None

    def start(self, pki):
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=pki["ca"])
        ctx.load_cert_chain(pki["server"], pki["server-key"])
        ctx.verify_mode = ssl.CERT_REQUIRED
        ready = threading.Event()
        writers = set()

        async def pipe(reader, writer):
            try:
                while True:
                    data = await reader.read(65536)
                    if not data:
                        break
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, ssl.SSLError, OSError):
                pass
            finally:
                writer.close()

        async def client(reader, writer):
            writers.add(writer)
            try:
                ur, uw = await asyncio.open_unix_connection(self.sock)
            except OSError:
                writer.close()
                return
            writers.add(uw)
            try:
                await asyncio.gather(pipe(reader, uw), pipe(ur, writer))
            except asyncio.CancelledError:
                pass  # stopped

        async def main():
            self.server = await asyncio.start_server(client, "127.0.0.1", self.port, ssl=ctx)
            self.stopped = asyncio.Event()
            ready.set()
            await self.stopped.wait()
            self.server.close()
            for w in writers:  # every connection dropped, as a dying dockerd does
                w.transport.abort()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(main(),), daemon=True)
        self.thread.start()
        assert ready.wait(10)
        return self

    def stop(self):
        if self.loop:
            self.loop.call_soon_threadsafe(self.stopped.set)
            self.thread.join(10)
            self.loop.close()
            self.loop = None


@suite.test
def docker_tls_files_rotated_without_sighup():
    with Env() as env:
        certs = os.path.join(env.fdir, "docker-certs")
        os.makedirs(certs)
        for src, dst in (("ca", "ca.pem"), ("client", "cert.pem"), ("client-key", "key.pem")):
            shutil.copy(A[src], os.path.join(certs, dst))
        proxy = TLSProxy(env.fake.sock).start(A)
        env.cleanups.append(lambda: proxy.stop())
        ids = env.start_new(2)
        r = env.register("--etcd-api", "v3", fake=False,
                         env={"DOCKER_HOST": f"tcp://127.0.0.1:{proxy.port}", "DOCKER_TLS_VERIFY": "1",
                              "DOCKER_CERT_PATH": certs})
        r.wait_log("in sync")
        env.converged("v3")
        # rewritten in place, one after the other (key first: the pair is
        # read together once both are in)
        with open(os.path.join(certs, "key.pem"), "w") as f:
            f.write(read(B["client-key"]))
        with open(os.path.join(certs, "cert.pem"), "w") as f:
            f.write(read(B["client"]))
        with open(os.path.join(certs, "ca.pem"), "w") as f:
            f.write(read(B["ca"]))
        got = wait_line(r, "info", "docker: credentials read again (changed): ", 10)
        assert os.path.join(certs, "cert.pem") in got[0], got
        # dockerd restarts on CA b: the event stream breaks, and everything
        # goes to it with the new files
        proxy.stop()
        proxy.start(B)
        env.fake.die(ids.pop(0))
        ids += env.start_new(2)
        env.converged("v3", what="Docker's containers through the rotated TLS files")
        assert not lines(r, "warn", "docker: client"), lines(r, "warn", "docker: client")
        r.stop()


suite.run()

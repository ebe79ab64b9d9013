"""register.service under a real systemd (252, Debian 12's): cpack builds
the .deb, systemd-nspawn boots a throwaway overlay of the cached Debian 12
root (scripts/nspawn-root.sh; the cache itself is never written), and
`dpkg -i` installs register in it.  register inside reaches a real etcd on
loopback (the container shares this machine's network namespace) and the
fake Docker API (tests/integration/fake_docker.py), whose unix socket is
bind-mounted at /run/docker.sock, Docker's default.

The container is booted with `systemd-nspawn -b --register=no --keep-unit`
(this machine has no system bus nor a systemd to register with) in cgroups
of its own, and every command inside runs through
`nsenter -t <its PID 1> -a`.  Everything is undone afterwards, also on
failure: the machine, its cgroups, /run/systemd/nspawn's entries for it,
the overlay and the temporary directories.

register-docker.service (register in a container) is tested in a second
machine that runs a real dockerd (Docker 26.1) under systemd: see the
comment above register_docker_unit_on_a_real_dockerd for what that takes.

  REGISTER_SYSTEMD_DEB=path   use a .deb built already (while iterating)
  test_systemd.py NAME...     only these steps (name boot_and_install_the_deb
                              too: every other step needs it)
"""
import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import REGISTER, SRC, Etcd, debian13, Suite, free_port, log, sh, tmpdir, wait_for  # noqa: E402
from fake_docker import FakeDocker  # noqa: E402
from sidmachine import cgroups_kill, cgroups_remove  # noqa: E402

SKIP = 77


def skip(why):
    print("skipped: " + why, file=sys.stderr)
    sys.exit(SKIP)


if os.geteuid() != 0:
    skip("needs root (systemd-nspawn, overlay mounts, cgroups)")
for tool in ("systemd-nspawn", "nsenter", "debootstrap", "dpkg", "cpack"):
    if not shutil.which(tool):
        skip(f"needs {tool} (scripts/install-deps.sh installs it)")
if "libasan" in subprocess.run(["ldd", REGISTER], capture_output=True, text=True).stdout:
    skip("in the sanitizer build: the normal build builds the .deb and tests the units")
if "overlay" not in open("/proc/filesystems").read():
    skip("needs overlayfs for a throwaway copy of the cached root")
if not os.access("/sys/fs/cgroup", os.W_OK):
    skip("needs a writable /sys/fs/cgroup for the container's cgroups")


def cgroup_roots():
    """The hierarchies nspawn uses: cgroup2 alone (unified), or the hybrid
    layout (name=systemd v1 plus cgroup2 at unified/)."""
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        return ["/sys/fs/cgroup"]
    roots = [os.path.join("/sys/fs/cgroup", h) for h in ("unified", "systemd")]
    return [r for r in roots if os.path.exists(os.path.join(r, "cgroup.procs"))]


class Machine:
    """A booted systemd in an overlay of the cached root."""

    def __init__(self, cache, binds=(), env=None, args=()):
        self.cache = cache
        self.args = list(args)
        self.extra_env = dict(env or {})
        self.dir = tmpdir("rsn")
        self.name = "regtest-" + os.path.basename(self.dir)[3:].lower().replace("_", "x")
        self.root = os.path.join(self.dir, "root")
        self.binds = list(binds)
        self.cgroups = [os.path.join(r, self.name) for r in cgroup_roots()]
        self.proc = None
        self.pid1 = None
        self.mounted = False

    def start(self, timeout=60):
        for d in ("upper", "work", "root"):
            os.makedirs(os.path.join(self.dir, d))
        sh("mount", "-t", "overlay", "overlay", "-o",
           f"lowerdir={self.cache},upperdir={self.dir}/upper,workdir={self.dir}/work", self.root)
        self.mounted = True
        for cg in self.cgroups:
            os.makedirs(cg, exist_ok=True)
        with open(os.path.join(self.dir, "owner"), "w") as f:
            f.write(f"{os.getpid()} {self.name}\n")
        cgs = self.cgroups

        def into_cgroups():
            # nspawn in cgroups of its own (--keep-unit: it stays where it
            # is started); cleanup() kills what is left there and removes them
            for cg in cgs:
                with open(os.path.join(cg, "cgroup.procs"), "w") as f:
                    f.write(str(os.getpid()))
            # this test killed outright: nspawn powers the container off
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        self.log = open(os.path.join(self.dir, "nspawn.log"), "ab")
        args = ["systemd-nspawn", "-D", self.root, "-M", self.name, "-b", "--register=no",
                "--keep-unit", "--console=passive", *self.args] + [f"--bind={b}" for b in self.binds]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_SOCKET", "LISTEN_"))}
        env.update(self.extra_env)
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
                                     preexec_fn=into_cgroups, start_new_session=True, env=env)

        def pid1():
            # nspawn's child forks the container's init and exits: wait for
            # the child that is PID 1 in a PID namespace of its own
            for t in os.listdir(f"/proc/{self.proc.pid}/task"):
                with open(f"/proc/{self.proc.pid}/task/{t}/children") as f:
                    for kid in f.read().split():
                        with open(f"/proc/{kid}/status") as st:
                            nspid = [l.split()[1:] for l in st if l.startswith("NSpid:")][0]
                        if len(nspid) == 2 and nspid[1] == "1":
                            return int(kid)
            return None
        self.pid1 = self.wait(pid1, timeout, "the container's PID 1")
        t0 = time.time()
        state = {}

        def booted():
            r = self.run("systemctl", "is-system-running", check=False)
            state["s"] = r.stdout.strip()
            # "offline": systemctl cannot reach systemd yet
            return state["s"] not in ("offline", "starting", "initializing", "")
        self.wait(booted, timeout, "systemd in the container to finish booting")
        assert state["s"] == "running", \
            (state["s"], self.run("systemctl", "--failed", "--no-pager", check=False).stdout)
        log(f"container {self.name}: systemd",
            self.run("systemctl", "--version").stdout.split()[1], f"booted in {time.time() - t0:.1f}s")
        return self

    def wait(self, pred, timeout, what):
        """wait_for, but a dead nspawn fails at once."""
        v = wait_for(lambda: self.proc.poll() is not None or pred(), timeout, interval=0.1, what=what)
        if self.proc.poll() is not None:
            raise AssertionError(f"systemd-nspawn exited ({self.proc.returncode}): {self.nspawn_log()}")
        return v

    def nspawn_log(self):
        with open(os.path.join(self.dir, "nspawn.log"), errors="replace") as f:
            return f.read()[-3000:]

    def run(self, *cmd, check=True, timeout=60, input=None):
        r = subprocess.run(["nsenter", "-t", str(self.pid1), "-a", *cmd], capture_output=True, text=True,
                           timeout=timeout, input=input)
        if check and r.returncode != 0:
            raise AssertionError(f"in the container, {' '.join(cmd)} failed ({r.returncode}):"
                                 f" {r.stdout.strip()} {r.stderr.strip()}")
        return r

    def write(self, path, text):
        """A file in the container (the overlay's upper layer, never the cache)."""
        full = os.path.join(self.root, path.lstrip("/"))
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w") as f:
            f.write(text)

    def show(self, unit, *props):
        out = self.run("systemctl", "show", unit, "-p", ",".join(props)).stdout
        return dict(l.split("=", 1) for l in out.splitlines() if "=" in l)

    @classmethod
    def reap_stale(cls):
        """Machines of earlier runs of this test that were killed before
        their cleanup (the owner process is gone): cleaned up now."""
        for d in os.listdir("/tmp"):
            owner = os.path.join("/tmp", d, "owner")
            if not d.startswith("rsn") or not os.path.exists(owner):
                continue
            try:
                with open(owner) as f:
                    pid, name = f.read().split()
                os.kill(int(pid), 0)
                continue  # still running: not ours to touch
            except ProcessLookupError:
                pass
            except (OSError, ValueError):
                continue
            log("cleaning up", name, "left by an earlier run (pid", pid + ")")
            m = cls.__new__(cls)
            m.dir, m.name, m.root, m.proc = os.path.join("/tmp", d), name, os.path.join("/tmp", d, "root"), None
            m.cgroups = [os.path.join(r, name) for r in cgroup_roots()]
            m.mounted = os.path.ismount(m.root)
            m.cleanup()

    def cleanup(self):
        if self.proc and self.proc.poll() is None:
            # SIGTERM: nspawn asks the container's systemd to power off
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                log("nspawn did not stop in 30 s: killing the container's cgroups")
        # whatever is still in our cgroups (all of it, if nspawn hung)
        cgroups_kill(self.cgroups, 50)
        if self.proc:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        cgroups_remove(self.cgroups)
        # /run is no tmpfs here: nspawn leaves its state in /run/systemd/nspawn
        base = "/run/systemd/nspawn"
        if self.mounted:
            # nspawn's lock on the root directory: locks/inode-<dev>:<ino>
            st = os.stat(self.root)
            try:
                os.unlink(os.path.join(base, "locks", f"inode-{st.st_dev}:{st.st_ino}"))
            except FileNotFoundError:
                pass
        for sub in ("propagate", "unix-export", "locks", "incoming"):
            shutil.rmtree(os.path.join(base, sub, self.name), ignore_errors=True)
        for sub in ("propagate", "unix-export", "locks", "incoming", ""):
            try:
                os.rmdir(os.path.join(base, sub))
            except OSError:
                pass  # not empty (another machine) or gone
        if self.mounted:
            if subprocess.run(["umount", self.root], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", self.root], capture_output=True)
            self.mounted = False
        shutil.rmtree(self.dir, ignore_errors=True)


# ctest's timeout and ^C: run the cleanups (Suite.run's finally) on the way out
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
Machine.reap_stale()
suite = Suite()
HOST_IP = "10.1.2.3"  # only ever written into keys
st = {}


def build_deb():
    if os.environ.get("REGISTER_SYSTEMD_DEB"):  # a .deb built already (while iterating on this test)
        return os.environ["REGISTER_SYSTEMD_DEB"]
    b = tmpdir("rsb")
    suite.defer(lambda: shutil.rmtree(b, ignore_errors=True))
    sh("cmake", "-S", SRC, "-B", b, "-DCMAKE_INSTALL_PREFIX=/usr", "-DREGISTER_TESTS=OFF",
       "-DCMAKE_BUILD_TYPE=Release", timeout=300)
    sh("cmake", "--build", b, "-j2", timeout=900)
    sh("cpack", "-G", "DEB", cwd=b, timeout=300)
    debs = [f for f in os.listdir(b) if f.endswith(".deb")]
    assert len(debs) == 1, debs
    return os.path.join(b, debs[0])


def settings(etcd_url, host_ip=HOST_IP, extra=""):
    """/etc/default/register as an operator writes it (the shipped one with
    HOST_IP set and this test's etcd)."""
    with open(os.path.join(SRC, "packaging", "default")) as f:
        text = f.read()
    text = re.sub(r"(?m)^#?HOST_IP=.*$", f"HOST_IP={host_ip}", text, count=1)
    text = re.sub(r"(?m)^ETCD_ENDPOINT=.*$", f"ETCD_ENDPOINT={etcd_url}", text)
    return text + extra


def need(*what):
    """The state earlier steps left: each step below builds on those before."""
    missing = [w for w in what if w not in st]
    if missing:
        raise AssertionError(f"not run: an earlier step failed (no {', '.join(missing)})")
    return [st[w] for w in what]


def status_text(m):
    return m.show("register", "StatusText")["StatusText"]


def journal(m, *args):
    return m.run("journalctl", "--no-pager", "-o", "cat", *args, check=False).stdout


def journal_with(m, text, *args, timeout=15):
    """The journal (journalctl ARGS) once it holds text.  A unit's output
    reaches journald through a stream that it reads when it gets to it: a
    line can be missing for a moment after the process that wrote it has
    exited or after the state it led to is visible."""
    out = ""

    def has():
        nonlocal out
        out = journal(m, *args)
        return text in out
    try:
        wait_for(has, timeout, interval=0.2, what=f"{text!r} in journalctl {' '.join(args)}")
    except AssertionError as e:
        raise AssertionError(f"{e}\n{out[-3000:]}") from None
    return out


@suite.test
def boot_and_install_the_deb():
    t0 = time.time()
    deb = build_deb()
    log(f".deb built in {time.time() - t0:.0f}s")
    cache = sh(os.path.join(SRC, "scripts", "nspawn-root.sh"), timeout=900).splitlines()[-1]
    st.update(deb=deb, cache=cache)
    etcd = Etcd().start()
    suite.defer(etcd.cleanup)
    st["etcd"] = etcd
    fdir = tmpdir("rsf")
    suite.defer(lambda: shutil.rmtree(fdir, ignore_errors=True))
    fake = FakeDocker(os.path.join(fdir, "d.sock")).start()
    suite.defer(fake.stop)
    st["c1"] = fake.add(name="web", ports=[("80/tcp", [("0.0.0.0", "32801")])])
    st["c2"] = fake.add(name="db", ports=[("5432/tcp", [("127.0.0.1", "32802")])])
    m = Machine(cache, binds=[f"{fake.sock}:/run/docker.sock"])
    suite.defer(m.cleanup)
    m.start()
    st.update(m=m, etcd=etcd, fake=fake)
    shutil.copy(deb, os.path.join(m.root, "root", "register.deb"))
    # postinst enables and starts register.service: with the shipped
    # /etc/default/register (no HOST_IP) that start fails, and says why
    m.run("dpkg", "-i", "/root/register.deb", timeout=120)
    assert m.run("register", "--version").stdout.strip().startswith("register ")
    assert m.run("systemctl", "is-enabled", "register").stdout.strip() == "enabled"
    assert m.run("systemctl", "is-enabled", "register-docker", check=False).stdout.strip() == "disabled"
    s = m.show("register", "ActiveState", "SubState", "ExecMainStatus", "NRestarts")
    assert s == {"ActiveState": "failed", "SubState": "failed", "ExecMainStatus": "2", "NRestarts": "0"}, s
    journal_with(m, "HOST_IP", "-u", "register")
    m.run("systemctl", "reset-failed", "register")
    st["installed"] = True


@suite.test
def empty_host_ip_fails_clearly_and_is_not_restarted():
    m, etcd, _ = need("m", "etcd", "installed")
    m.write("/etc/default/register", settings(etcd.url, host_ip=""))
    r = m.run("systemctl", "start", "register", check=False, timeout=30)
    assert r.returncode != 0, r
    # Restart=on-failure would show as activating/auto-restart right away:
    # RestartPreventExitStatus=2 keeps a configuration error down
    s = m.show("register", "ActiveState", "SubState", "Result", "ExecMainStatus", "NRestarts")
    assert s == {"ActiveState": "failed", "SubState": "failed", "Result": "exit-code",
                 "ExecMainStatus": "2", "NRestarts": "0"}, s
    lines = [l for l in journal_with(m, "HOST_IP", "-t", "register").splitlines() if "HOST_IP" in l]
    log("register said:", lines[-1])
    # where HOST_IP was expected: the option, and the unit's environment file
    assert "--host-ip" in lines[-1] and "/etc/default/register" in lines[-1], lines[-1]
    time.sleep(6)  # RestartSec=5: still no restart after it
    s = m.show("register", "ActiveState", "NRestarts")
    assert s == {"ActiveState": "failed", "NRestarts": "0"}, s
    m.run("systemctl", "reset-failed", "register")


# The shipped unit says WatchdogSec=60; the test lowers it to 3 s with a
# drop-in so that the hung-register check takes seconds, not a minute.
# Everything else is the shipped unit.
DROPIN = "[Service]\n# test only: the shipped unit has WatchdogSec=60\nWatchdogSec=3\n"


@suite.test
def start_returns_after_ready_with_a_status():
    m, etcd, fake, _ = need("m", "etcd", "fake", "installed")
    m.write("/etc/default/register", settings(etcd.url))
    m.write("/etc/systemd/system/register.service.d/10-test-watchdog.conf", DROPIN)
    m.run("systemctl", "daemon-reload")
    opens = fake.stream_opens
    lists = sum(1 for meth, p in fake.requests if "/containers/json" in p)
    t0 = time.time()
    m.run("systemctl", "start", "register", timeout=120)
    took = time.time() - t0
    # Type=notify: start returns once READY=1 came, and not before; by then
    # (the READY=1 contract) Docker's containers were listed and the event
    # stream was open
    s = m.show("register", "ActiveState", "SubState", "StatusText", "WatchdogUSec", "NRestarts")
    assert s["ActiveState"] == "active" and s["SubState"] == "running", s
    assert s["WatchdogUSec"] == "3s", s  # the drop-in is in effect
    assert s["StatusText"], s
    assert fake.stream_opens > opens, "READY=1 before the event stream was open"
    assert sum(1 for meth, p in fake.requests if "/containers/json" in p) > lists, \
        "READY=1 before the containers were listed"
    log(f"systemctl start returned after {took:.2f}s; STATUS={s['StatusText']!r}")
    st["started"] = True


@suite.test
def status_shows_in_sync_and_the_host_ip_comes_from_the_environment_file():
    m, etcd, _ = need("m", "etcd", "started")
    want = "in sync: 2 keys from 2 containers"
    wait_for(lambda: status_text(m) == want, 20, interval=0.2, what=f"STATUS={want!r}")
    out = m.run("systemctl", "status", "--no-pager", "register", check=False).stdout
    assert f'Status: "{want}"' in out, out
    # HOST_IP=10.1.2.3 only in /etc/default/register (the unit's
    # EnvironmentFile); the keys carry it
    env = m.run("cat", "/etc/environment", check=False).stdout
    assert "HOST_IP" not in env, env
    keys = etcd.tree("/registered")
    assert sorted(keys) == sorted(f"/registered/{HOST_IP}/bbx/{c}" for c in (st["c1"], st["c2"])), keys


@suite.test
def logs_are_tagged_register():
    m, _ = need("m", "started")
    journal_with(m, "in sync: 2 keys from 2 containers", "-t", "register")
    assert "in sync" not in journal(m, "-t", "sh")


def exposure(m, unit):
    """systemd-analyze security's overall exposure level for unit (0 to 10)."""
    out = m.run("systemd-analyze", "security", "--no-pager", unit).stdout
    return float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", out).group(1))


@suite.test
def register_runs_sandboxed():
    """The units' sandboxing (NoNewPrivileges=, ProtectSystem=strict, ...) is
    in force, and register, running under it, is in sync (the steps
    above); systemd-analyze security scores both units (9.6 without it)."""
    m, _ = need("m", "started")
    s = m.show("register", "ActiveState", "NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp",
               "MemoryDenyWriteExecute", "RestrictAddressFamilies", "SystemCallArchitectures", "MainPID")
    assert s["ActiveState"] == "active", s
    assert (s["NoNewPrivileges"], s["ProtectSystem"], s["ProtectHome"], s["PrivateTmp"],
            s["MemoryDenyWriteExecute"]) == ("yes", "strict", "read-only", "yes", "yes"), s
    assert sorted(s["RestrictAddressFamilies"].split()) == ["AF_INET", "AF_INET6", "AF_NETLINK", "AF_UNIX"], s
    # in the running process: no new privileges, a read-only /etc and /usr
    status = m.run("cat", f"/proc/{s['MainPID']}/status").stdout
    assert re.search(r"(?m)^NoNewPrivs:\s+1$", status), status
    r = m.run("nsenter", "-t", s["MainPID"], "-m", "sh", "-c", "touch /etc/register/x; touch /usr/x",
              check=False)
    assert r.returncode != 0 and r.stderr.count("Read-only file system") == 2, r
    scores = {u: exposure(m, u) for u in ("register.service", "register-docker.service")}
    log("systemd-analyze security:", scores)
    for u, v in scores.items():
        assert v <= 2.5, f"{u}: exposure {v}, more than the 2.0 the unit was written for"


RELOADED = """-- test policy: one key per container name, under another prefix
local policy = {}
function policy.prefix(host) return "/reloaded/" .. host.ip end
function policy.records(c, host)
  if #c.ports == 0 then return nil end
  return { [policy.prefix(host) .. "/" .. c.name] = host.ip .. ":" .. c.ports[1].host_port }
end
return policy
"""


@suite.test
def reload_rereads_the_policy():
    m, etcd, _ = need("m", "etcd", "started")
    pid = m.show("register", "MainPID")["MainPID"]
    shipped = m.run("cat", "/etc/register/policy.lua").stdout
    m.write("/etc/register/policy.lua", RELOADED)
    m.run("systemctl", "reload", "register")
    want = {f"/reloaded/{HOST_IP}/web": f"{HOST_IP}:32801", f"/reloaded/{HOST_IP}/db": f"{HOST_IP}:32802"}
    wait_for(lambda: etcd.tree("/reloaded") == want, 20, interval=0.2, what="the reloaded policy's keys")
    wait_for(lambda: etcd.tree("/registered") == {}, 20, interval=0.2, what="the old policy's keys to go")
    s = m.show("register", "MainPID", "ActiveState", "NRestarts")
    assert s == {"MainPID": pid, "ActiveState": "active", "NRestarts": "0"}, s  # same process
    wait_for(lambda: status_text(m) == "in sync: 2 keys from 2 containers", 20, interval=0.2,
             what="in sync after the reload")
    # back to the shipped policy, for the rest
    m.write("/etc/register/policy.lua", shipped)
    m.run("systemctl", "reload", "register")
    wait_for(lambda: len(etcd.tree("/registered")) == 2 and etcd.tree("/reloaded") == {}, 20, interval=0.2,
             what="the shipped policy's keys again")


WATCH_RENDER = """return { render = function(kv, ctx)
  local keys = {}
  for k in pairs(kv) do keys[#keys + 1] = k end
  table.sort(keys)
  return "%s " .. ctx.prefix .. "\\n" .. table.concat(keys, "\\n") .. "\\n"
end }
"""
WATCH_RELOAD = "#!/bin/sh\necho reload >> /var/lib/register-watch-reloads\n"


def watch_settings(etcd_url):
    """/etc/default/register-watch as an operator writes it: the shipped
    one with its settings filled in."""
    with open(os.path.join(SRC, "packaging", "default-watch")) as f:
        text = f.read()
    for k, v in {"REGISTER_WATCH_PREFIX": "/registered",
                 "REGISTER_WATCH_RENDER": "/etc/register/watch.lua",
                 "REGISTER_WATCH_OUT": "/etc/haproxy/backends.txt",
                 "REGISTER_WATCH_CHECK": "/bin/grep -q /registered/ %s",
                 "REGISTER_WATCH_RELOAD": "/usr/local/bin/test-lb-reload",
                 "ETCD_ENDPOINT": etcd_url}.items():
        text, n = re.subn(rf"(?m)^#?{k}=.*$", f"{k}={v}", text, count=1)
        assert n == 1, f"{k} is not in packaging/default-watch"
    return text


@suite.test
def register_watch_unit_renders_checks_and_reloads():
    """register-watch.service as shipped (issue 20): disabled by the .deb;
    enabled with /etc/default/register-watch, its start returns once the
    file is rendered (Type=notify), a change in etcd is rendered, checked
    and reloaded under the unit's sandbox, `systemctl reload` reads the
    renderer again in the same process, and it stops cleanly."""
    m, etcd, _ = need("m", "etcd", "started")
    assert m.run("systemctl", "is-enabled", "register-watch", check=False).stdout.strip() == "disabled"
    m.run("mkdir", "-p", "/etc/haproxy")
    m.write("/etc/register/watch.lua", WATCH_RENDER % "#")
    m.write("/usr/local/bin/test-lb-reload", WATCH_RELOAD)
    m.run("chmod", "755", "/usr/local/bin/test-lb-reload")
    m.write("/etc/default/register-watch", watch_settings(etcd.url))
    m.run("systemctl", "enable", "--now", "register-watch", timeout=60)
    s = m.show("register-watch", "ActiveState", "SubState", "MainPID")
    assert s["ActiveState"] == "active" and s["SubState"] == "running", s

    def rendered():
        return m.run("cat", "/etc/haproxy/backends.txt", check=False).stdout

    def reloads():
        return m.run("cat", "/var/lib/register-watch-reloads", check=False).stdout.count("reload")
    keys = sorted(etcd.tree("/registered"))
    assert len(keys) == 2, keys
    # READY=1 came after the first render: the file is there at once
    assert rendered() == "# /registered\n" + "\n".join(keys) + "\n", rendered()
    assert reloads() == 1
    extra = "/registered/10.9.9.9/watch::test/x"
    etcd.v2(extra, method="PUT", data=b"value=v")
    try:
        wait_for(lambda: extra in rendered() and reloads() == 2, 20, interval=0.2,
                 what="the new key rendered and haproxy reloaded")
        m.write("/etc/register/watch.lua", WATCH_RENDER % "##")
        m.run("systemctl", "reload", "register-watch")
        wait_for(lambda: rendered().startswith("## /registered\n") and reloads() == 3, 20, interval=0.2,
                 what="the renderer read again on reload")
    except AssertionError as e:
        raise AssertionError(f"{e}\n" + journal(m, "-u", "register-watch")[-3000:])
    finally:
        etcd.v2(extra, method="DELETE")
    assert m.show("register-watch", "MainPID")["MainPID"] == s["MainPID"]  # the same process
    m.run("systemctl", "disable", "--now", "register-watch", timeout=60)
    s = m.show("register-watch", "ActiveState", "Result", "ExecMainStatus")
    assert s == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}, s


@suite.test
def a_hung_register_is_killed_by_the_watchdog_and_restarted():
    m, etcd, _ = need("m", "etcd", "started")
    s = m.show("register", "MainPID", "NRestarts")
    pid, restarts = s["MainPID"], int(s["NRestarts"])
    assert pid != "0", s  # (kill -STOP 0 would stop this test's own process group)
    m.run("kill", "-STOP", pid)
    t0 = time.time()
    # a key lost meanwhile: only a register that runs again puts it back
    key = f"/registered/{HOST_IP}/bbx/{st['c1']}"
    etcd.v2(key, method="DELETE")

    def restarted():
        s = m.show("register", "MainPID", "NRestarts", "ActiveState")
        return s["ActiveState"] == "active" and int(s["NRestarts"]) > restarts and s["MainPID"] != pid
    wait_for(restarted, 30, interval=0.2, what="systemd to kill and restart the stopped register")
    log(f"restarted {time.time() - t0:.1f}s after SIGSTOP")
    journal_with(m, "Watchdog timeout", "-u", "register")
    wait_for(lambda: key in etcd.tree("/registered"), 20, interval=0.2, what="the new register to sync")
    wait_for(lambda: status_text(m) == "in sync: 2 keys from 2 containers", 20, interval=0.2,
             what="in sync after the restart")


@suite.test
def stop_exits_cleanly_within_the_stop_timeout():
    m, _ = need("m", "started")
    limit = m.show("register", "TimeoutStopUSec")["TimeoutStopUSec"]
    t0 = time.time()
    m.run("systemctl", "stop", "register", timeout=60)
    took = time.time() - t0
    s = m.show("register", "ActiveState", "Result", "ExecMainCode", "ExecMainStatus")
    # ExecMainCode 1 is CLD_EXITED: it exited by itself, status 0 (a stop
    # that ran into the timeout ends with Result=timeout and SIGKILL)
    assert s == {"ActiveState": "inactive", "Result": "success", "ExecMainCode": "1",
                 "ExecMainStatus": "0"}, s
    log(f"systemctl stop took {took:.2f}s (TimeoutStopSec {limit})")
    assert took < 30, took


@suite.test
def etcd_down_at_boot_does_not_block_the_start():
    """READY=1 means: policy loaded, Docker's containers listed and its event
    stream open, whatever etcd does; the sync state is in STATUS=."""
    m, _ = need("m", "installed")
    port = free_port()  # nothing listens there yet
    m.write("/etc/default/register", settings(f"http://127.0.0.1:{port}"))
    t0 = time.time()
    # the unit's start timeout is 90 s; 20 s is plenty for Docker
    r = m.run("timeout", "20", "systemctl", "start", "register", check=False, timeout=60)
    took = time.time() - t0
    s = m.show("register", "ActiveState", "SubState", "StatusText")
    log(f"etcd down: systemctl start returned {r.returncode} after {took:.1f}s; {s}")
    if r.returncode != 0:
        m.run("systemctl", "stop", "register", check=False)
    assert r.returncode == 0, f"systemctl start blocked while etcd was down ({took:.1f}s): {s}"
    assert s["ActiveState"] == "active", s
    # the sync state, naming etcd (say "waiting for etcd: ..."), not "in sync"
    assert "etcd" in s["StatusText"] and not s["StatusText"].startswith("in sync"), s
    e2 = Etcd(client_port=port).start()
    suite.defer(e2.cleanup)
    want = "in sync: 2 keys from 2 containers"
    wait_for(lambda: status_text(m) == want, 60, interval=0.2, what=f"STATUS={want!r} once etcd is up")
    assert len(e2.tree("/registered")) == 2
    m.run("systemctl", "stop", "register")


def enabled(m, unit):
    return m.run("systemctl", "is-enabled", unit, check=False).stdout.strip()


@suite.test
def remove_and_reinstall_keep_the_admins_choices():
    """dpkg -r masks nothing (debhelper's scripts since 13.11) and a
    reinstall enables only what the admin had enabled: both units as they
    were, the other way round from the package's defaults; so too after a
    removal by the 0.1.0 .deb, whose postrm masked both."""
    m, _ = need("m", "installed")
    m.run("systemctl", "disable", "register")
    m.run("systemctl", "enable", "register-docker")
    for old_postrm_masks in (False, True):
        m.run("dpkg", "-r", "register", timeout=120)
        if old_postrm_masks:
            m.run("env", "DPKG_MAINTSCRIPT_PACKAGE=register", "DPKG_MAINTSCRIPT_NAME=postrm",
                  "deb-systemd-helper", "mask", "register.service", "register-docker.service")
        masks = m.run("sh", "-c", "ls -l /etc/systemd/system/register*.service 2>/dev/null",
                      check=False).stdout
        assert ("/dev/null" in masks) == old_postrm_masks, masks
        m.run("dpkg", "-i", "/root/register.deb", timeout=120)
        got = (enabled(m, "register"), enabled(m, "register-docker"))
        assert got == ("disabled", "enabled"), (old_postrm_masks, got)
        # a disabled register.service is not started by the postinst
        assert m.show("register", "ActiveState")["ActiveState"] == "inactive"
    # back to the package's defaults
    m.run("systemctl", "disable", "register-docker")
    m.run("systemctl", "enable", "register")
    m.run("dpkg", "-r", "register", timeout=120)
    m.run("dpkg", "-i", "/root/register.deb", timeout=120)
    assert (enabled(m, "register"), enabled(m, "register-docker")) == ("enabled", "disabled")
    m.run("systemctl", "stop", "register")



# ---- register-docker.service: register in a container, on a real dockerd
# inside a second machine.  containerd, runc, docker-init and the docker
# CLI are this machine's (Debian 12's docker.io, containerd, runc), dockerd
# is Docker 26.1 (Debian 13's, from scripts/fetch-debian13.sh's cache, as
# the engine matrix uses it), all bind-mounted; the root has their
# libraries.  What a dockerd needs in an nspawn machine:
# - a cgroup2 hierarchy of its own (SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1): in
#   the hybrid layout nspawn mounts the v1 controllers read-only, and runc
#   cannot make a container's cgroups there;
# - CAP_NET_ADMIN, which nspawn drops without --private-network: without it
#   "failed to create default sandbox: operation not permitted" (Debian
#   12's dockerd 20.10 failed the same way before this was granted; it was
#   not tried with it);
# - the keyring system calls (runc joins a session keyring) and bpf (runc's
#   cgroup2 device filter), which nspawn's seccomp filter refuses.
# dockerd runs with --bridge=none and
# --iptables=false: it shares this machine's network namespace and must not
# touch docker0 or the firewall; containers use the host network (as
# register-docker.service does), so they publish no ports and the test's
# policy registers containers by name.
DOCKER_BINARIES = ["/usr/bin/docker", "/usr/bin/containerd", "/usr/bin/containerd-shim-runc-v2", "/usr/sbin/runc",
                   "/usr/bin/docker-init"]
DOCKER_UNIT = """[Unit]
Description=Docker (binaries bind-mounted from the test's host): no bridge, no iptables
[Service]
Type=notify
ExecStart=/usr/sbin/dockerd -H unix:///run/docker.sock --bridge=none --iptables=false --ip6tables=false \\
  --storage-driver=vfs
[Install]
WantedBy=multi-user.target
"""
BY_NAME = """-- test policy: every running container, by name
local policy = {}
function policy.prefix(host) return "/bydocker/" .. host.ip end
function policy.records(c, host)
  return { [policy.prefix(host) .. "/%s" .. c.name] = c.image }
end
return policy
"""


@suite.test
def register_docker_unit_on_a_real_dockerd():
    missing = [b for b in DOCKER_BINARIES if not os.path.exists(b)]
    assert not missing, f"no {missing}: scripts/install-deps.sh installs docker.io"
    deb, cache, etcd = need("deb", "cache", "etcd")
    binds = [f"{b}:{b}" for b in DOCKER_BINARIES] + [
        debian13("docker.io/usr/sbin/dockerd") + ":/usr/sbin/dockerd",
        debian13("docker.io/usr/sbin/docker-proxy") + ":/usr/sbin/docker-proxy"]
    m = Machine(cache, binds=binds,
                args=["--capability=CAP_NET_ADMIN", "--system-call-filter=add_key keyctl request_key bpf"],
                env={"SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"})
    suite.defer(m.cleanup)
    m.start()
    shutil.copy(deb, os.path.join(m.root, "root", "register.deb"))
    m.run("dpkg", "-i", "/root/register.deb", timeout=120)
    m.run("systemctl", "disable", "--now", "register")  # one or the other, says the unit
    m.write("/etc/systemd/system/docker.service", DOCKER_UNIT)
    m.run("systemctl", "daemon-reload")
    m.run("systemctl", "start", "docker", timeout=120)
    log("dockerd in the machine:", m.run("docker", "version", "--format", "{{.Server.Version}}").stdout.strip())
    # images: a busybox one for a test container, and register's from the
    # repository's Dockerfile on a base made from the machine's own root
    # (it has register's libraries; no registry is reachable here)
    bb = os.path.join(m.root, "root", "bb")
    os.makedirs(os.path.join(bb, "bin"))
    shutil.copy("/bin/busybox", os.path.join(bb, "bin", "busybox"))
    for a in ("sh", "sleep"):
        os.symlink("busybox", os.path.join(bb, "bin", a))
    m.run("sh", "-c", "tar -C /root/bb -c . | docker import -c 'CMD [\"/bin/sleep\",\"3600\"]' - bb:latest")
    web = m.run("docker", "run", "-d", "--net", "host", "--name", "web", "bb").stdout.strip()
    ctx = os.path.join(m.root, "root", "ctx")
    os.makedirs(os.path.join(ctx, "build"))
    shutil.copy(os.path.join(SRC, "Dockerfile"), ctx)
    shutil.copytree(os.path.join(SRC, "lua"), os.path.join(ctx, "lua"))
    shutil.copy(os.path.join(m.root, "usr", "bin", "register"), os.path.join(ctx, "build", "register"))
    shutil.copy(os.path.join(m.root, "usr", "libexec", "register", "register-worker"),
                os.path.join(ctx, "build", "register-worker"))
    t0 = time.time()
    excl = " ".join(f"--exclude=./{d}" for d in (
        "proc", "sys", "dev", "run", "tmp", "root", "var/lib/docker", "var/cache", "var/lib/apt",
        "usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/zoneinfo", "usr/bin/register",
        "usr/share/register"))
    m.run("sh", "-c", f"cd / && tar -c {excl} . 2>/dev/null | docker import - register-test-base", timeout=300)
    m.run("sh", "-c", "cd /root/ctx && DOCKER_BUILDKIT=0 docker build -q --network host "
          "--build-arg BASE=register-test-base -t register:latest .", timeout=600)
    log(f"register:latest built in the machine in {time.time() - t0:.0f}s")

    ip = "10.1.2.4"
    m.write("/etc/default/register", settings(etcd.url, host_ip=ip))
    m.write("/etc/register/policy.lua", BY_NAME % "")
    m.run("systemctl", "start", "register-docker", timeout=120)
    want = {f"/bydocker/{ip}/web": "bb", f"/bydocker/{ip}/register": "register:latest"}
    try:
        wait_for(lambda: etcd.tree("/bydocker") == want, 60, interval=0.2,
                 what="register in its container to register web and itself")
    except AssertionError as e:
        raise AssertionError(f"{e}: {etcd.tree('/bydocker')}\n" + journal(m, "-u", "register-docker")[-3000:])
    # the lines follow etcd's answers, and reach the journal through
    # dockerd's log driver: they may come a moment after the keys (CI saw the
    # keys in etcd and no line yet).  "in sync" is said at info once, when
    # first reached: register may list itself after web's key is written
    # (CI saw "in sync: 1 keys from 1 containers", then its own key), so the
    # count in that line is not asserted
    journal_with(m, f"registered key=/bydocker/{ip}/register ", "-t", "register")
    journal_with(m, "in sync: ", "-t", "register")
    # reload: docker kill -s HUP, the new policy's names
    m.write("/etc/register/policy.lua", BY_NAME % "v2/")
    m.run("systemctl", "reload", "register-docker")
    want2 = {k.replace(f"/{ip}/", f"/{ip}/v2/"): v for k, v in want.items()}
    wait_for(lambda: etcd.tree("/bydocker") == want2, 30, interval=0.2, what="the reloaded policy's keys")
    # Restart=always: the container killed, the unit runs it again
    first = m.run("docker", "inspect", "-f", "{{.Id}}", "register").stdout.strip()
    m.run("docker", "kill", "register")

    def again():
        r = m.run("docker", "inspect", "-f", "{{.Id}} {{.State.Running}}", "register", check=False)
        return r.returncode == 0 and r.stdout.split() != [first, "true"] and r.stdout.split()[1] == "true"
    wait_for(again, 30, interval=0.5, what="register-docker to run register again")
    assert int(m.show("register-docker", "NRestarts")["NRestarts"]) >= 1
    wait_for(lambda: etcd.tree("/bydocker") == want2, 30, interval=0.2, what="the new container to sync")
    # stop: docker stop, register exits 0, --rm removes the container
    t0 = time.time()
    m.run("systemctl", "stop", "register-docker", timeout=60)
    s = m.show("register-docker", "ActiveState", "Result", "ExecMainStatus")
    assert s == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}, s
    assert m.run("docker", "ps", "-aq", "--filter", "name=^register$").stdout.strip() == ""
    log(f"register-docker stopped in {time.time() - t0:.1f}s")
    assert m.run("docker", "inspect", "-f", "{{.State.Running}}", web).stdout.strip() == "true"
    m.run("systemctl", "stop", "docker", timeout=60)


suite.run()

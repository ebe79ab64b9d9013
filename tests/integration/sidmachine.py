"""Today's engines (Docker 28, podman 5, etcd 3.5 from Debian unstable) in a
systemd-nspawn machine: they need a newer glibc than this machine's.

scripts/nspawn-sid.sh builds the root once (cached); each test process that
asks for a sid engine or etcd gets one machine, booted lazily from a
throwaway overlay of that root (the cache is never written) and gone when
the process exits (atexit; also after a failed test).  The machine:

- shares this machine's network namespace (no --private-network), so etcd
  and Docker's published ports (docker-proxy) are on this machine's
  loopback; it keeps CAP_NET_ADMIN (which nspawn drops otherwise) for
  dockerd's bridge and podman's network namespace;
- sees this machine's /tmp at /tmp (a bind mount, made a slave: what the
  machine mounts there stays in it), where the tests keep
  their directories: sockets, data directories and configuration have the
  same paths on both sides, and register on the host reaches the engine's
  API socket through it;
- runs nothing but a `sleep` as PID 2 (--as-pid2: nspawn's stub init is PID
  1 and reaps orphans); the engines and etcd are started into it with
  `nsenter -t <PID 1> -a` (MachineProcess: a signal goes to the process
  inside, not to nsenter);
- has a cgroup2 hierarchy of its own (SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1)
  and the keyring system calls and bpf that runc needs (see
  tests/integration/test_systemd.py's dockerd machine).

This machine has no systemd to register machines with (nspawn runs with
--register=no --keep-unit), so `machinectl list` never shows them: the
machine lives in cgroups of its own (/sys/fs/cgroup/*/regsid-*), and
cleanup() kills whatever is left there, removes them, unmounts the overlay
and deletes the directory.  Machines of a test process that was killed
before its cleanup (its owner pid gone) are cleaned up by the next one.
"""
import atexit
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time

SRC = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SID_ROOT = os.environ.get("REGISTER_SID_ROOT", "/var/cache/register-test/nspawn-sid")
# the machines' directories (not in /tmp, which the machines see)
BASE = os.environ.get("REGISTER_SID_MACHINES", "/var/tmp/register-test-sid")
PREFIX = "rsid"


def log(*a):
    print("[test]", *a, file=sys.stderr, flush=True)


def cgroups_kill(cgroups, rounds):
    """SIGKILL every process in the cgroup trees (a machine's engines,
    containers and shims), again until they are empty or `rounds` tries
    (0.1 s apart) are spent."""
    for _ in range(rounds):
        pids = set()
        for cg in cgroups:
            for d, _, files in os.walk(cg):
                if "cgroup.procs" in files:
                    try:
                        with open(os.path.join(d, "cgroup.procs")) as f:
                            pids |= {int(p) for p in f.read().split()}
                    except OSError:
                        pass
        if not pids:
            return
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def cgroups_remove(cgroups):
    """Removes the cgroup trees, deepest first; a directory still busy
    with a process on its way out is tried again for 2 s."""
    for cg in cgroups:
        for d, _, _ in sorted(os.walk(cg), key=lambda w: -w[0].count("/")):
            for _ in range(20):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != 16:  # EBUSY: a process still leaving
                        log("cleanup: rmdir", d, e)
                        break
                    time.sleep(0.1)


class Unavailable(Exception):
    """A prerequisite of the sid machine is missing (the message says which)."""


def prerequisites():
    """None when a sid machine can run here, else why not."""
    if os.geteuid() != 0:
        return "needs root (systemd-nspawn, overlay mounts, cgroups)"
    for tool in ("systemd-nspawn", "nsenter", "debootstrap"):
        if not shutil.which(tool):
            return f"needs {tool} (scripts/install-deps.sh installs it)"
    if "overlay" not in open("/proc/filesystems").read():
        return "needs overlayfs for a throwaway copy of the cached sid root"
    if not os.access("/sys/fs/cgroup", os.W_OK):
        return "needs a writable /sys/fs/cgroup for the machine's cgroups"
    return None


def sid_root():
    """The cached root, built on first use (a few minutes, once)."""
    t0 = time.time()
    r = subprocess.run([os.path.join(SRC, "scripts", "nspawn-sid.sh"), SID_ROOT], capture_output=True,
                       text=True, timeout=1800)
    if r.returncode != 0:
        raise AssertionError("scripts/nspawn-sid.sh failed: " + r.stderr[-3000:])
    if time.time() - t0 > 5:
        log(f"sid root built in {time.time() - t0:.0f}s:", r.stderr.strip().replace("\n", "; "))
    return r.stdout.splitlines()[-1]


def cgroup_roots():
    """The hierarchies nspawn uses: cgroup2 alone (unified), or the hybrid
    layout (name=systemd v1 plus cgroup2 at unified/)."""
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        return ["/sys/fs/cgroup"]
    roots = [os.path.join("/sys/fs/cgroup", h) for h in ("unified", "systemd")]
    return [r for r in roots if os.path.exists(os.path.join(r, "cgroup.procs"))]


def children(pid):
    kids = []
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/children") as f:
                kids += [int(k) for k in f.read().split()]
    except (FileNotFoundError, ProcessLookupError):
        pass
    return kids


class MachineProcess(subprocess.Popen):
    """A process started in the machine through nsenter, which forks (it
    enters a PID namespace) and waits for it, passing its exit status on.
    Signals go to the process inside: nsenter passes none on.  pid stays
    nsenter's (the process group leader, for os.killpg)."""

    def inner(self, timeout=5):
        deadline = time.time() + timeout
        while self.poll() is None:
            kids = children(self.pid)
            if kids:
                return kids[0]
            if time.time() > deadline:
                break
            time.sleep(0.01)
        return None

    def send_signal(self, sig):
        pid = self.inner()
        if pid is None:
            return super().send_signal(sig)
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


class SidMachine:
    def __init__(self):
        self.cache = sid_root()
        self.dir = tempfile_dir()
        self.name = "regsid-" + os.path.basename(self.dir)[len(PREFIX):].lower().replace("_", "x")
        self.root = os.path.join(self.dir, "root")
        self.cgroups = [os.path.join(r, self.name) for r in cgroup_roots()]
        self.proc = None
        self.pid1 = None
        self.mounted = False

    def versions(self):
        with open(self.cache.rstrip("/") + ".versions") as f:
            return dict(line.split(None, 1) for line in f.read().splitlines() if line.strip())

    def start(self, timeout=60):
        for d in ("upper", "work", "root"):
            os.makedirs(os.path.join(self.dir, d))
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={self.cache},upperdir={self.dir}/upper,workdir={self.dir}/work", self.root],
                       check=True, capture_output=True)
        self.mounted = True
        for cg in self.cgroups:
            os.makedirs(cg, exist_ok=True)
        with open(os.path.join(self.dir, "owner"), "w") as f:
            f.write(f"{os.getpid()} {self.name}\n")
        cgs = self.cgroups

        def into_cgroups():
            for cg in cgs:
                with open(os.path.join(cg, "cgroup.procs"), "w") as f:
                    f.write(str(os.getpid()))
            # the test process killed outright: nspawn stops the machine
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        self.log = open(os.path.join(self.dir, "nspawn.log"), "ab")
        args = ["systemd-nspawn", "-q", "-D", self.root, "-M", self.name, "--register=no", "--keep-unit",
                "--as-pid2", "--capability=CAP_NET_ADMIN",
                "--system-call-filter=add_key keyctl request_key bpf",
                "--bind=/tmp:/tmp", "--resolv-conf=off", "--timezone=off", "--link-journal=no",
                "sleep", "infinity"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_SOCKET", "LISTEN_"))}
        env["SYSTEMD_NSPAWN_UNIFIED_HIERARCHY"] = "1"
        # dockerd and netavark set sysctls of their containers' interfaces
        # ("failed to disable IPv6 on container's interface eth0", "set
        # sysctl net/ipv4/conf/eth0/arp_notify: Read-only file system"):
        # nspawn mounts /proc/sys and /sys read-only without this.  Nothing
        # here changes this machine's own sysctls (dockerd runs with
        # --ip-forward=false)
        env["SYSTEMD_NSPAWN_API_VFS_WRITABLE"] = "1"
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
                                     preexec_fn=into_cgroups, start_new_session=True, env=env)

        def pid1():
            if self.proc.poll() is not None:
                raise AssertionError(f"systemd-nspawn exited ({self.proc.returncode}): {self.nspawn_log()}")
            for kid in children(self.proc.pid):
                try:
                    with open(f"/proc/{kid}/status") as st:
                        nspid = [l.split()[1:] for l in st if l.startswith("NSpid:")][0]
                except FileNotFoundError:
                    continue
                # PID 1 of its own namespace, with the payload (sleep) started
                if len(nspid) == 2 and nspid[1] == "1" and children(kid):
                    return kid
            return None
        deadline = time.time() + timeout
        while True:
            self.pid1 = pid1()
            if self.pid1:
                break
            if time.time() > deadline:
                raise AssertionError(f"no PID 1 in machine {self.name} after {timeout}s: {self.nspawn_log()}")
            time.sleep(0.05)
        atexit.register(self.cleanup)
        # the bind mount of /tmp is a peer of this machine's root mount:
        # mounts made in the machine (dockerd's network namespaces in its
        # exec root) would show up here too, and outlive the machine.  A
        # slave gets this machine's mounts and gives none back
        self.run("mount", "--make-rslave", "/tmp")
        # cgroup2 lets a cgroup hand controllers to its children only when
        # it has no processes of its own: the machine's processes go to a
        # leaf, init/, as docker-in-docker does, so that runc can make its
        # containers' cgroups below the machine's root with the controllers
        # this machine delegates (where it delegates none, as in a hybrid
        # layout, this changes nothing)
        self.run("sh", "-c", "mkdir -p /sys/fs/cgroup/init && "
                 "for p in $(cat /sys/fs/cgroup/cgroup.procs); do echo $p > /sys/fs/cgroup/init/cgroup.procs || :; done")
        self.leaf = None
        with open(f"/proc/{self.pid1}/cgroup") as f:
            path = [l.split(":", 2)[2].strip() for l in f if l.startswith("0::")]
        if path:
            top = "/sys/fs/cgroup" if cgroup_roots() == ["/sys/fs/cgroup"] else "/sys/fs/cgroup/unified"
            self.leaf = top + path[0]
            assert self.leaf.endswith("/init") and os.path.isdir(self.leaf), (self.leaf, path)
        return self

    def nspawn_log(self):
        try:
            with open(os.path.join(self.dir, "nspawn.log"), errors="replace") as f:
                return f.read()[-3000:]
        except FileNotFoundError:
            return ""

    def cmd(self, *cmd):
        """The command line that runs cmd in the machine."""
        return ["nsenter", "-t", str(self.pid1), "-a", *cmd]

    def bridge(self):
        """A bridge of this machine's own (made on this machine's network,
        which the machine shares): its name, recorded so that cleanup()
        deletes it, also that of a machine reaped after its test was
        killed."""
        name = "rsb" + self.name[len("regsid-"):][:8]
        with open(os.path.join(self.dir, "bridges"), "a") as f:
            f.write(name + "\n")
        return name

    def into_cgroups(self):
        """preexec_fn: a process started into the machine joins its cgroups
        too, so that cleanup() finds it there (the machine's PID namespace
        ending kills it anyway)."""
        for cg in self.cgroups:
            if self.leaf and self.leaf.startswith(cg + "/"):
                cg = self.leaf  # the cgroup2 hierarchy: the machine's leaf
            try:
                with open(os.path.join(cg, "cgroup.procs"), "w") as f:
                    f.write(str(os.getpid()))
            except OSError:
                pass

    def popen(self, args, **kw):
        return MachineProcess(self.cmd(*args), preexec_fn=self.into_cgroups, **kw)

    def run(self, *cmd, check=True, timeout=60, input=None, env=None):
        r = subprocess.run(self.cmd(*cmd), capture_output=True, text=True, timeout=timeout, input=input, env=env)
        if check and r.returncode != 0:
            raise AssertionError(f"in machine {self.name}, {' '.join(cmd)} failed ({r.returncode}):"
                                 f" {r.stdout.strip()} {r.stderr.strip()}")
        return r

    @staticmethod
    def reap_stale():
        """Machines of earlier test processes that were killed before their
        cleanup (the owner process is gone): cleaned up now."""
        if not os.path.isdir(BASE):
            return
        for d in os.listdir(BASE):
            owner = os.path.join(BASE, d, "owner")
            if not d.startswith(PREFIX) or not os.path.exists(owner):
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
            log("cleaning up machine", name, "left by an earlier run (pid", pid + ")")
            m = SidMachine.__new__(SidMachine)
            m.dir, m.name, m.root, m.proc = os.path.join(BASE, d), name, os.path.join(BASE, d, "root"), None
            m.cgroups = [os.path.join(r, name) for r in cgroup_roots()]
            m.mounted = os.path.ismount(m.root)
            m.cleanup()

    def cleanup(self):
        if getattr(self, "cleaned", False):
            return
        self.cleaned = True
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # nspawn: SIGTERM to the stub init, the sleep ends
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        # whatever is still in the machine's cgroups (the engines, their
        # containers, their shims): killed
        cgroups_kill(self.cgroups, 100)
        if self.proc:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                log("cleanup: systemd-nspawn of", self.name, "did not exit")
        cgroups_remove(self.cgroups)
        # /run is no tmpfs here: nspawn leaves its state in /run/systemd/nspawn
        base = "/run/systemd/nspawn"
        if self.mounted:
            try:
                st = os.stat(self.root)
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
        try:
            with open(os.path.join(self.dir, "bridges")) as f:
                for br in f.read().split():
                    subprocess.run(["ip", "link", "del", br], capture_output=True)
            os.unlink(os.path.join(self.dir, "bridges"))
        except FileNotFoundError:
            pass
        # never a recursive delete through the root: were anything still
        # mounted there (the machine's view of /tmp), it would go too
        for sub in ("upper", "work"):
            shutil.rmtree(os.path.join(self.dir, sub), ignore_errors=True)
        for f in ("owner", "nspawn.log"):
            try:
                os.unlink(os.path.join(self.dir, f))
            except FileNotFoundError:
                pass
        for d in (self.root, self.dir):
            try:
                os.rmdir(d)
            except FileNotFoundError:
                pass
            except OSError as e:
                log("cleanup: rmdir", d, e)


def tempfile_dir():
    import tempfile
    os.makedirs(BASE, exist_ok=True)
    return tempfile.mkdtemp(prefix=PREFIX, dir=BASE)


_machine = None


def machine():
    """This process's sid machine, started on first use."""
    global _machine
    if _machine is None:
        why = prerequisites()
        if why:
            raise Unavailable(why)
        SidMachine.reap_stale()
        # ctest's timeout and ^C: the cleanups (Suite.run's finally, then
        # atexit) run on the way out
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        _machine = SidMachine().start()
        v = _machine.versions()
        log(f"sid machine {_machine.name}:", ", ".join(f"{p} {v[p]}" for p in
                                                      ("docker.io", "podman", "etcd-server") if p in v))
    return _machine

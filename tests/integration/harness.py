"""Test harness: real etcd, real dockerd and the register binary, on loopback.

Every test starts what it needs and stops it again; nothing talks to an
address outside 127.0.0.0/8.  Readers are independent of register:
etcdctl (v2 and v3) and the docker CLI.

The engine and the etcd come from the environment, so that one test runs
against each (tests/CMakeLists.txt has the matrix entries):

  REGISTER_TEST_ENGINE=docker    Debian 12's dockerd (20.10), the default
  REGISTER_TEST_ENGINE=docker26  Debian 13's dockerd (26.1) from the cache
                                 that scripts/fetch-debian13.sh fills, on a
                                 bridge of its own (docker0 is left alone)
  REGISTER_TEST_ENGINE=podman    podman's Docker API (podman system service)
                                 in a network namespace of its own
  REGISTER_TEST_ENGINE=docker-sid  Debian unstable's dockerd (28.5) in a
                                 systemd-nspawn machine (sidmachine.py) on
                                 this machine's network, on a bridge of its
                                 own (rsb*, 10.217.0.0/24)
  REGISTER_TEST_ENGINE=podman-sid  Debian unstable's podman (5.8) service in
                                 such a machine, in a network namespace of
                                 its own
  REGISTER_TEST_ETCD=PATH        the etcd binary (default: etcd on PATH);
                                 REGISTER_TEST_ETCD=debian13 means etcd 3.5
                                 from that cache, REGISTER_TEST_ETCD=sid
                                 Debian unstable's etcd (3.5) in the machine
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

BUILD = os.environ.get("REGISTER_BUILD", os.path.join(os.path.dirname(__file__), "..", "..", "build"))
REGISTER = os.environ.get("REGISTER_BIN", os.path.join(BUILD, "register"))
SRC = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
# One data root for every test's dockerd, so images are built once.
DOCKER_ROOT = os.environ.get("REGISTER_DOCKER_ROOT", "/var/tmp/register-test-docker")
VALGRIND = os.environ.get("REGISTER_VALGRIND")  # run register under valgrind
ENGINE = os.environ.get("REGISTER_TEST_ENGINE", "docker")
DEBIAN13 = os.environ.get("REGISTER_DEBIAN13_CACHE", "/var/cache/register-test/debian13")


# etcd, the v2 tree reader, the default schema's value and the small helpers
# are shared with bench/ (issue 23); re-exported here for the tests
from toolkit import (Cluster, Etcd, FreezableProxy, debian13, default_value, etcd_binary,  # noqa: E402,F401
                     free_port, log, run_netns_mounted, run_netns_unmount, sigstop, tmpdir, v2_tree, wait_for)
import sidmachine  # noqa: E402
import toolkit  # noqa: E402

# a sid engine or etcd that cannot run here: skipped (exit 77), saying why
# (scripts/test.sh fails on any skip with CI=true)
if ENGINE.endswith("-sid") or os.environ.get("REGISTER_TEST_ETCD") == "sid":
    _why = sidmachine.prerequisites()
    if _why:
        print("skipped: the Debian unstable machine " + _why, file=sys.stderr)
        sys.exit(77)


def sh(*args, env=None, check=True, timeout=120, input=None, cwd=None):
    r = subprocess.run(list(args), env=env, capture_output=True, text=True, timeout=timeout, input=input,
                       cwd=cwd)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout.strip()


# the applets the tests use (a link each in the image's /bin)
APPLETS = ("sh", "sleep", "nc", "true", "cat", "rm", "touch", "httpd", "hostname", "pidof", "mkdir")


def busybox_tar(ctx):
    """A root file system of busybox-static and the applets the tests use,
    as ctx/base.tar (both engines import it as the test image's base)."""
    os.makedirs(os.path.join(ctx, "root", "bin"))
    shutil.copy("/bin/busybox", os.path.join(ctx, "root", "bin", "busybox"))
    for a in APPLETS:
        os.symlink("busybox", os.path.join(ctx, "root", "bin", a))
    tar = os.path.join(ctx, "base.tar")
    sh("tar", "-C", os.path.join(ctx, "root"), "-cf", tar, ".")
    return tar


class Dockerd:
    """A dockerd of our own: its own socket, exec root and pidfile, one shared
    data root (so images are built once), no iptables, vfs storage.

    REGISTER_TEST_ENGINE picks the engine (see the top of this file):
    Dockerd() then makes a Docker 26 daemon or a podman service with the
    same methods."""

    BIP = "172.31.254.1/24"

    def __new__(cls, *a, **kw):
        if cls is Dockerd:
            cls = {"docker": Dockerd, "docker26": Dockerd26, "podman": Podman,
                   "docker-sid": DockerdSid, "podman-sid": PodmanSid}[ENGINE]
        return object.__new__(cls)

    engine = "docker"
    dockerd = "dockerd"
    data_root = DOCKER_ROOT

    def __init__(self, extra=()):
        self.extra = list(extra)
        self.dir = tmpdir("rd")
        self.sock = os.path.join(self.dir, "d.sock")
        self.host = "unix://" + self.sock
        self.env = dict(os.environ, DOCKER_HOST=self.host)
        self.proc = None

    def image(self, name):
        """What the engine reports as Config.Image for an image the tests
        tagged `name` (podman qualifies local names)."""
        return name

    def tick_health(self, cid):
        """Docker runs healthchecks by itself."""

    def network_args(self):
        # a docker0 left by another dockerd with another address blocks us
        r = subprocess.run(["ip", "-4", "addr", "show", "docker0"], capture_output=True, text=True)
        if r.returncode == 0 and self.BIP.split("/")[0] not in r.stdout:
            subprocess.run(["ip", "link", "del", "docker0"], capture_output=True)
        # docker0 with our address is the tests' (their own subnet): it goes
        # with the daemon (cleanup), whichever test's daemon made it
        self.made_bridge = "docker0"
        return ["--bip", self.BIP]

    def start(self, timeout=60):
        os.makedirs(self.data_root, exist_ok=True)
        args = [self.dockerd, "--host", self.host, "--data-root", self.data_root,
                "--exec-root", os.path.join(self.dir, "x"), "--pidfile", os.path.join(self.dir, "d.pid"),
                "--iptables=false", "--ip6tables=false", "--storage-driver=vfs", *self.network_args(),
                *self.extra]
        self.log = open(os.path.join(self.dir, "dockerd.log"), "ab")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: self.ping(), timeout, what="dockerd to answer")
        self.log_version()
        return self

    def log_version(self):
        if not getattr(self, "_logged", False):
            self._logged = True
            log(f"engine {self.engine}:", self.docker("version", "--format",
                                                      "{{.Server.Version}} (API {{.Server.APIVersion}})"))

    def ping(self):
        if self.proc.poll() is not None:
            raise AssertionError("dockerd exited: see " + self.log.name)
        r = subprocess.run(["curl", "-sf", "--unix-socket", self.sock, "http://d/_ping"], capture_output=True)
        return r.returncode == 0

    def docker(self, *args, check=True, timeout=120):
        return sh("docker", *args, env=self.env, check=check, timeout=timeout)

    def clean(self):
        ids = self.docker("ps", "-aq").split()
        if ids:
            self.docker("rm", "-f", *ids)

    def images(self):
        """The test images: bbx (EXPOSE 80 53/udp 9200), and tags of it."""
        have = self.docker("images", "--format", "{{.Repository}}:{{.Tag}}").split()
        # an image built before an applet was added to APPLETS is built again
        applets = ",".join(APPLETS)
        if "bbx:latest" in have and self.docker(
                "image", "inspect", "-f", '{{index .Config.Labels "register.test.applets"}}', "bbx") != applets:
            have.remove("bbx:latest")
        if "bbx:latest" not in have:
            ctx = tmpdir("ri")
            try:
                self.docker("import", busybox_tar(ctx), "bbbase:latest")
                bctx = os.path.join(ctx, "build")
                os.makedirs(bctx)
                with open(os.path.join(bctx, "Dockerfile"), "w") as f:
                    f.write('FROM bbbase:latest\nEXPOSE 80 53/udp 9200\nCMD ["/bin/sleep","3600"]\n'
                            f'LABEL register.test.applets="{applets}"\n')
                self.docker("build", "-q", "-t", "bbx:latest", bctx)
            finally:
                shutil.rmtree(ctx, ignore_errors=True)
        return self

    def run(self, *args, image="bbx"):
        """docker run -d ARGS IMAGE; returns the full container id."""
        return self.docker("run", "-d", *args, image)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def kill9(self):
        """kill -9 dockerd only (containerd and shims live on, as in real life)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None
        # Its containerd dies with it (parent-death signal) but may linger as
        # a zombie that only init reaps; a stale pid file would make the next
        # dockerd wait for it, so drop the file as a restart after a crash
        # would find it.
        pidfile = os.path.join(self.dir, "x", "containerd", "containerd.pid")
        try:
            with open(pidfile) as f:
                pid = int(f.read().strip() or 0)
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            os.unlink(pidfile)
        except (FileNotFoundError, ValueError):
            pass

    def cleanup(self):
        if self.proc and self.proc.poll() is None:
            try:
                self.clean()
            except Exception as e:
                log("cleanup:", e)
        self.stop()
        # dockerd -9 leaves its containerd behind: stop ours
        subprocess.run(["pkill", "-f", "containerd.*" + self.dir], capture_output=True)
        # a daemon killed with -9 leaves its network namespaces mounted in
        # its exec root: unmount them, or the directory stays
        with open("/proc/mounts") as f:
            mounts = [line.split()[1] for line in f]
        for m in sorted((m for m in mounts if m.startswith(self.dir + "/")), reverse=True):
            subprocess.run(["umount", "-l", m], capture_output=True)
        # dockerd makes its data root a mount of its own: it goes too (the
        # files stay, for the next test's images)
        if self.data_root in mounts:
            subprocess.run(["umount", "-l", self.data_root], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)
        # a test leaves no bridge behind: the one made for this daemon goes
        if getattr(self, "made_bridge", None):
            subprocess.run(["ip", "link", "del", self.made_bridge], capture_output=True)


class LazyDockerd:
    """A test file's dockerd, started at the first test that uses it (and
    stopped with the suite): the tests on the fake Docker API need none."""

    def __init__(self, suite):
        self.suite, self.real = suite, None

    def __getattr__(self, name):
        if self.real is None:
            self.real = Dockerd().start()
            self.suite.defer(self.real.cleanup)
            self.real.images()
            self.real.clean()
        return getattr(self.real, name)


class Dockerd26(Dockerd):
    """Docker 26.1 (Debian 13's dockerd) with Debian 12's containerd and runc,
    on a bridge of its own that this class makes with ip link; its own data
    root (a newer daemon migrates what it finds)."""

    engine = "docker26"
    BRIDGE = "regbr26"
    BRIDGE_ADDR = "172.31.253.1/24"
    data_root = DOCKER_ROOT + "26"

    def __init__(self, extra=()):
        super().__init__(extra)
        self.dockerd = debian13("docker.io/usr/sbin/dockerd")

    def network_args(self):
        r = subprocess.run(["ip", "-4", "addr", "show", self.BRIDGE], capture_output=True, text=True)
        self.made_bridge = self.BRIDGE  # the tests' own bridge: it goes at cleanup
        if r.returncode != 0:
            sh("ip", "link", "add", self.BRIDGE, "type", "bridge")
        if self.BRIDGE_ADDR.split("/")[0] not in r.stdout:
            sh("ip", "addr", "add", self.BRIDGE_ADDR, "dev", self.BRIDGE)
        sh("ip", "link", "set", self.BRIDGE, "up")
        return ["--bridge", self.BRIDGE]


PODMAN_ROOT = os.environ.get("REGISTER_PODMAN_ROOT", "/var/tmp/register-test-podman")
# podman's run root and tmp dir: fixed paths, removed at cleanup.  podman
# keeps the ones of its first start in its database (in PODMAN_ROOT, which
# lives on between runs) and uses them ever after, whatever the config says:
# a test's own directory there was left behind, and used by every later run.
PODMAN_RUN = PODMAN_ROOT.rstrip("/").replace("/var/tmp/", "/run/", 1) if PODMAN_ROOT.startswith("/var/tmp/") \
    else PODMAN_ROOT.rstrip("/") + "-run"


class Podman(Dockerd):
    """podman 4.3's Docker-compatible API (`podman system service`), rootful,
    in a network namespace of its own (its CNI bridge and port-forward rules
    live there, not on this machine's network), cgroupfs, vfs storage,
    events in a file.  Containers get rlimits from containers.conf: runc
    cannot set podman's defaults in this sandbox."""

    engine = "podman"

    def __init__(self, extra=()):
        super().__init__(extra)
        self.netns = "regpod-" + os.path.basename(self.dir)
        conf = os.path.join(self.dir, "containers.conf")
        with open(conf, "w") as f:
            f.write('[containers]\ndefault_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]\n'
                    '[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
                    f'events_logfile_path = "{self.dir}/events.log"\ntmp_dir = "{PODMAN_RUN}/libpod"\n')
        storage = os.path.join(self.dir, "storage.conf")
        with open(storage, "w") as f:
            f.write(f'[storage]\ndriver = "vfs"\ngraphroot = "{PODMAN_ROOT}"\nrunroot = "{PODMAN_RUN}/run"\n')
        self.penv = dict(os.environ, CONTAINERS_CONF=conf, CONTAINERS_STORAGE_CONF=storage)

    def image(self, name):
        # images() imports bbx as localhost/bbx; names given to `docker tag`
        # through the compatible API become Docker Hub names
        tagged = name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"
        if name == "bbx":
            return "localhost/" + tagged
        first = name.split("/", 1)[0]
        if "/" in name and ("." in first or ":" in first or first == "localhost"):
            return tagged
        return "docker.io/" + ("" if "/" in name else "library/") + tagged

    def podman(self, *args, check=True, timeout=120):
        return sh(*self.inns("podman"), *args, env=self.penv, check=check, timeout=timeout)

    def inns(self, *cmd):
        # nsenter, not `ip netns exec`: that one mounts a new /sys, without
        # the cgroup mounts runc needs
        return ["nsenter", "--net=/run/netns/" + self.netns, *cmd]

    def start(self, timeout=60):
        if subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True).returncode != 0:
            if not hasattr(self, "netns_mounted"):
                self.netns_mounted = run_netns_mounted()
            sh("ip", "netns", "add", self.netns)
            sh(*self.inns("ip", "link", "set", "lo", "up"))
        os.makedirs(PODMAN_ROOT, exist_ok=True)
        self.log = open(os.path.join(self.dir, "podman.log"), "ab")
        self.proc = subprocess.Popen(self.inns("podman", "system", "service", "--time=0", self.host), env=self.penv, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: self.ping(), timeout, what="podman service to answer")
        self.log_version()
        return self

    def images(self):
        have = self.podman("images", "--format", "{{.Repository}}:{{.Tag}}").split()
        if "localhost/bbx:latest" not in have:
            ctx = tmpdir("ri")
            try:
                tar = busybox_tar(ctx)
                self.podman("import", "-c", "EXPOSE 80", "-c", "EXPOSE 53/udp", "-c", "EXPOSE 9200",
                            "-c", 'CMD ["/bin/sleep","3600"]', tar, "bbx:latest")
            finally:
                shutil.rmtree(ctx, ignore_errors=True)
        return self

    def clean(self):
        self.podman("rm", "-f", "-a", "-t", "0", check=False)

    def tick_health(self, cid):
        """podman runs healthchecks from systemd timers; without systemd
        (here) the test runs them, as the timer would."""
        self.podman("healthcheck", "run", cid, check=False)

    def kill9(self):
        """kill -9 the API service (containers live on under conmon)."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None
        try:
            os.unlink(self.sock)
        except FileNotFoundError:
            pass

    def cleanup(self):
        try:
            self.clean()
        except Exception as e:
            log("cleanup:", e)
        self.stop()
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
        # `ip netns add` bind-mounted /run/netns: a test leaves no mount behind
        run_netns_unmount(getattr(self, "netns_mounted", True))
        shutil.rmtree(PODMAN_RUN, ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)


class DockerdSid(Dockerd):
    """Docker 28.5 (Debian unstable's docker.io, with its containerd and
    runc) in this process's sid machine (sidmachine.py), which shares this
    machine's network: on a bridge of its own that this class makes
    (rsb<machine>, 10.217.0.1/24: no other dockerd here uses that subnet;
    the machine deletes it, also after a test killed), no iptables,
    no IP forwarding (this machine's sysctl is left alone), vfs storage.  Published ports are docker-proxy's, on this machine's
    loopback.  Its data root is in the machine (a throwaway overlay: the
    test images are built again in each test process); its socket, exec
    root and pidfile are in the test's directory below /tmp, which the
    machine shares, so register and the docker CLI reach the socket at the
    same path.  The docker CLI is this machine's (20.10, API 1.41)."""

    engine = "docker-sid"
    BRIDGE_ADDR = "10.217.0.1/24"
    data_root = "/var/lib/register-test-docker"  # inside the machine

    def __init__(self, extra=()):
        super().__init__(extra)
        self.machine = sidmachine.machine()
        self.BRIDGE = self.machine.bridge()

    network_args = Dockerd26.network_args

    def start(self, timeout=60):
        args = [self.dockerd, "--host", self.host, "--data-root", self.data_root,
                "--exec-root", os.path.join(self.dir, "x"), "--pidfile", os.path.join(self.dir, "d.pid"),
                "--iptables=false", "--ip6tables=false", "--ip-forward=false", "--storage-driver=vfs",
                *self.network_args(), *self.extra]
        self.log = open(os.path.join(self.dir, "dockerd.log"), "ab")
        self.proc = self.machine.popen(args, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: self.ping(), timeout, what="dockerd to answer")
        self.log_version()
        return self

    def kill9(self):
        """kill -9 dockerd only (containerd and shims live on); its
        containerd's pid file holds a pid of the machine's PID namespace."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None
        pidfile = os.path.join(self.dir, "x", "containerd", "containerd.pid")
        try:
            with open(pidfile) as f:
                pid = int(f.read().strip() or 0)
            if pid > 1:  # never the machine's init
                self.machine.run("kill", "-9", str(pid), check=False)
            os.unlink(pidfile)
        except (FileNotFoundError, ValueError):
            pass

    def cleanup(self):
        if self.proc and self.proc.poll() is None:
            try:
                self.clean()
            except Exception as e:
                log("cleanup:", e)
        self.stop()
        # its containerd (dockerd killed with -9 leaves it) and the mounts
        # of its exec root are the machine's: they go with it
        self.machine.run("sh", "-c", f"pkill -9 -f 'containerd.*{self.dir}'; "
                         f"grep -o ' {self.dir}/[^ ]*' /proc/mounts | sort -r | xargs -r umount -l",
                         check=False)
        shutil.rmtree(self.dir, ignore_errors=True)
        if getattr(self, "made_bridge", None):
            subprocess.run(["ip", "link", "del", self.made_bridge], capture_output=True)


class PodmanSid(Podman):
    """podman 5.8's Docker-compatible API (Debian unstable's podman, netavark
    and conmon) in this process's sid machine, set up as Podman above: its
    service and CLI run in a network namespace of their own made in the
    machine (netavark's bridge and firewall rules live there), cgroupfs,
    vfs storage in the machine, events in a file."""

    engine = "podman-sid"

    def __init__(self, extra=()):
        super().__init__(extra)
        self.machine = sidmachine.machine()
        # as Podman's, and: podman 5 stops a container with its stop
        # timeout (10 s) before it removes it at `docker rm -f` (Docker and
        # podman 4.3 kill it at once): 1 s, or each removal of a test's
        # container (busybox sleep, which ignores SIGTERM) takes 10 s
        with open(os.path.join(self.dir, "containers.conf"), "w") as f:
            f.write('[containers]\ndefault_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]\n'
                    '[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\nstop_timeout = 1\n'
                    f'events_logfile_path = "{self.dir}/events.log"\ntmp_dir = "{self.dir}/libpod"\n')
        with open(os.path.join(self.dir, "storage.conf"), "w") as f:
            f.write('[storage]\ndriver = "vfs"\ngraphroot = "/var/lib/register-test-podman"\n'
                    f'runroot = "{self.dir}/run"\n')

    def inns(self, *cmd):
        return self.machine.cmd("nsenter", "--net=/run/netns/" + self.netns, *cmd)

    def start(self, timeout=60):
        m = self.machine
        if m.run("ip", "netns", "pids", self.netns, check=False).returncode != 0:
            m.run("ip", "netns", "add", self.netns)
            m.run("nsenter", "--net=/run/netns/" + self.netns, "ip", "link", "set", "lo", "up")
        self.log = open(os.path.join(self.dir, "podman.log"), "ab")
        self.proc = m.popen(["nsenter", "--net=/run/netns/" + self.netns, "podman", "system", "service",
                             "--time=0", self.host], env=self.penv, stdout=self.log,
                            stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: self.ping(), timeout, what="podman service to answer")
        self.log_version()
        return self

    def cleanup(self):
        try:
            self.clean()
        except Exception as e:
            log("cleanup:", e)
        self.stop()
        self.machine.run("ip", "netns", "del", self.netns, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


class Register:
    """The daemon under test; stderr goes to a log file the test can read."""

    def __init__(self, *args, env=None, host_ip="10.9.8.7", netns=None):
        self.args = list(args)
        self.host_ip = host_ip
        self.netns = netns  # run it in this network namespace (ip netns exec)
        self.dir = tmpdir("rr")
        self.logpath = os.path.join(self.dir, "register.log")
        self.env = dict(os.environ)
        self.env.pop("DOCKER_HOST", None)
        self.env.pop("ETCD_ENDPOINT", None)
        self.env["HOST_IP"] = host_ip
        if env:
            self.env.update(env)
        self.proc = None

    started = []  # every Register started, in order (Suite shows their logs)

    def start(self):
        Register.started.append(self)
        cmd = [REGISTER, *self.args]
        if VALGRIND:
            cmd = ["valgrind", "--leak-check=full", "--show-leak-kinds=definite,indirect",
                   "--errors-for-leak-kinds=definite,indirect", "--error-exitcode=99",
                   "--log-file=" + os.path.join(self.dir, "valgrind.%p"), *cmd]
        if self.netns:  # ip execs it: the pid is register's
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        self.logf = open(self.logpath, "ab")
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=subprocess.PIPE, stderr=self.logf)
        return self

    def output(self):
        with open(self.logpath, "r", errors="replace") as f:
            return f.read()

    def wait_log(self, text, timeout=20, count=1):
        def seen():
            if self.proc.poll() is not None and self.output().count(text) < count:
                raise AssertionError(f"register exited ({self.proc.returncode}) before logging {text!r}:\n" + self.output())
            return self.output().count(text) >= count
        wait_for(seen, timeout, what=f"log line {text!r}")

    def stop(self, sig=signal.SIGTERM, timeout=20, expect=0):
        """Signals register and waits; a clean exit must be 0 (under ASan that
        also means no leaks at shutdown).  expect=None skips the check."""
        if not self.proc:
            return None
        if sig in (signal.SIGTERM, signal.SIGINT):
            # its handlers are set before the start-up line: a signal
            # before that line ends it as the default action does (-15),
            # which a slow start (ASan) let a test see
            deadline = time.time() + 10
            while (self.proc.poll() is None and time.time() < deadline
                   and not re.search(r"register \S+: host ", self.output())):
                time.sleep(0.05)
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("register did not exit after signal:\n" + self.output())
        self.proc = None
        if sig != signal.SIGKILL and expect is not None and rc != expect:
            raise AssertionError(f"register exited {rc}, expected {expect}:\n" + self.output()[-4000:])
        if VALGRIND and sig != signal.SIGKILL:
            reports = [f for f in os.listdir(self.dir) if f.startswith("valgrind.")]
            # the policy worker's spawn leaves a header-only report of the
            # child valgrind forked before it exec'd register-worker (which
            # it does not trace): only reports with a summary are register's
            texts = [open(os.path.join(self.dir, f)).read() for f in reports]
            texts = [t for t in texts if "ERROR SUMMARY" in t]
            assert texts, "no valgrind report in " + self.dir
            for text in texts:
                log("valgrind:", " ".join(l.split("== ", 1)[-1] for l in text.splitlines()
                                          if "lost:" in l or "ERROR SUMMARY" in l))
                assert ("definitely lost: 0 bytes" in text and "indirectly lost: 0 bytes" in text) \
                    or "no leaks are possible" in text, text
                assert "ERROR SUMMARY: 0 errors" in text, text
        return rc

    def kill9(self):
        return self.stop(signal.SIGKILL, expect=None)

    def cleanup(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        # its directory (the log) stays until the Suite ends: a test that
        # fails after its cleanups ran (an Env's) still shows the log, and
        # remove_tmpdirs() takes it once every test has passed


def inspect_bindings(d, cid):
    """Bindings from docker inspect, in the order Docker sends them."""
    doc = json.loads(d.docker("inspect", cid), object_pairs_hook=list)  # keeps key order
    netset = [v for k, v in doc[0] if k == "NetworkSettings"][0]
    ports = [v for k, v in netset if k == "Ports"][0]
    out = []
    for key, binds in ports:
        if binds is None:
            continue
        port, _, proto = key.partition("/")
        for b in binds:
            b = dict(b)
            out.append((b["HostIp"], b["HostPort"], port, proto or "tcp"))
    return out


class Suite:
    """Runs test functions in order, with cleanups; exit code for ctest."""

    def __init__(self):
        self.tests = []
        self.cleanups = []

    def test(self, fn):
        self.tests.append(fn)
        return fn

    def defer(self, fn):
        self.cleanups.append(fn)

    def run(self):
        """`script.py` runs every test; `script.py NAME...` runs those (ctest
        has one entry per name for some scripts); `script.py --list` prints
        the names, one a line (tests/CMakeLists.txt reads them).  A name
        that is no test here is an error, not a run of nothing."""
        only = sys.argv[1:]
        names = [fn.__name__ for fn in self.tests]
        if only == ["--list"]:
            self.tests = []
            only = []
            print("\n".join(names))
        unknown = [n for n in only if n not in names]
        if unknown:
            log(f"no test named {', '.join(unknown)} in {sys.argv[0]}; its tests are: {', '.join(names)}")
            self.tests = []
        failed = len(unknown)
        try:
            for fn in self.tests:
                if only and fn.__name__ not in only:
                    continue
                t0 = time.time()
                started = len(Register.started)
                log(f"--- {fn.__name__}")
                try:
                    fn()
                    log(f"ok {fn.__name__} ({time.time() - t0:.1f}s)")
                except Exception:
                    failed += 1
                    import traceback
                    traceback.print_exc()
                    # what the daemons of this test said last
                    for r in Register.started[started:]:
                        try:
                            tail = r.output().splitlines()[-40:]
                        except OSError:
                            continue
                        log(f"register log ({r.logpath}), last {len(tail)} lines:")
                        for line in tail:
                            print("    " + line, file=sys.stderr)
                    log(f"FAIL {fn.__name__}")
        finally:
            for c in reversed(self.cleanups):
                try:
                    c()
                except Exception as e:
                    log("cleanup failed:", e)
        # the test directories in /tmp go once every test has passed; a
        # failure's stay, with its logs (ctest's output names them)
        if failed:
            kept = [d for d in toolkit._TMPDIRS if os.path.exists(d)]
        else:
            kept = toolkit.remove_tmpdirs()
        if kept:
            log(f"kept {len(kept)} test directories: {' '.join(kept)}")
        sys.exit(1 if failed else 0)


def docker_truth(d, ip):
    """What the default policy must have written for the running containers
    of dockerd d: {key: value}, from docker's own inspect output."""
    out = {}
    ids = d.docker("ps", "-q", "--no-trunc").split()
    for cid in ids:
        doc = json.loads(d.docker("inspect", cid, check=False) or "[]", object_pairs_hook=list)
        if not doc:
            continue  # gone meanwhile
        top = dict(doc[0])
        if not dict(top["State"])["Running"]:
            continue
        image = dict(top["Config"])["Image"].replace("/", "::")
        ports = dict(top["NetworkSettings"])["Ports"] or []
        binds = []
        for key, bl in ports:
            if bl is None:
                continue
            p, _, proto = key.partition("/")
            binds += [(dict(b)["HostIp"], dict(b)["HostPort"], p, proto or "tcp") for b in bl]
        if binds:
            out[f"/registered/{ip}/{image}/{cid}"] = default_value(cid, image, binds)
    return out


def wait_converged(etcd, d, ip, timeout=20):
    """Waits until etcd under /registered/<ip> equals Docker's truth."""
    state = {}

    def ok():
        truth = docker_truth(d, ip)
        got = etcd.tree(f"/registered/{ip}")
        state["diff"] = (sorted(set(truth) ^ set(got)),
                         sorted(k for k in truth if k in got and truth[k] != got[k]))
        return got == truth
    try:
        wait_for(ok, timeout, interval=0.2, what="etcd to equal Docker's truth")
    except AssertionError as e:
        raise AssertionError(f"{e}; keys differing: {state.get('diff')}")


def make_pki(d, name="test"):
    """A CA, a server certificate for 127.0.0.1/localhost and a client
    certificate, made with openssl in directory d.  Returns paths."""
    os.makedirs(d, exist_ok=True)
    p = {k: os.path.join(d, f"{name}-{k}.pem") for k in
         ("ca", "ca-key", "server", "server-key", "client", "client-key")}
    ext = os.path.join(d, f"{name}-ext.cnf")
    with open(ext, "w") as f:
        f.write("[srv]\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
                "# etcd's gateway dials etcd itself with this certificate\n"
                "extendedKeyUsage=serverAuth,clientAuth\n"
                "[cli]\nextendedKeyUsage=clientAuth\n")
    sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
       "-subj", f"/CN={name} test CA", "-keyout", p["ca-key"], "-out", p["ca"])
    for kind, cn, section in (("server", "127.0.0.1", "srv"), ("client", "register", "cli")):
        csr = os.path.join(d, f"{name}-{kind}.csr")
        sh("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
           "-keyout", p[f"{kind}-key"], "-out", csr)
        sh("openssl", "x509", "-req", "-in", csr, "-CA", p["ca"], "-CAkey", p["ca-key"],
           "-CAcreateserial", "-days", "2", "-extfile", ext, "-extensions", section, "-out", p[kind])
    return p

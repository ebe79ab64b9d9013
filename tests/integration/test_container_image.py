"""The runtime image (Dockerfile): built from a local Debian 12 base made
with debootstrap --variant=minbase and docker import (no registry is
reachable here), run against the test dockerd (socket mounted) and etcd on
loopback (host network); it registers a container.  debootstrap uses the
Debian mirror of this machine's apt sources (scripts/debian-mirror.sh;
REGISTER_DEBIAN_MIRROR overrides it), as scripts/nspawn-root.sh does for
the systemd test; the root is cached (REGISTER_ROOTFS_TAR).  The normal
build only (tests/CMakeLists.txt): the image carries the normal binary."""
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
from harness import REGISTER, SRC, Dockerd, Etcd, Suite, log, sh, tmpdir, wait_for  # noqa: E402


def project_version():
    """project(register VERSION x.y.z) in CMakeLists.txt: what --version says."""
    import re
    with open(os.path.join(SRC, "CMakeLists.txt")) as f:
        return re.search(r"project\(register VERSION ([0-9.]+)", f.read()).group(1)

ROOTFS = os.environ.get("REGISTER_ROOTFS_TAR", "/var/tmp/register-test-bookworm-rootfs.tar")
BASE = "register-test-base:bookworm"
IP = "10.0.7.7"


def skip(why):
    print("skipped: " + why, file=sys.stderr)
    sys.exit(77)


if "libasan" in subprocess.run(["ldd", REGISTER], capture_output=True, text=True).stdout:
    skip("the sanitizer build: the image carries the normal binary")
if not os.path.exists(ROOTFS):
    if not shutil.which("debootstrap"):
        skip("debootstrap is not installed (scripts/install-deps.sh installs it)")
    m = subprocess.run([os.path.join(SRC, "scripts", "debian-mirror.sh")], capture_output=True, text=True)
    if m.returncode != 0 or not m.stdout.strip():
        skip("no Debian mirror in this machine's apt sources; set REGISTER_DEBIAN_MIRROR")
    mirror = m.stdout.strip()
    root = tmpdir("rdb")
    log(f"debootstrap bookworm from {mirror} (once, cached in {ROOTFS})")
    r = subprocess.run(["debootstrap", "--variant=minbase",
                        "--include=liblua5.4-0,lua-cjson,libuv1,libcurl4,libseccomp2,ca-certificates",
                        "bookworm", root, mirror],
                       capture_output=True, text=True, timeout=1200)
    if r.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        # the mirror apt uses here: a failure, not a skip
        sys.exit(f"debootstrap from {mirror} failed ({r.returncode}):\n" +
                 "\n".join((r.stderr or r.stdout).strip().splitlines()[-20:]))
    sh("tar", "-C", root, "-cf", ROOTFS + ".tmp", ".", timeout=600)
    os.rename(ROOTFS + ".tmp", ROOTFS)
    shutil.rmtree(root, ignore_errors=True)

suite = Suite()
d = Dockerd().start()
suite.defer(d.cleanup)
d.images()
d.clean()
etcd = Etcd().start()
suite.defer(etcd.cleanup)


def logs(cid):
    """docker logs: register logs on stderr, so read both streams."""
    r = subprocess.run(["docker", "logs", cid], env=d.env, capture_output=True, text=True, timeout=30)
    return r.stdout + r.stderr


@suite.test
def image_builds_runs_and_registers():
    if BASE not in d.docker("images", "--format", "{{.Repository}}:{{.Tag}}").split():
        d.docker("import", ROOTFS, BASE, timeout=600)
    ctx = tmpdir("rx")
    suite.defer(lambda: shutil.rmtree(ctx, ignore_errors=True))
    os.makedirs(os.path.join(ctx, "build"))
    shutil.copy(REGISTER, os.path.join(ctx, "build", "register"))
    # the policy worker, built next to it
    shutil.copy(os.path.join(os.path.dirname(REGISTER), "register-worker"),
                os.path.join(ctx, "build", "register-worker"))
    shutil.copytree(os.path.join(SRC, "lua"), os.path.join(ctx, "lua"))
    shutil.copy(os.path.join(SRC, "Dockerfile"), ctx)
    d.docker("build", "-q", "--build-arg", f"BASE={BASE}", "-t", "register:test", ctx, timeout=600)
    assert d.docker("run", "--rm", "register:test", "--version") == "register " + project_version()
    cid = d.run("-p", "127.0.0.1::80")
    reg = d.docker("run", "-d", "--name", "register-under-test", "--net", "host",
                   "-v", f"{d.sock}:/var/run/docker.sock",
                   "-e", f"HOST_IP={IP}", "-e", f"ETCD_ENDPOINT={etcd.url}", "register:test")
    key = f"/registered/{IP}/bbx/{cid}"
    wait_for(lambda: key in etcd.tree(), 30, what="registration from inside the container")
    assert "in sync" in logs(reg)
    assert not any(reg in k for k in etcd.tree())  # it publishes nothing
    d.docker("stop", "-t", "10", reg)
    assert d.docker("inspect", "-f", "{{.State.ExitCode}}", reg) == "0"
    assert "Terminated received, shutting down" in logs(reg)
    d.docker("rm", "-f", reg, cid)


suite.run()

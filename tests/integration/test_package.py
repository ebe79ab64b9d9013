"""The .deb: cpack builds it (binary, default and example policies, unit
files, man page, README; dependencies from dpkg-shlibdeps), dpkg -i
installs it, the installed register answers --version and runs an
installed example with `register check`; dpkg -r removes it again."""
import gzip
import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
from harness import REGISTER, SRC, Suite, sh, tmpdir  # noqa: E402

if os.geteuid() != 0 or not shutil.which("dpkg") or not shutil.which("cpack"):
    print("skipped: needs root, dpkg and cpack", file=sys.stderr)
    sys.exit(77)
if "libasan" in subprocess.run(["ldd", REGISTER], capture_output=True, text=True).stdout:
    print("skipped in the sanitizer build: the normal build tests the package", file=sys.stderr)
    sys.exit(77)
if subprocess.run(["dpkg-query", "-W", "register"], capture_output=True).returncode == 0:
    print("skipped: a package named register is installed here already", file=sys.stderr)
    sys.exit(77)

suite = Suite()


@suite.test
def deb_installs_and_runs():
    b = tmpdir("rb")
    suite.defer(lambda: shutil.rmtree(b, ignore_errors=True))
    sh("cmake", "-S", SRC, "-B", b, "-DCMAKE_INSTALL_PREFIX=/usr", "-DREGISTER_TESTS=OFF",
       "-DCMAKE_BUILD_TYPE=Release", timeout=300)
    sh("cmake", "--build", b, "-j2", timeout=600)
    sh("cpack", "-G", "DEB", cwd=b, timeout=300)
    debs = [f for f in os.listdir(b) if f.endswith(".deb")]
    assert len(debs) == 1, debs
    deb = os.path.join(b, debs[0])
    info = sh("dpkg-deb", "-f", deb, "Depends")
    for lib in ("liblua5.4-0", "lua-cjson", "libuv1", "libcurl4"):
        assert lib in info, info
    files = sh("dpkg-deb", "-c", deb)
    for f in ("./usr/bin/register", "./usr/share/register/default.lua",
              "./usr/share/register/examples/registrator.lua", "./usr/lib/systemd/system/register.service",
              "./usr/share/man/man8/register.8.gz", "./usr/share/doc/register/README.md"):
        assert f in files, (f, files)
    # Debian's conventions for a service: maintainer scripts, conffiles
    control = sh("dpkg-deb", "-I", deb)
    for f in ("postinst", "prerm", "postrm", "conffiles"):
        assert f" {f}" in control, (f, control)
    assert "./etc/default/register" in files and "./etc/register/policy.lua" in files, files
    assert "init-system-helpers" in info, info
    suite.defer(lambda: subprocess.run(["dpkg", "--purge", "register"], capture_output=True))
    sh("dpkg", "-i", deb, timeout=120)
    assert sh("/usr/bin/register", "--version") == "register 0.1.0"
    out = sh("/usr/bin/register", "check", "--host-ip", "10.0.0.9", "--hostname", "node9",
             "/usr/share/register/examples/registrator.lua", os.path.join(SRC, "tests/data/inspect/multi.json"))
    keys = [json.loads(l)["key"] for l in out.splitlines()]
    assert "/services/web-80/node9:web-1:80" in keys, keys
    out = sh("/usr/bin/register", "check", "/usr/share/register/default.lua",
             os.path.join(SRC, "tests/data/inspect/multi.json"))
    assert json.loads(out)["key"].startswith("/registered/127.0.0.1/bbx/")
    man = gzip.open("/usr/share/man/man8/register.8.gz").read().decode()
    assert man.startswith(".TH REGISTER 8") and "--deregister-on-exit" in man.replace("\\-", "-")
    unit = open("/usr/lib/systemd/system/register.service").read()
    assert "Type=notify" in unit and "[X-Fleet]" in unit
    assert "Requires=" not in unit and "sh -c" not in unit and "SyslogIdentifier=register" in unit
    assert "EnvironmentFile=-/etc/default/register" in unit
    assert "REGISTER_POLICY=/etc/register/policy.lua" in open("/etc/default/register").read()
    # the shipped policy is the default schema, and loads
    out = sh("/usr/bin/register", "check", "--host-ip", "10.0.0.9", "/etc/register/policy.lua",
             os.path.join(SRC, "tests/data/inspect/multi.json"))
    assert json.loads(out)["key"].startswith("/registered/10.0.0.9/bbx/")
    status = sh("dpkg-query", "-W", "-f", "${Conffiles}", "register")
    assert "/etc/default/register" in status and "/etc/register/policy.lua" in status, status
    sh("dpkg", "-r", "register", timeout=120)
    assert not os.path.exists("/usr/bin/register")
    assert os.path.exists("/etc/default/register")  # conffiles stay until purge
    sh("dpkg", "--purge", "register", timeout=120)
    assert not os.path.exists("/etc/default/register")


suite.run()

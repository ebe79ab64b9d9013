"""The .deb: cpack builds it (binary, default and example policies, unit
files, man page, README, copyright and changelog; dependencies from
dpkg-shlibdeps), lintian finds no error and no warning in it, dpkg -i
installs it, the installed register answers --version with
project(VERSION) and runs an installed example with `register check`;
dpkg -r removes it again without masking the units, and a reinstall
finds them as they were."""
import gzip
import json
import os
import re
import shutil
import subprocess
import tempfile
import sys

sys.path.insert(0, os.path.dirname(__file__))
from harness import REGISTER, SRC, Suite, free_port, log, sh, tmpdir  # noqa: E402

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


def project_version():
    """project(register VERSION x.y.z) in CMakeLists.txt."""
    with open(os.path.join(SRC, "CMakeLists.txt")) as f:
        return re.search(r"project\(register VERSION ([0-9.]+)", f.read()).group(1)


def lintian(deb):
    """lintian's tags for the .deb: no error, no warning, no hardening-*
    (those are only I: tags), every tag shown."""
    assert shutil.which("lintian"), "no lintian: scripts/install-deps.sh installs it"
    r = subprocess.run(["lintian", "--display-info", "--no-tag-display-limit", "--fail-on", "error,warning",
                        deb], capture_output=True, text=True, timeout=300)
    tags = [l for l in r.stdout.splitlines() if re.match(r"^[EWIPX]: ", l)]
    bad = [t for t in tags if t.startswith(("E: ", "W: ")) or " hardening-" in t]
    assert not bad and r.returncode == 0, f"lintian ({r.returncode}):\n" + "\n".join(tags) + r.stderr
    log("lintian: no error, no warning;", len(tags), "info tags:", *tags)


def unit_links():
    """Where systemd would find register's units enabled or masked."""
    out = []
    for d, _, files in os.walk("/etc/systemd/system"):
        out += [os.path.join(d, f) for f in files if f.startswith("register")]
    return {p: os.readlink(p) if os.path.islink(p) else "" for p in out}


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
    version = project_version()
    pkg_version = sh("dpkg-deb", "-f", deb, "Version")
    assert pkg_version.startswith(version + "-"), (pkg_version, version)
    assert debs[0] == f"register_{pkg_version}_amd64.deb", debs
    info = sh("dpkg-deb", "-f", deb, "Depends")
    for lib in ("liblua5.4-0", "lua-cjson", "libuv1", "libcurl4", "libseccomp2"):
        assert lib in info, info
    # register-docker.service needs the docker CLI; register.service does not
    assert sh("dpkg-deb", "-f", deb, "Suggests") == "docker.io"
    assert "localhost" not in sh("dpkg-deb", "-f", deb, "Maintainer")
    files = sh("dpkg-deb", "-c", deb)
    for f in ("./usr/bin/register", "./usr/libexec/register/register-worker", "./usr/share/register/default.lua",
              "./usr/share/register/examples/registrator.lua", "./usr/lib/systemd/system/register.service",
              "./usr/lib/systemd/system/register-watch.service", "./etc/default/register-watch",
              "./usr/share/man/man8/register.8.gz", "./usr/share/doc/register/README.md",
              "./usr/share/doc/register/copyright", "./usr/share/doc/register/changelog.Debian.gz"):
        assert f in files, (f, files)
    lintian(deb)
    # Debian's conventions for a service: maintainer scripts, conffiles
    control = sh("dpkg-deb", "-I", deb)
    for f in ("postinst", "prerm", "postrm", "conffiles"):
        assert f" {f}" in control, (f, control)
    assert "./etc/default/register" in files and "./etc/register/policy.lua" in files, files
    assert "init-system-helpers" in info, info
    suite.defer(lambda: subprocess.run(["dpkg", "--purge", "register"], capture_output=True))
    sh("dpkg", "-i", deb, timeout=120)
    assert sh("/usr/bin/register", "--version") == f"register {version}"
    # the changelog's newest entry is this package's version
    head = gzip.open("/usr/share/doc/register/changelog.Debian.gz").readline().decode()
    assert head.startswith(f"register ({pkg_version}) "), (head, pkg_version)
    # the copyright file carries the LICENSE
    with open(os.path.join(SRC, "LICENSE")) as f:
        license_text = " ".join(f.read().split("\n", 3)[3].split())
    with open("/usr/share/doc/register/copyright") as f:
        copyright_text = f.read()
    assert copyright_text.startswith("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/")
    assert license_text in " ".join(l.strip() for l in copyright_text.splitlines() if l.strip() != "."), \
        "packaging/copyright does not carry LICENSE"
    out = sh("/usr/bin/register", "check", "--host-ip", "10.0.0.9", "--hostname", "node9",
             "/usr/share/register/examples/registrator.lua", os.path.join(SRC, "tests/data/inspect/multi.json"))
    keys = [json.loads(l)["key"] for l in out.splitlines()]
    assert "/services/web-80/node9:web-1:80" in keys, keys
    out = sh("/usr/bin/register", "check", "/usr/share/register/default.lua",
             os.path.join(SRC, "tests/data/inspect/multi.json"))
    assert json.loads(out)["key"].startswith("/registered/127.0.0.1/bbx/")
    man = gzip.open("/usr/share/man/man8/register.8.gz").read().decode()
    assert man.startswith(".TH REGISTER 8") and "--deregister-on-exit" in man.replace("\\-", "-")
    assert man.splitlines()[0].split('"')[3] == f"register {version}", man.splitlines()[0]
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
    # the sandboxing is in the installed unit
    for opt in ("NoNewPrivileges=yes", "ProtectSystem=strict", "MemoryDenyWriteExecute=yes"):
        assert opt in unit, opt
    # deb-systemd-helper enabled register.service, not register-docker.service
    # (no systemd runs here: the links tell)
    wants = "/etc/systemd/system/multi-user.target.wants/"
    links = unit_links()
    assert wants + "register.service" in links and wants + "register-docker.service" not in links, links
    # register watch needs its settings first: installed, not enabled
    assert wants + "register-watch.service" not in links, links
    assert "/etc/default/register-watch" in status, status
    wunit = open("/usr/lib/systemd/system/register-watch.service").read()
    assert "ExecStart=/usr/bin/register watch" in wunit and "EnvironmentFile=-/etc/default/register-watch" in wunit
    # with only the environment, the way the unit runs it: a file rendered
    wd = tempfile.mkdtemp(prefix="rp")
    suite.defer(lambda: shutil.rmtree(wd, ignore_errors=True))
    with open(os.path.join(wd, "r.lua"), "w") as f:
        f.write('return function(kv, ctx) return "prefix " .. ctx.prefix .. "\\n" end\n')
    r = subprocess.run(["/usr/bin/register", "watch", "--once", "--timeout", "1"], capture_output=True, text=True,
                       env=dict(os.environ, REGISTER_WATCH_PREFIX="/x", REGISTER_WATCH_RENDER=os.path.join(wd, "r.lua"),
                                REGISTER_WATCH_OUT=os.path.join(wd, "out"), ETCD_ENDPOINT=f"127.0.0.1:{free_port()}"),
                       timeout=30)
    assert r.returncode == 1 and "not rendered within 1 s" in r.stderr, r.stderr
    sh("dpkg", "-r", "register", timeout=120)
    assert not os.path.exists("/usr/bin/register")
    assert os.path.exists("/etc/default/register")  # conffiles stay until purge
    # a removal masks nothing (dh_installsystemd's scripts since debhelper
    # 13.11): the links stay as they were
    assert unit_links() == links, (unit_links(), links)
    # a reinstall finds both units as they were, register-docker.service
    # not enabled; and a mask that the 0.1.0 .deb's postrm left on removal
    # goes
    sh("env", "DPKG_MAINTSCRIPT_PACKAGE=register", "DPKG_MAINTSCRIPT_NAME=postrm",
       "deb-systemd-helper", "mask", "register.service", "register-docker.service")
    assert unit_links()["/etc/systemd/system/register-docker.service"] == "/dev/null", unit_links()
    sh("dpkg", "-i", deb, timeout=120)
    assert unit_links() == links, (unit_links(), links)
    sh("dpkg", "-r", "register", timeout=120)
    sh("dpkg", "--purge", "register", timeout=120)
    assert not os.path.exists("/etc/default/register")
    assert unit_links() == {}, unit_links()


suite.run()

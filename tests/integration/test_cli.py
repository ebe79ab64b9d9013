"""Command line: bad flags are one clear line and exit 2; --help and
--version exit 0."""
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
from harness import REGISTER, Suite  # noqa: E402

suite = Suite()


def run(*args, env=None):
    e = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    if env:
        e.update(env)
    return subprocess.run([REGISTER, *args], capture_output=True, text=True, env=e, timeout=10)


@suite.test
def bad_flags_are_one_line_and_exit_2():
    cases = [
        ((), {}, "HOST_IP is not set"),
        ((), {"HOST_IP": "300.1.1.1"}, 'HOST_IP "300.1.1.1" is not an IPv4 or IPv6 address'),
        (("--host-ip", "nope"), {}, '--host-ip "nope" is not an IPv4 or IPv6 address'),
        (("--frobnicate",), {"HOST_IP": "10.0.0.1"}, 'unknown option "--frobnicate"'),
        (("--etcd", "ftp://1.2.3.4"), {"HOST_IP": "10.0.0.1"}, "scheme must be http or https"),
        ((), {"HOST_IP": "10.0.0.1", "ETCD_ENDPOINT": "1.2.3.4:xyz"}, "ETCD_ENDPOINT"),
        (("--docker", "ssh://h"), {"HOST_IP": "10.0.0.1"}, 'Docker host "ssh://h"'),
        (("--ttl", "soon"), {"HOST_IP": "10.0.0.1"}, '--ttl "soon"'),
        (("--log-level",), {"HOST_IP": "10.0.0.1"}, "option --log-level needs a value"),
    ]
    for args, env, msg in cases:
        r = run(*args, env=env)
        assert r.returncode == 2, (args, env, r.returncode, r.stderr)
        assert r.stdout == "", r.stdout
        lines = r.stderr.splitlines()
        assert len(lines) == 1, (args, r.stderr)
        assert msg in lines[0] and lines[0].startswith("register: "), (msg, lines)


@suite.test
def missing_policy_file_is_one_line_and_fails():
    r = run("--policy", "/nonexistent/p.lua", env={"HOST_IP": "10.0.0.1"})
    assert r.returncode == 1, r.returncode
    assert "/nonexistent/p.lua" in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr


@suite.test
def help_and_version():
    r = run("--help")
    assert r.returncode == 0 and "--host-ip" in r.stdout and "ETCD_ENDPOINT" in r.stdout
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("register ")


suite.run()

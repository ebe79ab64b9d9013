"""Command line: bad flags are one clear line and exit 2; --help and
--version exit 0.  `register check`'s flags, and its --container, which
reads inspect documents from an engine (the fake Docker API here)."""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
from fake_docker import FakeDocker  # noqa: E402
from harness import REGISTER, Suite, tmpdir  # noqa: E402

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
        # a policy call may hold the loop to its limit: the lease must outlast it
        (("--ttl", "3", "--policy-timeout", "2000"), {"HOST_IP": "10.0.0.1"},
         "--policy-timeout 2000 ms is more than half of --ttl 3 s"),
    ]
    for args, env, msg in cases:
        r = run(*args, env=env)
        assert r.returncode == 2, (args, env, r.returncode, r.stderr)
        assert r.stdout == "", r.stdout
        lines = r.stderr.splitlines()
        assert len(lines) == 1, (args, r.stderr)
        assert msg in lines[0] and lines[0].startswith("register: "), (msg, lines)


@suite.test
def a_public_key_file_that_cannot_be_read_names_its_flag_and_exits_2():
    r = run("--policy-key", "/register/policy", "--policy-pubkey", "/nonexistent/k.pem",
            "--etcd", "http://127.0.0.1:9", "--docker", "unix:///nonexistent/d.sock",
            env={"HOST_IP": "10.0.0.1"})
    assert r.returncode == 2, (r.returncode, r.stderr)
    said = [l for l in r.stderr.splitlines() if " error " in l]
    assert len(said) == 1 and "--policy-pubkey: /nonexistent/k.pem: No such file or directory" in said[0], r.stderr


@suite.test
def missing_policy_file_is_one_line_and_fails():
    r = run("--policy", "/nonexistent/p.lua", env={"HOST_IP": "10.0.0.1"})
    assert r.returncode == 1, r.returncode
    assert "/nonexistent/p.lua" in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr


@suite.test
def help_and_version():
    r = run("--help")
    assert r.returncode == 0 and "--host-ip" in r.stdout and "ETCD_ENDPOINT" in r.stdout
    # the check subcommand and its options are listed too
    for word in ("check [OPTIONS] POLICY", "--assume-checks", "--container NAME|ID", "register check --help"):
        assert word in r.stdout, (word, r.stdout)
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("register ")
    r = run("check", "--help")
    assert r.returncode == 0 and r.stdout.startswith("Usage: register check ") and r.stderr == "", r.stderr


@suite.test
def check_bad_flags_are_one_line_and_exit_2():
    cases = [
        (("check",), "no POLICY given"),
        (("check", "--frobnicate", "default"), 'unknown option "--frobnicate"'),
        (("check", "--hostname"), "option --hostname needs a value"),
        (("check", "--hostname", "", "default"), "--hostname is empty"),
        (("check", "--host-ip", "nope", "default"), 'host IP "nope" is not an IPv4 or IPv6 address'),
        (("check", "--policy-timeout", "5", "default"), '--policy-timeout "5"'),
        (("check", "--assume-checks", "maybe", "default"), '--assume-checks "maybe" is not passing'),
        (("check", "--assume-checks", "80/tcp=up", "default"), '"up" is not passing, failing or pending'),
        (("check", "--container", "", "default"), "--container needs a container name or id"),
        (("check", "--container", "web", "--docker", "ssh://h", "default"),
         '--docker "ssh://h" is not unix:///path or tcp://host:port'),
        (("check", "--container", "web", "--docker", "tcp://h:99999", "default"), '--docker "tcp://h:99999"'),
        (("check", "--container", "web", "--docker", "unix://rel/sock", "default"), "needs an absolute path"),
        (("check", "--docker", "ssh://h", "default"), '--docker "ssh://h"'),  # checked without --container too
    ]
    for args, msg in cases:
        r = run(*args)
        assert r.returncode == 2, (args, r.returncode, r.stderr)
        assert r.stdout == "", r.stdout
        lines = r.stderr.splitlines()
        assert len(lines) == 1, (args, r.stderr)
        assert msg in lines[0] and lines[0].startswith("register check: "), (msg, lines)


# ---- register check --container: the engine's inspect documents ----

def check(*args, env=None):
    return run("check", "--hostname", "node9", "--host-ip", "10.0.0.9", *args, env=env)


def records(r):
    return [json.loads(line) for line in r.stdout.splitlines()]


@suite.test
def check_reads_containers_from_the_engine():
    fake = FakeDocker(os.path.join(tmpdir("rk"), "d.sock")).start()
    suite.defer(fake.stop)
    web = fake.add(image="team/web:1", name="web-1", ports=[("80/tcp", [("0.0.0.0", "8080")]),
                                                           ("53/udp", [("127.0.0.1", "5353")])])
    db = fake.add(image="db", name="db-1", ports=[("5432/tcp", [("127.0.0.1", "15432")])])
    # the fake knows containers by id; dockerd finds them by name too
    fake.containers["web-1"] = fake.containers[web]
    # the same document from a file and from the engine: the same bytes
    saved = os.path.join(tmpdir("rk"), "web.json")
    with open(saved, "w") as f:
        json.dump([fake.containers[web]], f)
    from_file = check("default", saved)
    assert from_file.returncode == 0 and len(records(from_file)) == 1, from_file.stderr
    r = check("--docker", fake.host, "--container", web, "default")
    assert r.returncode == 0, r.stderr
    assert r.stdout == from_file.stdout, (r.stdout, from_file.stdout)
    assert r.stderr == "register check: 1 container, 1 record, 0 failed, 0 rejected\n", r.stderr
    # by name, several, after the files, and from DOCKER_HOST; the API
    # version is the engine's (/_ping's Api-Version)
    fake.requests.clear()
    r = check("--container", "web-1", "--container=" + db, "default", saved, env={"DOCKER_HOST": fake.host})
    assert r.returncode == 0, r.stderr
    got = [(o["container"], o["key"]) for o in records(r)]
    assert got == [(web, f"/registered/10.0.0.9/team::web:1/{web}"), (web, f"/registered/10.0.0.9/team::web:1/{web}"),
                   (db, f"/registered/10.0.0.9/db/{db}")], got
    assert "register check: 3 containers, 3 records, 0 failed, 0 rejected" in r.stderr, r.stderr
    assert ("GET", "/v1.41/containers/web-1/json") in fake.requests, fake.requests
    # a container the engine does not have: one line naming it, exit 1; the
    # others are still checked
    r = check("--docker", fake.host, "--container", "nope", "--container", db, "default")
    assert r.returncode == 1, r.stderr
    assert [o["container"] for o in records(r)] == [db], r.stdout
    errors = [line for line in r.stderr.splitlines() if "nope" in line]
    assert errors == [f'register check: --container "nope": no such container at {fake.host}'], r.stderr
    assert r.stderr.splitlines()[-1] == \
        "register check: 1 container, 1 record, 0 failed, 0 rejected, 1 input not read", r.stderr
    # a failing inspect says what Docker said
    fake.fault_inspect(db, 500)
    r = check("--docker", fake.host, "--container", db, "default")
    assert r.returncode == 1, r.stderr
    assert f'register check: --container "{db}": Docker at {fake.host}: HTTP 500: inspect exploded' \
        in r.stderr.splitlines(), r.stderr
    # the policy sees what a live container has: --assume-checks by port
    pol = os.path.join(tmpdir("rk"), "states.lua")
    with open(pol, "w") as f:
        f.write("""return {
  checks = function(c) return { { port = "80/tcp" } } end,
  records = function(c) return { ["/s/" .. c.name] = c.checks[1].state .. " " .. c.state.status } end }
""")
    r = check("--docker", fake.host, "--assume-checks", "80/tcp=failing", "--container", web, pol)
    assert r.returncode == 0, r.stderr
    assert [(o["key"], o["value"]) for o in records(r)] == [("/s/web-1", "failing running")], r.stdout


@suite.test
def check_api_version_and_an_engine_that_is_not_there():
    # an engine without Api-Version on /_ping: /version says it; a newer
    # engine than this code knows is spoken to in the newest API it knows
    for api, want in ((None, "/v1.41/"), ("1.99", "/v1.52/"), ("1.24", "/v1.24/")):
        fake = FakeDocker(os.path.join(tmpdir("rk"), "d.sock"), api=api).start()
        suite.defer(fake.stop)
        cid = fake.add()
        r = check("--docker", fake.host, "--container", cid, "default")
        assert r.returncode == 0 and len(records(r)) == 1, (api, r.stderr)
        assert ("GET", want + f"containers/{cid}/json") in fake.requests, (api, fake.requests)
        fake.stop()
    # nothing listens: one line for the engine, however many containers
    sock = os.path.join(tmpdir("rk"), "none.sock")
    r = check("--docker", "unix://" + sock, "--container", "a", "--container", "b", "default")
    assert r.returncode == 1, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 2, r.stderr
    assert lines[0].startswith(f"register check: cannot reach Docker at unix://{sock}: "), lines
    assert lines[1] == "register check: 0 containers, 0 records, 0 failed, 0 rejected, 2 inputs not read", lines


suite.run()

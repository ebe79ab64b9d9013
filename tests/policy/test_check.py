"""`register check`: policies run over saved `docker inspect` output, no
Docker and no etcd needed."""
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))
from harness import REGISTER, Suite  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), "..", "data", "inspect")
suite = Suite()


def check(*args, env=None):
    e = dict(os.environ)
    e.pop("HOST_IP", None)
    if env:
        e.update(env)
    return subprocess.run([REGISTER, "check", *args], capture_output=True, text=True, env=e, timeout=30)


def sample(name):
    return json.load(open(os.path.join(DATA, name)))[0]


@suite.test
def default_policy_over_samples():
    files = [os.path.join(DATA, f) for f in ("multi.json", "twobind.json", "namespaced.json", "unpublished.json")]
    r = check("--host-ip", "10.0.0.9", "default", *files)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(l) for l in r.stdout.splitlines()]
    assert len(lines) == 3, lines  # unpublished writes nothing
    m = sample("multi.json")
    assert lines[0]["container"] == m["Id"]
    assert lines[0]["key"] == "/registered/10.0.0.9/bbx/" + m["Id"]
    value = json.loads(lines[0]["value"], object_pairs_hook=list)
    assert [k for k, _ in value[0]] == ["container", "image", "ip", "public_port", "private_port", "port_type"]
    assert [(dict(v)["private_port"], dict(v)["port_type"]) for v in value] == [("53", "udp"), ("80", "tcp"), ("9200", "tcp")]
    ns = sample("namespaced.json")
    assert lines[2]["key"] == "/registered/10.0.0.9/localhost:5000::team::web:1.2/" + ns["Id"]


@suite.test
def host_ip_from_environment_and_stdin():
    text = open(os.path.join(DATA, "multi.json")).read()
    e = dict(os.environ, HOST_IP="192.0.2.1")
    r = subprocess.run([REGISTER, "check", "default", "-"], input=text, capture_output=True, text=True, env=e)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["key"].startswith("/registered/192.0.2.1/bbx/")


@suite.test
def broken_policy_exits_non_zero_with_traceback():
    d = tempfile.mkdtemp()
    p = os.path.join(d, "broken.lua")
    with open(p, "w") as f:
        f.write("local function helper(c)\n  return c.nothing.here\nend\n"
                "return { records = function(c) local v = helper(c) return v end }\n")
    r = check(p, os.path.join(DATA, "multi.json"))
    assert r.returncode != 0
    assert "broken.lua:2: attempt to index a nil value (field 'nothing')" in r.stderr, r.stderr
    assert "stack traceback" in r.stderr and "helper" in r.stderr, r.stderr
    with open(p, "w") as f:
        f.write("return {\n")
    r = check(p)
    assert r.returncode != 0 and "broken.lua" in r.stderr, r.stderr
    r = check(os.path.join(d, "missing.lua"))
    assert r.returncode != 0 and "missing.lua" in r.stderr, r.stderr


@suite.test
def bad_inspect_input_is_an_error():
    d = tempfile.mkdtemp()
    p = os.path.join(d, "bad.json")
    with open(p, "w") as f:
        f.write('[{"Id": "abc", "Config": ')
    r = check("default", p)
    assert r.returncode != 0
    assert "invalid JSON at byte" in r.stderr, r.stderr


suite.run()

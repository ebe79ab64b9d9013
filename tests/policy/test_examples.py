"""Each example policy in lua/examples/, run through `register check` over
saved `docker inspect` output (tests/data/inspect/), variants of it made
here (labels, health, wildcard bindings, images), and the helpers of the
`register` module.

every_example_loads_and_is_tested runs the tests of this script and of
test_checks.py (health-checks.lua), notes which examples each one runs
(REGISTER_TEST_EXAMPLES_LOG), then runs them again on broken copies of
each example (REGISTER_TEST_EXAMPLES names the directory of examples):
every example must be run by a test, and each broken copy must make one
of its tests fail."""
import concurrent.futures
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))
from harness import REGISTER, Suite, log  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DATA = os.path.join(ROOT, "tests", "data", "inspect")
EX = os.environ.get("REGISTER_TEST_EXAMPLES") or os.path.join(ROOT, "lua", "examples")
DEFAULT = os.path.join(ROOT, "lua", "default.lua")
IP = "10.0.0.9"
suite = Suite()
TMP = tempfile.mkdtemp(prefix="rpx")
suite.defer(lambda: shutil.rmtree(TMP, ignore_errors=True))


def ran_example(path):
    """Notes that this test ran the example at path (see the top)."""
    used = os.environ.get("REGISTER_TEST_EXAMPLES_LOG")
    if used and os.path.dirname(os.path.abspath(path)) == os.path.abspath(EX):
        with open(used, "a") as f:
            f.write(os.path.basename(path) + "\n")


def sample(name):
    return json.load(open(os.path.join(DATA, name + ".json")))[0]


def variant(base, **changes):
    """A copy of a sample with fields changed: image=, labels=, env=,
    health=, ports= (list of (key, [(ip, port)]) in order), name=."""
    c = copy.deepcopy(sample(base))
    if "image" in changes:
        c["Config"]["Image"] = changes["image"]
    if "labels" in changes:
        c["Config"]["Labels"] = changes["labels"]
    if "env" in changes:
        c["Config"]["Env"] = changes["env"]
    if "health" in changes:
        c["State"]["Health"] = {"Status": changes["health"], "FailingStreak": 0, "Log": []}
    if "ports" in changes:
        c["NetworkSettings"]["Ports"] = {k: (None if b is None else [{"HostIp": i, "HostPort": p} for i, p in b])
                                         for k, b in changes["ports"]}
    if "name" in changes:
        c["Name"] = "/" + changes["name"]
    return c


def check(policy, *docs, expect_rc=0, host_ip=IP):
    files = []
    for i, d in enumerate(docs):
        if isinstance(d, str):
            files.append(os.path.join(DATA, d + ".json"))
        else:
            p = os.path.join(TMP, f"doc{len(os.listdir(TMP))}-{i}.json")
            json.dump(d, open(p, "w"))
            files.append(p)
    path = os.path.join(EX, policy)  # policy may be a path of its own (DEFAULT)
    ran_example(path)
    r = subprocess.run([REGISTER, "check", "--host-ip", host_ip, "--hostname", "node9",
                        path, *files], capture_output=True, text=True, timeout=30)
    assert r.returncode == expect_rc, (r.returncode, r.stderr)
    return [json.loads(l) for l in r.stdout.splitlines()]


def records(out):
    return {o["key"]: o["value"] for o in out if "key" in o}


def port(c, key, i=0):
    return c["NetworkSettings"]["Ports"][key][i]["HostPort"]


@suite.test
def only_images():
    ns = sample("namespaced")
    wanted = ("namespaced", variant("multi", image="nginx:1.25"), variant("multi", image="bitnami/elasticsearch:8"))
    out = records(check("only-images.lua", "multi", *wanted))
    keys = sorted(out)
    assert len(keys) == 3, keys
    assert f"/registered/{IP}/localhost:5000::team::web:1.2/{ns['Id']}" in out
    assert any("/nginx:1.25/" in k for k in keys) and any("/bitnami::elasticsearch:8/" in k for k in keys)
    assert not any("/bbx/" in k for k in keys)  # not in the list: left out
    # what it registers, it registers as the default policy does
    assert out == records(check(DEFAULT, *wanted)), out


@suite.test
def registrator_style():
    m, ns = sample("multi"), sample("namespaced")
    out = records(check("registrator.lua", "multi", "namespaced"))
    assert out == {
        "/services/web-53/node9:web-1:53:udp": "127.0.0.1:5353",
        "/services/web-80/node9:web-1:80": f"127.0.0.1:{port(m, '80/tcp')}",
        "/services/web-9200/node9:web-1:9200": f"127.0.0.1:{port(m, '9200/tcp')}",
        # SERVICE_80_NAME (a label) wins over SERVICE_NAME for port 80
        "/services/frontend/node9:nsweb:80": f"127.0.0.1:{port(ns, '80/tcp')}",
        "/services/web-53/node9:nsweb:53:udp": f"127.0.0.1:{port(ns, '53/udp')}",
    }, out
    # one port, no SERVICE_NAME: the image's basename, no suffix; a wildcard
    # binding carries the host's address
    one = variant("multi", env=[], labels={}, image="localhost:5000/team/api:2",
                  ports=[("8080/tcp", [("0.0.0.0", "40001")])], name="api-1")
    assert records(check("registrator.lua", one)) == {"/services/api/node9:api-1:8080": f"{IP}:40001"}
    # SERVICE_IGNORE drops the container; SERVICE_<port>_IGNORE one port
    assert records(check("registrator.lua", variant("multi", labels={"SERVICE_IGNORE": "true"}))) == {}
    some = records(check("registrator.lua", variant("multi", labels={"SERVICE_53_IGNORE": "1"})))
    assert sorted(some) == ["/services/web-80/node9:web-1:80", "/services/web-9200/node9:web-1:9200"], some
    # labels win over env for the same key
    lab = records(check("registrator.lua", variant("twobind", env=["SERVICE_NAME=fromenv"],
                                                   labels={"SERVICE_NAME": "fromlabel"})))
    assert all(k.startswith("/services/fromlabel/") for k in lab), lab


@suite.test
def skydns_style():
    m = sample("multi")
    out = records(check("skydns.lua", "multi"))
    assert out["/skydns/local/skydns/web-80/node9-web-1-80"] == '{"host":"127.0.0.1","port":%s}' % port(m, "80/tcp")
    assert out["/skydns/local/skydns/web-53/node9-web-1-53-udp"] == '{"host":"127.0.0.1","port":5353}'
    assert len(out) == 3


@suite.test
def coredns_layout():
    m = sample("multi")
    out = records(check("coredns.lua", "multi"))
    # the SkyDNS layout, a DNS label per segment, the value with a ttl
    assert out == {
        "/skydns/local/skydns/web-53/node9-web-1-53-udp": '{"host":"127.0.0.1","port":5353,"ttl":30}',
        "/skydns/local/skydns/web-80/node9-web-1-80": '{"host":"127.0.0.1","port":%s,"ttl":30}' % port(m, "80/tcp"),
        "/skydns/local/skydns/web-9200/node9-web-1-9200": '{"host":"127.0.0.1","port":%s,"ttl":30}' % port(m, "9200/tcp"),
    }, out
    # wildcard bindings: the host's address (an IPv6 one bare: an AAAA record)
    wild = variant("multi", env=[], labels={}, name="api-1", image="api",
                   ports=[("8080/tcp", [("0.0.0.0", "40001"), ("::", "40001")])])
    assert records(check("coredns.lua", wild)) == {
        "/skydns/local/skydns/api/node9-api-1-8080": '{"host":"%s","port":40001,"ttl":30}' % IP}
    assert records(check("coredns.lua", wild, host_ip="fd00::5")) == {
        "/skydns/local/skydns/api/node9-api-1-8080": '{"host":"fd00::5","port":40001,"ttl":30}'}
    six = variant("multi", env=[], labels={}, name="api-1", image="api", ports=[("8080/tcp", [("::1", "7")])])
    assert records(check("coredns.lua", six)) == {
        "/skydns/local/skydns/api/node9-api-1-8080": '{"host":"::1","port":7,"ttl":30}'}
    # names are lower case, one label each: anything but [a-z0-9-] is '-',
    # and a label longer than 63 bytes is cut and ends in a hash of the whole
    odd = variant("multi", env=[], labels={"SERVICE_NAME": "My_App.v2"}, name="Web_1." + "x" * 80,
                  ports=[("80/tcp", [("127.0.0.1", "9")])])
    out = records(check("coredns.lua", odd))
    assert len(out) == 1, out
    key = list(out)[0]
    root, svc, inst = key.rsplit("/", 2)
    assert root == "/skydns/local/skydns" and svc == "my-app-v2", key
    assert len(inst) <= 63 and inst.startswith("node9-web-1-xxx"), inst
    assert all(ch.isdigit() or ch == "-" or "a" <= ch <= "z" for ch in inst), inst
    longer = variant("multi", env=[], labels={"SERVICE_NAME": "My_App.v2"}, name="Web_1." + "x" * 81,
                     ports=[("80/tcp", [("127.0.0.1", "9")])])
    inst2 = list(records(check("coredns.lua", longer)))[0].rsplit("/", 1)[1]
    assert inst2 != inst and len(inst2) <= 63, (inst, inst2)  # the hash tells them apart
    # two bindings of one port: two instances, the address in the label
    two = variant("multi", env=[], labels={}, name="w", image="web",
                  ports=[("80/tcp", [("127.0.0.1", "8080"), ("127.0.0.2", "8080"), ("::1", "8081")])])
    assert records(check("coredns.lua", two)) == {
        "/skydns/local/skydns/web/node9-w-80-127-0-0-1": '{"host":"127.0.0.1","port":8080,"ttl":30}',
        "/skydns/local/skydns/web/node9-w-80-127-0-0-2": '{"host":"127.0.0.2","port":8080,"ttl":30}',
        "/skydns/local/skydns/web/node9-w-80-1": '{"host":"::1","port":8081,"ttl":30}'}
    # SERVICE_IGNORE, as in registrator.lua
    assert records(check("coredns.lua", variant("multi", labels={"SERVICE_IGNORE": "true"}))) == {}


@suite.test
def ipv6_host_port_in_brackets():
    # a binding to an IPv6 address, and a :: wildcard on a host with an IPv6
    # HOST_IP: "[addr]:port" wherever an example writes host:port
    ports = [("80/tcp", [("::1", "18091")]), ("81/tcp", [("::", "18092")]),
             ("82/tcp", [("127.0.0.1", "18093")])]
    c = variant("multi", env=[], labels={}, name="w", image="web", ports=ports)
    want = {"/services/web-80/node9:w:80": "[::1]:18091",
            "/services/web-81/node9:w:81": "[fd00::5]:18092",
            "/services/web-82/node9:w:82": "127.0.0.1:18093"}
    assert records(check("registrator.lua", c, host_ip="fd00::5")) == want
    assert records(check("host-network.lua", c, host_ip="fd00::5")) == want
    # an IPv4 HOST_IP for the :: wildcard
    assert records(check("registrator.lua", c))["/services/web-81/node9:w:81"] == f"{IP}:18092"
    base = f"/registered/fd00::5/web/{c['Id']}"
    assert records(check("per-port.lua", c, host_ip="fd00::5")) == {
        base + "/80/tcp": "[::1]:18091", base + "/81/tcp": "[fd00::5]:18092",
        base + "/82/tcp": "127.0.0.1:18093"}
    # a host-network container on an IPv6 HOST_IP
    host = on_networks("multi", {"host": ("", "")}, mode="host", ports=[], name="h", env=[], labels={})
    host["Config"]["ExposedPorts"] = {"8080/tcp": {}}
    assert records(check("host-network.lua", host, host_ip="fd00::5")) == {
        "/services/bbx/node9:h:8080": "[fd00::5]:8080"}


@suite.test
def registrator_ids_of_a_port_bound_twice():
    # -p 127.0.0.1:8080:80 -p 127.0.0.2:8080:80: one key each, the address
    # at the end of the id (an IPv6 one in brackets)
    two = variant("multi", env=[], labels={}, name="w", image="web",
                  ports=[("80/tcp", [("127.0.0.1", "8080"), ("127.0.0.2", "8080"), ("::1", "8081")]),
                         ("53/udp", [("127.0.0.1", "53"), ("127.0.0.2", "53")]),
                         ("90/tcp", [("127.0.0.1", "9090")])])
    want = {"/services/web-80/node9:w:80:127.0.0.1": "127.0.0.1:8080",
            "/services/web-80/node9:w:80:127.0.0.2": "127.0.0.2:8080",
            "/services/web-80/node9:w:80:[::1]": "[::1]:8081",
            "/services/web-53/node9:w:53:udp:127.0.0.1": "127.0.0.1:53",
            "/services/web-53/node9:w:53:udp:127.0.0.2": "127.0.0.2:53",
            # a port with one binding keeps registrator's id
            "/services/web-90/node9:w:90": "127.0.0.1:9090"}
    assert records(check("registrator.lua", two)) == want
    assert records(check("host-network.lua", two)) == want
    # two bindings on one address (two host ports): the address and the port
    same = variant("multi", env=[], labels={}, name="w", image="web",
                   ports=[("80/tcp", [("127.0.0.1", "8080"), ("127.0.0.1", "8081"), ("127.0.0.2", "8080")])])
    assert records(check("registrator.lua", same)) == {
        "/services/web/node9:w:80:127.0.0.1:8080": "127.0.0.1:8080",
        "/services/web/node9:w:80:127.0.0.1:8081": "127.0.0.1:8081",
        "/services/web/node9:w:80:127.0.0.2": "127.0.0.2:8080"}
    # a wildcard and a named binding of one port: the wildcard's address is
    # the host's, as in its value
    mixed = variant("multi", env=[], labels={}, name="w", image="web",
                    ports=[("80/tcp", [("0.0.0.0", "8080"), ("::", "8080"), ("127.0.0.1", "9090")])])
    assert records(check("registrator.lua", mixed)) == {
        f"/services/web/node9:w:80:{IP}": f"{IP}:8080",
        "/services/web/node9:w:80:127.0.0.1": "127.0.0.1:9090"}
    # skydns.lua: the same, as DNS labels
    assert sorted(records(check("skydns.lua", same))) == [
        "/skydns/local/skydns/web/node9-w-80-127-0-0-1-8080",
        "/skydns/local/skydns/web/node9-w-80-127-0-0-1-8081",
        "/skydns/local/skydns/web/node9-w-80-127-0-0-2"]


@suite.test
def one_key_per_port():
    m = sample("multi")
    base = f"/registered/{IP}/bbx/{m['Id']}"
    out = records(check("per-port.lua", "multi"))
    assert out == {base + "/53/udp": "127.0.0.1:5353",
                   base + "/80/tcp": f"127.0.0.1:{port(m, '80/tcp')}",
                   base + "/9200/tcp": f"127.0.0.1:{port(m, '9200/tcp')}"}, out
    wild = variant("multi", ports=[("80/tcp", [("0.0.0.0", "1"), ("::", "1")])])
    assert records(check("per-port.lua", wild)) == {base + "/80/tcp": f"{IP}:1"}


@suite.test
def default_plus_latest_and_host_ip():
    m = sample("multi")
    out = records(check("default-plus.lua", variant("multi", ports=[("80/tcp", [("0.0.0.0", "7"), ("127.0.0.1", "8")])])))
    key = f"/registered/{IP}/bbx:latest/{m['Id']}"
    assert out == {key: '[{"container":"%s","image":"bbx:latest","ip":"%s","public_port":"7","private_port":"80","port_type":"tcp"},'
                        '{"container":"%s","image":"bbx:latest","ip":"127.0.0.1","public_port":"8","private_port":"80","port_type":"tcp"}]'
                   % (m["Id"], IP, m["Id"])}, out
    # tagged, digested and by-id images are left as they are
    for image in ("localhost:5000/team/web:1.2", "busybox@sha256:" + "a" * 64, "sha256:" + "b" * 64,
                  "localhost:5000/team/web"):
        want = image if image != "localhost:5000/team/web" else image + ":latest"
        out = records(check("default-plus.lua", variant("multi", image=image)))
        assert list(out)[0] == f"/registered/{IP}/{want.replace('/', '::')}/{m['Id']}", (image, out)


@suite.test
def healthy_only():
    h = sample("health")
    assert h["State"]["Health"]["Status"] == "starting"
    assert records(check("healthy-only.lua", "health")) == {}
    healthy = variant("health", health="healthy")
    out = records(check("healthy-only.lua", healthy))
    assert len(out) == 1 and out == records(check(DEFAULT, healthy)), out
    assert records(check("healthy-only.lua", variant("health", health="unhealthy"))) == {}
    # no healthcheck at all: registered as usual
    assert records(check("healthy-only.lua", "multi")) == records(check(DEFAULT, "multi"))


@suite.test
def webhook_prints_its_calls_in_check():
    out = check("webhook.lua", "multi")
    assert len(out) == 2, out
    rec, http = out
    # the default policy's record, and its POST
    assert records([rec]) == records(check(DEFAULT, "multi")), rec
    assert http["op"] == "http" and http["method"] == "POST"
    assert http["url"] == "http://127.0.0.1:8080/hook"
    assert http["headers"] == ["Content-Type: application/json"]
    assert json.loads(http["body"]) == {"op": "put", "key": rec["key"], "value": rec["value"]}


@suite.test
def helpers_of_the_register_module():
    p = os.path.join(TMP, "helpers.lua")
    with open(p, "w") as f:
        f.write(r'''
local register = require "register"
local function eq(a, b, what)
  if a ~= b then error(("%s: got %s, want %s"):format(what, tostring(a), tostring(b)), 2) end
end
local function img(ref, registry, repository, tag, digest, basename)
  local i = register.image(ref)
  eq(i.registry, registry, ref .. " registry")
  eq(i.repository, repository, ref .. " repository")
  eq(i.tag, tag, ref .. " tag")
  eq(i.digest, digest, ref .. " digest")
  eq(i.basename, basename, ref .. " basename")
end
img("localhost:5000/team/web:1.2", "localhost:5000", "team/web", "1.2", nil, "web")
img("busybox", nil, "busybox", nil, nil, "busybox")
img("busybox:1.36", nil, "busybox", "1.36", nil, "busybox")
img("img@sha256:abcd", nil, "img", nil, "sha256:abcd", "img")
img("quay.io/org/app:v1@sha256:ff", "quay.io", "org/app", "v1", "sha256:ff", "app")
img("library/nginx", nil, "library/nginx", nil, nil, "nginx")
img("localhost/x", "localhost", "x", nil, nil, "x")
img("registry:5000/x", "registry:5000", "x", nil, nil, "x")
eq(register.image("sha256:" .. ("a"):rep(64)).id, "sha256:" .. ("a"):rep(64), "id")
eq(register.image("localhost:5000/team/web:1.2").name, "localhost:5000/team/web", "name")

local c = { env = { SERVICE_NAME = "envname", SERVICE_TAGS = "a,b", SERVICE_80_NAME = "envport" },
            labels = { SERVICE_NAME = "labelname", SERVICE_80_TAGS = "x" } }
local m, fp = register.meta(c, "80/tcp")
eq(m.name, "envport", "port-specific beats generic (even from env)")
eq(m.tags, "x", "port tags")
eq(fp.name, true, "from_port")
m = register.meta(c, 443)
eq(m.name, "labelname", "labels win over env")
eq(m.tags, "a,b", "generic tags")
eq(register.wildcard("0.0.0.0") and register.wildcard("::") and register.wildcard(""), true, "wildcards")
eq(register.wildcard("127.0.0.1"), false, "not a wildcard")
eq(#register.bindings({ ports = {
  { private_port = "80", proto = "tcp", host_ip = "0.0.0.0", host_port = "1" },
  { private_port = "80", proto = "tcp", host_ip = "::", host_port = "2" },
  { private_port = "80", proto = "udp", host_ip = "::", host_port = "3" } } }), 2, "twin folded, udp kept")
eq(register.json.encode(register.json.array()), "[]", "empty array")
eq(register.json.encode({ b = 1, a = { 1, 2 } }), '{"a":[1,2],"b":1}', "sorted keys")
local v, err = register.json.decode("[1, {\"a\": null}]")
eq(v[2].a, register.null, "null")
eq(select(2, register.json.decode("{")) ~= nil, true, "decode error")
-- I/O is refused in records (and at load time)
local ok, e = pcall(register.http.request, { url = "http://127.0.0.1:1/" })
eq(ok, false, "http from the top level")
assert(e:find("only be called from the event and changed hooks"), e)
return { records = function(c)
  local ok2, e2 = pcall(register.etcd.get, "/x")
  assert(not ok2 and e2:find("records%(%) must stay pure"), e2)
  return { ["/ok"] = "ok" }
end }
''')
    r = subprocess.run([REGISTER, "check", p, os.path.join(DATA, "multi.json")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["key"] == "/ok", r.stdout


def on_networks(base, nets, mode=None, **changes):
    """A variant on networks {name: (ipv4, ipv6)}; mode sets NetworkMode."""
    c = variant(base, **changes)
    tmpl = next(iter(c["NetworkSettings"]["Networks"].values()))
    c["NetworkSettings"]["Networks"] = {
        n: dict(copy.deepcopy(tmpl), IPAddress=ip4, GlobalIPv6Address=ip6, NetworkID="id-" + n)
        for n, (ip4, ip6) in nets.items()}
    if mode:
        c["HostConfig"]["NetworkMode"] = mode
    return c


@suite.test
def services_fold_wildcard_twins_and_name_compose_services():
    # Docker >= 20.10.6: 0.0.0.0 and :: for one -p, Docker 26 with different
    # host ports: one service, the IPv4 binding's
    twins = variant("multi", env=[], labels={}, name="w", image="web",
                    ports=[("80/tcp", [("0.0.0.0", "32768"), ("::", "32769")])])
    assert records(check("registrator.lua", twins)) == {"/services/web/node9:w:80": f"{IP}:32768"}
    # the :: binding alone (no IPv4 twin) stays, and named addresses stay
    # (each its own key: registrator_ids_of_a_port_bound_twice)
    six = variant("multi", env=[], labels={}, name="w", image="web",
                  ports=[("80/tcp", [("::", "32769")]), ("81/tcp", [("::1", "5"), ("127.0.0.1", "6")])])
    assert records(check("registrator.lua", six)) == {
        "/services/web-80/node9:w:80": f"{IP}:32769",
        "/services/web-81/node9:w:81:[::1]": "[::1]:5",
        "/services/web-81/node9:w:81:127.0.0.1": "127.0.0.1:6"}, records(check("registrator.lua", six))
    # podman: HostIp "" is a wildcard, and folds its :: twin too
    pod = variant("multi", env=[], labels={}, name="w", image="localhost/web:latest",
                  ports=[("80/tcp", [("", "40001"), ("::", "40002")])])
    assert records(check("registrator.lua", pod)) == {"/services/web/node9:w:80": f"{IP}:40001"}
    # Compose: the service label names it when there is no SERVICE_NAME
    comp = variant("multi", env=[], labels={"com.docker.compose.service": "api"}, name="proj-api-1",
                   image="proj-api", ports=[("80/tcp", [("0.0.0.0", "7")])])
    assert records(check("registrator.lua", comp)) == {"/services/api/node9:proj-api-1:80": f"{IP}:7"}
    comp["Config"]["Labels"]["SERVICE_NAME"] = "named"
    assert records(check("registrator.lua", comp)) == {"/services/named/node9:proj-api-1:80": f"{IP}:7"}


@suite.test
def internal_address_on_the_labelled_network():
    two = on_networks("multi", {"bridge": ("172.17.0.2", ""), "backend": ("172.20.0.5", "")},
                      labels={"register.network": "backend"})
    out = records(check("internal.lua", two))
    assert out == {"/internal/web-53/node9:web-1:53:udp": "172.20.0.5:53",
                   "/internal/web-80/node9:web-1:80": "172.20.0.5:80",
                   "/internal/web-9200/node9:web-1:9200": "172.20.0.5:9200"}, out
    # labelled with a network it is not on: nothing (until it connects)
    gone = on_networks("multi", {"bridge": ("172.17.0.2", "")}, labels={"register.network": "backend"})
    assert records(check("internal.lua", gone)) == {}
    # no label, one network: that one; no label, two networks: nothing
    assert set(records(check("internal.lua", "multi")).values()) == {
        "172.31.254.2:53", "172.31.254.2:80", "172.31.254.2:9200"}
    assert records(check("internal.lua", on_networks("multi", {"a": ("1.1.1.1", ""), "b": ("2.2.2.2", "")}))) == {}


@suite.test
def every_network_ipv4_and_ipv6():
    c = on_networks("multi", {"bridge": ("172.17.0.2", ""), "v6net": ("172.21.0.3", "fd00:5e:1::3"),
                              "only6": ("", "fd00:5e:2::4")})
    out = records(check("networks.lua", c))
    assert out["/networks/node9/web-1/v6net/80"] == '{"ip":"172.21.0.3","ip6":"fd00:5e:1::3","port":80}', out
    assert out["/networks/node9/web-1/only6/53/udp"] == '{"ip6":"fd00:5e:2::4","port":53}', out
    assert out["/networks/node9/web-1/bridge/9200"] == '{"ip":"172.17.0.2","port":9200}', out
    assert len(out) == 9, sorted(out)
    host = on_networks("multi", {"host": ("", "")}, mode="host")
    assert records(check("networks.lua", host)) == {}


@suite.test
def host_network_containers_get_the_host_address():
    host = on_networks("multi", {"host": ("", "")}, mode="host", ports=[], name="h", env=[], labels={})
    host["Config"]["ExposedPorts"] = {"8080/tcp": {}}
    assert records(check("host-network.lua", host)) == {"/services/bbx/node9:h:8080": f"{IP}:8080"}
    host["Config"]["ExposedPorts"] = {"8080/tcp": {}, "53/udp": {}}
    assert records(check("host-network.lua", host)) == {"/services/bbx-8080/node9:h:8080": f"{IP}:8080",
                                                        "/services/bbx-53/node9:h:53:udp": f"{IP}:53"}
    # other containers: registrator's keys
    assert records(check("host-network.lua", "multi")) == records(check("registrator.lua", "multi"))


# Broken copies of an example (see every_example_loads_and_is_tested): the
# example runs as it is, inside a function, and then one thing of the
# policy table it returns is changed.
WRAP = "local policy_ = (function()\n%s\nend)()\n%s\nreturn policy_\n"
WRAPPED_RECORDS = """local register_ = require "register"
local records_ = policy_.records
policy_.records = function(c, host)
  local out = records_(c, host)
  if type(out) ~= "table" then return out end
  local keys = {}
  for k in pairs(out) do keys[#keys + 1] = k end
  table.sort(keys)
  %s
  return out
end"""
MUTANTS = [
    ("registers nothing", "policy_.records = function() return nil end"),
    ("a value changed", WRAPPED_RECORDS % """for _, k in ipairs(keys) do
    local v = out[k]
    out[k] = (type(v) == "string" and v or register_.json.encode(v)) .. " "
  end"""),
    ("one record more", WRAPPED_RECORDS % 'if keys[1] then out[keys[1] .. "-mutant"] = out[keys[1]] end'),
    ("one record fewer", WRAPPED_RECORDS % "if keys[1] then out[keys[#keys]] = nil end"),
]
# hooks that `register check` runs: checks() (with --assume-checks) and
# changed() (its HTTP requests are printed); an example that has one must
# have a test that sees it go.  (event() is not run there.)
HOOKS = ("checks", "changed")
OTHER_SCRIPTS = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "test_checks.py")]


def mutants(src):
    out = [(what, WRAP % (src, lua)) for what, lua in MUTANTS]
    for hook in HOOKS:
        if re.search(r"function\s+policy\.%s\b|\bpolicy\.%s\s*=|[{,]\s*%s\s*=" % (hook, hook, hook), src):
            out.append((f"no {hook} hook", WRAP % (src, f"policy_.{hook} = nil")))
    return out


def run_test(script, name, examples, used=None):
    """Runs one test of a script on the examples in a directory; used: a
    file where it notes the examples it runs."""
    env = dict(os.environ, REGISTER_TEST_EXAMPLES=examples)
    env.pop("REGISTER_TEST_EXAMPLES_LOG", None)
    if used:
        env["REGISTER_TEST_EXAMPLES_LOG"] = used
    return subprocess.run([sys.executable, script, name], env=env, capture_output=True, text=True,
                          timeout=300)


@suite.test
def every_example_loads_and_is_tested():
    names = sorted(f for f in os.listdir(EX) if f.endswith(".lua"))
    assert len(names) >= 7, names
    for n in names:
        r = subprocess.run([REGISTER, "check", os.path.join(EX, n)], capture_output=True, text=True)
        assert r.returncode == 0, (n, r.stderr)
    # every test of this script and of test_checks.py, once on the examples
    # as they are, noting which examples each runs
    me = os.path.abspath(__file__)
    tests = []
    for script in [me] + OTHER_SCRIPTS:
        r = subprocess.run([sys.executable, script, "--list"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stdout.split(), (script, r.returncode, r.stderr)
        tests += [(script, t) for t in r.stdout.split() if (script, t) != (me, "every_example_loads_and_is_tested")]
    workers = min(8, os.cpu_count() or 2)

    def baseline(st):
        ran = os.path.join(TMP, "ran-%s-%s" % (os.path.basename(st[0]), st[1]))
        open(ran, "w").close()
        r = run_test(*st, EX, ran)
        return st, r, set(open(ran).read().split())

    used = {}
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for (script, t), r, ran in pool.map(baseline, tests):
            assert r.returncode == 0, f"{os.path.basename(script)} {t} fails on the examples as they are " \
                                      f"(rc {r.returncode}):\n{r.stderr[-3000:]}"
            for n in ran:
                used.setdefault(n, []).append((script, t))
    untested = [n for n in names if n not in used]
    assert not untested, f"no test runs {untested}"
    log("examples and the tests that run them:\n  " +
        "\n  ".join("%s: %s" % (n, ", ".join(t for _, t in used[n])) for n in names))

    # then each broken copy of an example: one of its tests must fail
    def survives(job):
        n, what, src = job
        d = os.path.join(TMP, "ex-%s-%s" % (n, what.replace(" ", "-")))
        shutil.copytree(EX, d)
        with open(os.path.join(d, n), "w") as f:
            f.write(src)
        for script, t in used[n]:
            if run_test(script, t, d).returncode != 0:
                return None
        return f"{n} {what}: {', '.join(t for _, t in used[n])} still pass"

    jobs = [(n, what, src) for n in names for what, src in mutants(open(os.path.join(EX, n)).read())]
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        survivors = [s for s in pool.map(survives, jobs) if s]
    log(f"{len(jobs) - len(survivors)} of {len(jobs)} broken examples caught")
    assert not survivors, "broken examples that no test notices:\n  " + "\n  ".join(survivors)


suite.run()

"""The shipped renderers of `register watch` (lua/render/), run by
`register watch PREFIX --render FILE --out OUT --once` against a real etcd:
each one over etcd contents made here (and over what `register check`
writes for the saved inspect documents), its output checked by the
program that reads it (`haproxy -c`, `nginx -t`, without a warning) and
by its content: the servers, their addresses, names, determinism, and no
retries or redispatch in haproxy's defaults.  The Lua examples of
docs/policy.md's "Renderers" section are run too."""
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import urllib.error
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))
from harness import REGISTER, Etcd, Suite  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DATA = os.path.join(ROOT, "tests", "data", "inspect")
HOST = "10.0.0.1"  # ctx.host.ip: the host that runs register watch
suite = Suite()
TMP = tempfile.mkdtemp(prefix="rpr")
suite.defer(lambda: shutil.rmtree(TMP, ignore_errors=True))
_n = [0]


def tmp(name):
    _n[0] += 1
    d = os.path.join(TMP, str(_n[0]))
    os.makedirs(d)
    return os.path.join(d, name)


def renderer(text):
    """A renderer file of the user's, e.g. 'return require("register.render.haproxy").new{...}'."""
    p = tmp("render.lua")
    with open(p, "w") as f:
        f.write(text)
    return p


HAPROXY = 'return require "register.render.haproxy"'
REGISTRATOR = 'return require "register.render.registrator_haproxy"'
NGINX = 'return require "register.render.nginx"'


_etcd = []


def etcd():
    """One etcd for this process's tests, started at the first render."""
    if not _etcd:
        e = Etcd().start()
        suite.defer(e.cleanup)
        _etcd.append(e)
    return _etcd[0]


def b64(s):
    return base64.b64encode(s.encode()).decode()


def v3(path, body):
    req = urllib.request.Request(etcd().url + path, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def put_all(prefix, kv, api):
    """etcd holds exactly kv under prefix."""
    e = etcd()
    if api == "v2":
        req = urllib.request.Request(e.url + "/v2/keys" + urllib.parse.quote(prefix) + "?recursive=true",
                                     method="DELETE")
        try:
            urllib.request.urlopen(req, timeout=10).close()
        except urllib.error.HTTPError as err:
            assert err.code == 404, err  # nothing there yet
        assert e.tree(prefix) == {}, e.tree(prefix)
        for k, v in kv.items():
            body, _ = e.v2(k, "PUT", data=urllib.parse.urlencode({"value": v}).encode())
            assert "node" in body, (k, body)
    else:
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        v3("/v3/kv/deleterange", {"key": b64(prefix), "range_end": b64(end)})
        for k, v in kv.items():
            v3("/v3/kv/put", {"key": b64(k), "value": b64(v)})


def render(source, kv, prefix="/registered", host_ip=HOST, expect_ok=True, api="v2", check=None):
    """The renderer `source` (the text of a renderer file) over kv, as
    register watch runs it: kv is put in etcd under prefix (nothing else
    there), then `register watch PREFIX --render FILE --out OUT --once`.
    (the output, watch's log)"""
    put_all(prefix, kv, api)
    path = renderer(source)
    out = os.path.join(os.path.dirname(path), "out")
    args = [REGISTER, "watch", prefix, "--render", path, "--out", out, "--once", "--timeout", "30",
            "--etcd", etcd().url, "--etcd-api", api, "--host-ip", host_ip, "--hostname", "lb1"]
    if check:
        args += ["--check", check]
    r = subprocess.run(args, capture_output=True, text=True, timeout=90, env=dict(os.environ, HOST_IP=""))
    if not expect_ok:
        assert r.returncode != 0, r.stderr
        assert not os.path.exists(out), r.stderr
        return None, r.stderr
    assert r.returncode == 0, r.stderr
    return open(out).read(), r.stderr


# ---- the consumers' own checks ----

def haproxy_check(text, *before):
    """haproxy -c over the rendered file (after the files `before`): valid,
    and without a warning."""
    p = tmp("haproxy.cfg")
    with open(p, "w") as f:
        f.write(text)
    args = ["haproxy", "-c"]
    for b in before:
        args += ["-f", b]
    r = subprocess.run(args + ["-f", p], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"haproxy -c failed ({r.returncode}):\n{r.stdout}{r.stderr}\n--- config:\n{text}"
    assert "WARNING" not in r.stdout + r.stderr, f"haproxy -c warned:\n{r.stdout}{r.stderr}\n--- config:\n{text}"


def nginx_check(text, expect_ok=True):
    """nginx -t with the rendered file included in http {}, and a server
    that proxies to every upstream in it (so its names work in proxy_pass);
    everything nginx writes stays in a directory of its own."""
    d = tempfile.mkdtemp(dir=TMP)
    with open(os.path.join(d, "upstreams.conf"), "w") as f:
        f.write(text)
    locations = "".join(f"    location /{i} {{ proxy_pass http://{u}; }}\n"
                        for i, u in enumerate(re.findall(r"^upstream (\S+) \{$", text, re.M)))
    temps = "".join(f"  {t}_temp_path {d}/{t};\n" for t in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    with open(os.path.join(d, "nginx.conf"), "w") as f:
        f.write(f"pid {d}/nginx.pid;\nerror_log stderr;\nevents {{}}\nhttp {{\n  access_log off;\n{temps}"
                f"  include {d}/upstreams.conf;\n  server {{\n    listen 127.0.0.1:1;\n{locations}  }}\n}}\n")
    r = subprocess.run(["nginx", "-t", "-q", "-p", d, "-e", "stderr", "-c", os.path.join(d, "nginx.conf")],
                       capture_output=True, text=True, timeout=60)
    if expect_ok:
        assert r.returncode == 0, f"nginx -t failed ({r.returncode}):\n{r.stderr}\n--- upstreams:\n{text}"
        assert "[warn]" not in r.stderr, f"nginx -t warned:\n{r.stderr}\n--- upstreams:\n{text}"
    return r


# ---- reading the output ----

def sections(text):
    """{"backend NAME": [lines]} of a haproxy configuration (comments out)."""
    out, cur = {}, None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line.startswith(" "):
            cur = line.strip()
            assert cur not in out, f"section {cur} twice"
            out[cur] = []
        else:
            out[cur].append(line.strip())
    return out


def backends(text):
    """{backend: [(server name, address, options)]}"""
    out = {}
    for head, lines in sections(text).items():
        if head.startswith("backend "):
            servers = []
            for l in lines:
                if l.startswith("server "):
                    parts = l.split()
                    servers.append((parts[1], parts[2], " ".join(parts[3:])))
            out[head[len("backend "):]] = servers
    return out


def upstreams(text):
    """{upstream: [server line without 'server ' and the comment]}"""
    out = {}
    for name, body in re.findall(r"^upstream (\S+) \{\n(.*?)^\}", text, re.M | re.S):
        out[name] = [l.strip()[len("server "):].split(";")[0] for l in body.splitlines()
                     if l.strip().startswith("server ")]
    return out


# ---- etcd contents ----

def cid(n):
    return ("%02x" % n) * 32


def value(c, image, bindings):
    """The default schema's value: bindings are (ip, public, private, proto)."""
    return json.dumps([{"container": c, "image": image, "ip": ip, "public_port": pub,
                        "private_port": priv, "port_type": proto} for ip, pub, priv, proto in bindings],
                      separators=(",", ":"))


def entry(host, image, n, bindings):
    image = image.replace("/", "::")
    return f"/registered/{host}/{image}/{cid(n)}", value(cid(n), image, bindings)


def several():
    """Three hosts, two images, several containers and ports."""
    kv = dict([
        entry("10.0.0.9", "example/web", 1, [("10.0.0.9", "49165", "80", "tcp"),
                                             ("10.0.0.9", "5353", "53", "udp")]),
        entry("10.0.0.9", "example/web", 2, [("10.0.0.9", "49166", "80", "tcp"),
                                             ("10.0.0.9", "49167", "443", "tcp")]),
        entry("10.0.0.10", "example/web", 3, [("10.0.0.10", "49165", "80", "tcp")]),
        entry("10.0.0.10", "elasticsearch:8", 4, [("10.0.0.10", "9200", "9200", "tcp"),
                                                  ("10.0.0.10", "9300", "9300", "tcp")]),
        entry("10.0.0.11", "elasticsearch:8", 5, [("10.0.0.11", "32768", "9200", "tcp")]),
    ])
    want = {
        "example::web:80": [(cid(1)[:12] + "_49165", "10.0.0.9:49165", ""),
                            (cid(2)[:12] + "_49166", "10.0.0.9:49166", ""),
                            (cid(3)[:12] + "_49165", "10.0.0.10:49165", "")],
        "example::web:443": [(cid(2)[:12] + "_49167", "10.0.0.9:49167", "")],
        "elasticsearch:8:9200": [(cid(4)[:12] + "_9200", "10.0.0.10:9200", ""),
                                 (cid(5)[:12] + "_32768", "10.0.0.11:32768", "")],
        "elasticsearch:8:9300": [(cid(4)[:12] + "_9300", "10.0.0.10:9300", "")],
    }
    return kv, want


def defaults_section(text):
    return sections(text)["defaults"]


# ---- haproxy, the default schema ----

@suite.test
def haproxy_empty_prefix():
    text, _ = render(HAPROXY, {})
    haproxy_check(text)
    assert backends(text) == {}, text
    s = sections(text)
    assert "global" in s and "frontend stats" in s, text
    assert "bind 127.0.0.1:8404" in s["frontend stats"], text


@suite.test
def haproxy_defaults_have_no_retries_and_no_redispatch():
    kv, _ = several()
    text, _ = render(HAPROXY, kv)
    haproxy_check(text)
    d = defaults_section(text)
    assert "retries 0" in d and "mode http" in d, d
    assert not any("redispatch" in l for l in text.splitlines()), text
    assert {"timeout connect 5s", "timeout client 30s", "timeout server 30s"} <= set(d), d
    # both are options
    text, _ = render('return require("register.render.haproxy").new{ retries = 3, redispatch = true }', kv)
    haproxy_check(text)
    d = defaults_section(text)
    assert "retries 3" in d and "option redispatch" in d and "retries 0" not in d, d


@suite.test
def haproxy_one_service():
    kv = dict([entry("10.0.0.9", "example/web", 1, [("10.0.0.9", "49165", "80", "tcp")])])
    # register watch --check runs haproxy on the new file before it is put in place
    text, _ = render(HAPROXY, kv, check="haproxy -c -q -f %s")
    haproxy_check(text)
    assert backends(text) == {"example::web:80": [(cid(1)[:12] + "_49165", "10.0.0.9:49165", "")]}, text
    assert f"    server {cid(1)[:12]}_49165 10.0.0.9:49165\n" in text, text


@suite.test
def haproxy_several_services_deterministic():
    kv, want = several()
    text, _ = render(HAPROXY, kv)
    haproxy_check(text)
    got = backends(text)
    assert set(got) == set(want), (sorted(got), text)
    for name, servers in want.items():
        assert sorted(got[name]) == sorted(servers), (name, got[name])
    # UDP bindings are no backend
    assert not any(":53" in b for b in got), got
    # the same contents, whatever the order they were written in, and at
    # another revision: the same bytes; through etcd's v3 API too
    again, _ = render(HAPROXY, dict(reversed(list(kv.items()))))
    assert again == text
    assert render(HAPROXY, kv)[0] == text
    assert render(HAPROXY, kv, api="v3")[0] == text
    # backends sorted by name, servers by id
    names = [h for h in sections(text) if h.startswith("backend ")]
    assert names == sorted(names), names
    for servers in got.values():
        assert [s[0] for s in servers] == sorted(s[0] for s in servers), servers
    # a container that goes takes its servers with it, nothing else changes
    del kv[entry("10.0.0.11", "elasticsearch:8", 5, [])[0]]
    less, _ = render(HAPROXY, kv)
    haproxy_check(less)
    assert backends(less)["elasticsearch:8:9200"] == want["elasticsearch:8:9200"][:1], less


@suite.test
def haproxy_many_containers():
    kv = dict(entry(f"10.0.{n // 200}.{n % 200 + 1}", f"team/app{n % 7}", n,
                    [("0.0.0.0", str(30000 + n), "80", "tcp"), ("::", str(30000 + n), "80", "tcp"),
                     ("127.0.0.1", str(40000 + n), "8080", "tcp")]) for n in range(1, 251))
    text, _ = render(HAPROXY, kv)
    haproxy_check(text)
    got = backends(text)
    assert len(got) == 14, sorted(got)
    assert sum(len(s) for s in got.values()) == 500, got
    assert ("%s_30007" % cid(7)[:12], "10.0.0.8:30007", "") in got["team::app0:80"], got["team::app0:80"]


@suite.test
def haproxy_wildcard_addresses():
    kv = dict([
        # Docker: 0.0.0.0 and its :: twin: one server, at the key's host
        entry("10.0.0.9", "web", 1, [("0.0.0.0", "32768", "80", "tcp"), ("::", "32768", "80", "tcp")]),
        # Docker 26: the twin on another port: still the IPv4 one only
        entry("10.0.0.9", "web", 2, [("0.0.0.0", "32770", "80", "tcp"), ("::", "32771", "80", "tcp")]),
        # podman: ""
        entry("10.0.0.10", "web", 3, [("", "40000", "80", "tcp")]),
        # a lone :: on an IPv6 host
        entry("fd00::5", "web", 4, [("::", "40001", "80", "tcp")]),
    ])
    # a key whose host is no address: the watching host's address
    k, v = entry("node7", "web", 5, [("0.0.0.0", "40002", "80", "tcp")])
    kv[k] = v
    text, _ = render(HAPROXY, kv)
    haproxy_check(text)
    assert sorted(a for _, a, _ in backends(text)["web:80"]) == sorted(
        ["10.0.0.9:32768", "10.0.0.9:32770", "10.0.0.10:40000", "[fd00::5]:40001", HOST + ":40002"]), text
    # wildcard_ip wins; named addresses are kept
    kv.update([entry("10.0.0.9", "web", 6, [("127.0.0.1", "5000", "80", "tcp"), ("::1", "5001", "80", "tcp")])])
    text, _ = render('return require("register.render.haproxy").new{ wildcard_ip = "192.0.2.7" }', kv)
    haproxy_check(text)
    assert sorted(a for _, a, _ in backends(text)["web:80"]) == sorted(
        ["192.0.2.7:32768", "192.0.2.7:32770", "192.0.2.7:40000", "192.0.2.7:40001", "192.0.2.7:40002",
         "127.0.0.1:5000", "[::1]:5001"]), text
    # a wildcard with no address to put in its place: left out, said
    text, err = render("local h = require 'register.render.haproxy'\n"
                       "return function(kv, ctx) ctx.host = {} return h.render(kv, ctx) end", {k: v})
    haproxy_check(text)
    assert backends(text) == {} and "wildcard" in err, (text, err)


@suite.test
def haproxy_malformed_values_left_out():
    good = entry("10.0.0.9", "web", 1, [("10.0.0.9", "32768", "80", "tcp")])
    kv = dict([good])
    bad = {
        "/registered/10.0.0.9/web/" + cid(2): "not json",
        "/registered/10.0.0.9/web/" + cid(3): '{"container":"x"}',
        "/registered/10.0.0.9/web/" + cid(4): "[1, null, \"x\"]",
        "/registered/10.0.0.9/web/" + cid(5): value(cid(5), "web", [("10.0.0.9", "0", "80", "tcp")]),
        "/registered/10.0.0.9/web/" + cid(6): value(cid(6), "web", [("10.0.0.9", "99999", "80", "tcp")]),
        "/registered/10.0.0.9/web/" + cid(7): value(cid(7), "web", [("999.0.0.1", "80", "80", "tcp")]),
        "/registered/10.0.0.9/web/" + cid(8): value(cid(8), "web", [("10.0.0.9 backup", "80", "80", "tcp")]),
        "/registered/10.0.0.9/web/" + cid(9): value(cid(9), "web", [("10.0.0.9", "80\n  server x", "80", "tcp")]),
        "/registered/10.0.0.9/web/" + cid(10): json.dumps([{"ip": "10.0.0.9", "public_port": "1", "private_port": "80"}]),
        "/registered/10.0.0.9/web/" + cid(11): value(cid(11), "web", [("::1::2", "81", "80", "tcp")]),
        "/registered/10.0.0.9/web/" + cid(12): value(cid(12), "web", [("fd00::1%eth0", "82", "80", "tcp")]),
        "/registered/" + cid(13): value(cid(13), "web", [("10.0.0.9", "83", "80", "tcp")]),
        # one good binding among bad ones: the good one stays
        "/registered/10.0.0.9/web/" + cid(14): json.dumps([
            {"container": cid(14), "image": "web", "ip": "10.0.0.9", "public_port": "9", "private_port": "80",
             "port_type": "tcp"}, "junk"]),
    }
    kv.update(bad)
    text, err = render(HAPROXY, kv)
    haproxy_check(text)
    assert backends(text) == {"web:80": [(cid(1)[:12] + "_32768", "10.0.0.9:32768", ""),
                                         (cid(14)[:12] + "_9", "10.0.0.9:9", "")]}, text
    assert "not JSON" in err and "not a JSON array" in err and "is not a port" in err, err
    assert "999.0.0.1 is not an IP address" in err, err
    # one warning per key (at most 20, then a count)
    assert len([l for l in err.splitlines() if "left out" in l]) == len(bad), err


@suite.test
def haproxy_names_are_sanitized():
    kv = dict([
        entry("10.0.0.9", "registry.example:5000/team/web@sha256:ab", 1, [("10.0.0.9", "1", "80", "tcp")]),
        ("/registered/10.0.0.9/we b{x};#/" + cid(2), value(cid(2), "we b{x};#", [("10.0.0.9", "2", "80", "tcp")])),
        ("/registered/10.0.0.9/we_b_x_/" + cid(3), value(cid(3), "we_b_x_", [("10.0.0.9", "3", "80", "tcp")])),
        # one container, one port published twice on one public port
        entry("10.0.0.9", "two", 4, [("127.0.0.1", "7", "80", "tcp"), ("127.0.0.2", "7", "80", "tcp")]),
    ])
    text, _ = render(HAPROXY, kv)
    haproxy_check(text)
    got = backends(text)
    for name in got:
        assert re.fullmatch(r"[A-Za-z0-9_.:\-]+", name), name
    assert "registry.example:5000::team::web_sha256:ab:80" in got, sorted(got)
    assert got["we_b_x_:80"] == [(cid(2)[:12] + "_2", "10.0.0.9:2", "")], got
    assert got["we_b_x_:80_2"] == [(cid(3)[:12] + "_3", "10.0.0.9:3", "")], got
    assert [s[0] for s in got["two:80"]] == [cid(4)[:12] + "_7", cid(4)[:12] + "_7_2"], got


@suite.test
def haproxy_options():
    kv, want = several()
    text, _ = render('''
return require("register.render.haproxy").new{
  frontends = {
    ["example::web:80"] = "*:8080",
    ["elasticsearch:8:9300"] = { "127.0.0.1:9300", "127.0.0.2:9300" },
    { name = "www", bind = ":::80 v4v6", default_backend = "example::web:80",
      use_backend = { { "example::web:443", "if { path_beg /secure }" },
                      { "nothing::here:80", "if { path_beg /nothing }" } } },
  },
  services = {
    ["elasticsearch:8:9300"] = { mode = "tcp", balance = "leastconn", check = "check inter 2s" },
    ["example::web:80"] = { options = { "option httpchk GET /health" } },
  },
  check = true,
  server_options = "maxconn 100",
  timeouts = { client = "1m", queue = "10s", server = 45000 },
  balance = "roundrobin",
  global = { "maxconn 2000" },
  defaults = "option dontlognull",
  stats = "127.0.0.1:9999",
  extra = { "listen health", "    bind 127.0.0.1:9998", "    mode http",
            "    http-request return status 200" },
}''', kv)
    haproxy_check(text)
    s = sections(text)
    assert s["frontend fe_example::web:80"] == ["bind *:8080", "default_backend example::web:80"], s
    assert s["frontend fe_elasticsearch:8:9300"] == ["mode tcp", "bind 127.0.0.1:9300", "bind 127.0.0.2:9300",
                                                     "default_backend elasticsearch:8:9300"], s
    assert s["frontend www"] == ["bind :::80 v4v6", "use_backend example::web:443 if { path_beg /secure }",
                                 "use_backend nothing::here:80 if { path_beg /nothing }",
                                 "default_backend example::web:80"], s
    assert s["backend nothing::here:80"] == [], s  # used by a frontend: there without servers
    es = s["backend elasticsearch:8:9300"]
    assert es[:2] == ["mode tcp", "balance leastconn"], es
    assert es[2] == f"server {cid(4)[:12]}_9300 10.0.0.10:9300 check inter 2s maxconn 100", es
    assert s["backend example::web:80"][0] == "option httpchk GET /health", s
    assert f"server {cid(1)[:12]}_49165 10.0.0.9:49165 check maxconn 100" in s["backend example::web:80"], s
    d = s["defaults"]
    assert d == ["mode http", "timeout connect 5s", "timeout client 1m", "timeout server 45000",
                 "timeout queue 10s", "retries 0", "balance roundrobin", "option dontlognull"], d
    assert s["global"] == ["httpclient.ssl.verify none", "maxconn 2000"], s
    assert "bind 127.0.0.1:9999" in s["frontend stats"], s
    assert "listen health" in s, s
    # false drops a timeout (haproxy then warns: not checked here)
    text, _ = render('return require("register.render.haproxy").new{ timeouts = { server = false } }', kv)
    assert "timeout server" not in text and "timeout client 30s" in text, text
    # tcp as the default mode: the stats page stays http
    text, _ = render('return require("register.render.haproxy").new{ mode = "tcp", '
                     'frontends = { ["example::web:80"] = "*:8080" } }', kv)
    haproxy_check(text)
    s = sections(text)
    assert "mode tcp" in s["defaults"] and "mode http" in s["frontend stats"], s
    # a frontend whose backends have two modes is an error, said
    _, err = render('return require("register.render.haproxy").new{ services = { a = { mode = "tcp" } }, '
                    'frontends = { { bind = "*:1", default_backend = "a", use_backend = {{"b", "if TRUE"}} } } }',
                    kv, expect_ok=False)
    assert "mode" in err, err


@suite.test
def haproxy_does_not_load_the_system_ca_store_unless_asked():
    # haproxy loads the system's CA store for its own HTTP client at every
    # start and reload (30-40 ms of CPU on this machine, each reload that
    # carries a change waiting for it) unless told that the client does
    # not verify; nothing in the rendered configuration uses that client
    kv, _ = several()
    text, _ = render(HAPROXY, kv)
    haproxy_check(text)
    assert sections(text)["global"] == ["httpclient.ssl.verify none"], text
    # asked for: the store is loaded (Lua's core.httpclient verifies)
    text, _ = render('return require("register.render.haproxy").new{ system_ca = true }', kv)
    haproxy_check(text)
    assert sections(text)["global"] == [], text
    # the operator's own httpclient.ssl lines win
    text, _ = render('return require("register.render.haproxy").new{ global = '
                     '"httpclient.ssl.ca-file /etc/ssl/certs/ca-certificates.crt" }', kv)
    haproxy_check(text)
    assert sections(text)["global"] == ["httpclient.ssl.ca-file /etc/ssl/certs/ca-certificates.crt"], text
    # the registrator layout renders the same global section
    text, _ = render('return require("register.render.registrator_haproxy").new{}', {}, prefix="/services")
    haproxy_check(text)
    assert sections(text)["global"] == ["httpclient.ssl.verify none"], text
    _, err = render('return require("register.render.haproxy").new{ system_ca = "yes" }', kv, expect_ok=False)
    assert "system_ca must be true or false" in err, err


@suite.test
def haproxy_fragment_with_a_main_file():
    kv, want = several()
    main = tmp("main.cfg")
    with open(main, "w") as f:
        f.write("global\n    maxconn 100\ndefaults\n    mode tcp\n    timeout connect 1s\n"
                "    timeout client 1s\n    timeout server 1s\n"
                "frontend main\n    mode http\n    bind *:80\n    default_backend example::web:80\n")
    text, _ = render('return require("register.render.haproxy").new{ fragment = true }', kv)
    s = sections(text)
    assert "global" not in s and "defaults" not in s and "frontend stats" not in s, s
    assert all(lines[0] == "mode http" for h, lines in s.items() if h.startswith("backend ")), s
    haproxy_check(text, main)


@suite.test
def haproxy_bad_options_are_errors():
    for opts, what in [("{ frontend = {} }", "unknown option frontend"),
                       ("{ mode = 'udp' }", "mode"),
                       ("{ retries = -1 }", "retries"),
                       ("{ wildcard_ip = 'host' }", "wildcard_ip"),
                       ("{ check = 'check\\nserver x 1.2.3.4:1' }", "one line"),
                       ("{ services = { web = { chek = true } } }", "unknown option chek")]:
        _, err = render('return require("register.render.haproxy").new' + opts, {}, expect_ok=False)
        assert what in err, (opts, err)


@suite.test
def haproxy_from_register_check():
    """The default policy's own records (register check over the saved
    inspect documents), rendered."""
    files = [os.path.join(DATA, f + ".json") for f in ("multi", "twobind", "namespaced")]
    r = subprocess.run([REGISTER, "check", "--host-ip", "10.0.0.9", "default", *files],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    kv = {o["key"]: o["value"] for o in map(json.loads, r.stdout.splitlines())}
    ids = {f: json.load(open(os.path.join(DATA, f + ".json")))[0]["Id"][:12] for f in ("multi", "twobind", "namespaced")}
    text, err = render(HAPROXY, kv)
    haproxy_check(text)
    assert "left out" not in err, err
    assert backends(text) == {
        "bbx:80": [(ids["multi"] + "_32769", "127.0.0.1:32769", ""),
                   (ids["twobind"] + "_32768", "127.0.0.2:32768", ""),
                   (ids["twobind"] + "_32770", "127.0.0.1:32770", "")],
        "bbx:9200": [(ids["multi"] + "_32768", "127.0.0.1:32768", "")],
        "localhost:5000::team::web:1.2:80": [(ids["namespaced"] + "_32771", "127.0.0.1:32771", "")],
    }, text


@suite.test
def haproxy_service_function():
    """service(b): one backend across image tags, and images left out."""
    kv = dict([
        entry("10.0.0.9", "localhost:5000/team/web:1.1", 1, [("10.0.0.9", "1", "80", "tcp")]),
        entry("10.0.0.9", "localhost:5000/team/web:1.2", 2, [("10.0.0.9", "2", "80", "tcp")]),
        entry("10.0.0.9", "localhost:5000/team/web", 3, [("10.0.0.9", "3", "80", "tcp")]),
        entry("10.0.0.9", "redis:7", 4, [("10.0.0.9", "4", "6379", "tcp")]),
    ])
    example = [b for b in docs_lua_blocks() if "register.image" in b]
    assert len(example) == 1, example
    text, _ = render(example[0], kv)
    haproxy_check(text)
    assert backends(text) == {"localhost:5000::team::web:80": [
        (cid(1)[:12] + "_1", "10.0.0.9:1", ""), (cid(2)[:12] + "_2", "10.0.0.9:2", ""),
        (cid(3)[:12] + "_3", "10.0.0.9:3", "")]}, text


def docs_lua_blocks():
    """The ```lua blocks of docs/policy.md's "Renderers: register watch"."""
    text = open(os.path.join(ROOT, "docs", "policy.md")).read()
    text = text[text.index("## Renderers: register watch"):]
    return [textwrap.dedent(b) for b in re.findall(r"^ *```lua\n(.*?)^ *```", text, re.M | re.S)]


@suite.test
def docs_examples_render_and_pass_the_checks():
    blocks = docs_lua_blocks()
    assert len(blocks) >= 7, blocks
    kv, _ = several()
    ran = 0
    for b in blocks:
        if "register.render.nginx" in b:
            registrator = 'layout = "registrator"' in b
            text, err = render(b, registrator_kv() if registrator else kv,
                               prefix="/services" if registrator else "/registered")
            nginx_check(text)
            assert upstreams(text) and "left out" not in err, (b, text, err)
        elif "register.render." in b and "register.render.services" not in b:
            registrator = "registrator_haproxy" in b
            text, err = render(b, registrator_kv() if registrator else kv,
                               prefix="/services" if registrator else "/registered")
            haproxy_check(text)
            assert backends(text) and "left out" not in err, (b, text, err)
        elif b.startswith("return {") or "register.render.services" in b:
            text, err = render(b, kv)  # the API's examples: any text
            assert "left out" not in err and (cid(1) in text or "10.0.0.9:49165" in text), (b, text)
        else:
            continue
        ran += 1
    assert ran == len(blocks), (ran, blocks)


@suite.test
def module_files_work_as_render_files():
    """share/register/render/*.lua, given to --render as they are, render
    as the modules do."""
    kv, _ = several()
    for f, module in (("haproxy.lua", HAPROXY), ("nginx.lua", NGINX)):
        text, _ = render(open(os.path.join(ROOT, "lua", "render", f)).read(), kv)
        assert text == render(module, kv)[0], f
    rkv = registrator_kv()
    text, _ = render(open(os.path.join(ROOT, "lua", "render", "registrator-haproxy.lua")).read(), rkv,
                     prefix="/services")
    assert text == render(REGISTRATOR, rkv, prefix="/services")[0]
    # services.lua is no renderer: said, and no file
    _, err = render(open(os.path.join(ROOT, "lua", "render", "services.lua")).read(), kv, expect_ok=False)
    assert "render" in err, err


# ---- haproxy, registrator's layout ----

def registrator_kv():
    return {
        "/services/web/node1:web-1:80": "10.0.0.9:32768",
        "/services/web/node2:web-2:80": "10.0.0.10:32768",
        "/services/web/node3:web-3:80": "[fd00::7]:32769",
        "/services/web/node1:web-4:80:[::1]": "[::1]:8081",
        "/services/web/node1:web-4:80:127.0.0.1": "127.0.0.1:8080",
        "/services/dns/node1:dns-1:53:udp": "10.0.0.9:5353",
        "/services/dns/node1:dns-2:53:udp:127.0.0.1": "127.0.0.1:5353",
        "/services/dns/node1:dns-2:53:udp:[::1]": "[::1]:5353",
        "/services/api/node1:api-1:8080": "0.0.0.0:40001",
        "/services/api/node2:api-2:8080": "[::]:40002",
    }


@suite.test
def registrator_haproxy():
    kv = registrator_kv()
    text, err = render(REGISTRATOR, kv, prefix="/services")
    haproxy_check(text)
    assert "left out" not in err, err
    assert backends(text) == {
        "api": [("node1:api-1:8080", HOST + ":40001", ""), ("node2:api-2:8080", HOST + ":40002", "")],
        "web": [("node1:web-1:80", "10.0.0.9:32768", ""),
                ("node1:web-4:80:127.0.0.1", "127.0.0.1:8080", ""),
                ("node1:web-4:80:_::1_", "[::1]:8081", ""),
                ("node2:web-2:80", "10.0.0.10:32768", ""),
                ("node3:web-3:80", "[fd00::7]:32769", "")],
    }, text
    d = defaults_section(text)
    assert "retries 0" in d and not any("redispatch" in l for l in text.splitlines()), d
    assert render(REGISTRATOR, dict(reversed(list(kv.items()))), prefix="/services")[0] == text
    # empty, and malformed values
    text, _ = render(REGISTRATOR, {}, prefix="/services")
    haproxy_check(text)
    assert backends(text) == {}
    bad = {"/services/web/a": "nonsense", "/services/web/b": "10.0.0.1:99999", "/services/web/c": "host.example:80",
           "/services/web/d": "fd00::1:80", "/services/web/e": "[fd00::1]", "/services/web/f": "10.0.0.1:80 backup",
           "/services/web/g": "[1.2.3.4]:80"}
    text, err = render(REGISTRATOR, dict(kv, **bad), prefix="/services")
    haproxy_check(text)
    assert sum(len(s) for s in backends(text).values()) == 7, text
    assert len([l for l in err.splitlines() if "left out" in l]) == len(bad), err
    # options, as the haproxy renderer's
    text, _ = render('return require("register.render.registrator_haproxy").new{ '
                     'frontends = { web = "*:80" }, check = true }', kv, prefix="/services")
    haproxy_check(text)
    assert sections(text)["frontend fe_web"] == ["bind *:80", "default_backend web"], text
    assert all(o == "check" for _, _, o in backends(text)["web"]), text


@suite.test
def registrator_haproxy_from_register_check():
    files = [os.path.join(DATA, f + ".json") for f in ("multi", "twobind", "namespaced")]
    r = subprocess.run([REGISTER, "check", "--host-ip", "10.0.0.9", "--hostname", "node9",
                        os.path.join(ROOT, "lua", "examples", "registrator.lua"), *files],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    kv = {o["key"]: o["value"] for o in map(json.loads, r.stdout.splitlines())}
    text, err = render(REGISTRATOR, kv, prefix="/services")
    haproxy_check(text)
    got = backends(text)
    assert got["web-80"] == [("node9:web-1:80", "127.0.0.1:32769", "")], got
    assert got["frontend"] == [("node9:nsweb:80", "127.0.0.1:32771", "")], got
    assert not any("53" in b for b in got), got  # UDP
    assert sum(len(s) for s in got.values()) == sum(1 for k in kv if ":udp" not in k), (kv, got)


# ---- nginx ----

@suite.test
def nginx_default_schema():
    text, _ = render(NGINX, {})
    nginx_check(text)
    assert upstreams(text) == {}, text
    kv = dict([entry("10.0.0.9", "example/web", 1, [("10.0.0.9", "49165", "80", "tcp")])])
    text, _ = render(NGINX, kv)
    nginx_check(text)
    assert upstreams(text) == {"example_web_80": ["10.0.0.9:49165"]}, text
    kv, want = several()
    text, _ = render(NGINX, kv)
    nginx_check(text)
    assert upstreams(text) == {
        "elasticsearch_8_9200": ["10.0.0.10:9200", "10.0.0.11:32768"],
        "elasticsearch_8_9300": ["10.0.0.10:9300"],
        "example_web_443": ["10.0.0.9:49167"],
        "example_web_80": ["10.0.0.9:49165", "10.0.0.9:49166", "10.0.0.10:49165"],
    }, text
    assert render(NGINX, dict(reversed(list(kv.items()))))[0] == text


@suite.test
def nginx_wildcards_ipv6_and_malformed():
    kv = dict([
        entry("10.0.0.9", "web", 1, [("0.0.0.0", "32768", "80", "tcp"), ("::", "32768", "80", "tcp")]),
        entry("fd00::5", "web", 2, [("::", "40001", "80", "tcp"), ("::1", "40002", "80", "tcp")]),
        entry("10.0.0.9", "Web", 3, [("10.0.0.9", "1", "80", "tcp")]),
    ])
    kv["/registered/10.0.0.9/web/" + cid(4)] = "not json"
    kv["/registered/10.0.0.9/web/" + cid(5)] = value(cid(5), "web", [("10.0.0.9;", "1", "80", "tcp")])
    text, err = render(NGINX, kv)
    nginx_check(text)
    # upstream names are case-insensitive to nginx: web:80 and Web:80 get
    # names of their own (services in byte order: "Web" first)
    assert upstreams(text) == {"web_80": ["10.0.0.9:1"],
                               "web_80_2": ["10.0.0.9:32768", "[fd00::5]:40001", "[::1]:40002"]}, text
    assert len([l for l in err.splitlines() if "left out" in l]) == 2, err


@suite.test
def nginx_empty_upstream_placeholder_and_options():
    kv, _ = several()
    text, _ = render('''
return require("register.render.nginx").new{
  upstream_options = { "least_conn;", "keepalive 16;" },
  server_options = "max_fails=2 fail_timeout=5s",
  services = {
    ["gone::away:80"] = {},
    ["example::web:80"] = { name = "web", upstream_options = { "hash $remote_addr consistent;" } },
  },
  extra = { "server {", "    listen 127.0.0.1:2;", "    location / { proxy_pass http://web; }", "}" },
}''', kv)
    nginx_check(text)
    ups = upstreams(text)
    assert ups["gone_away_80"] == ["127.0.0.1:1 down"], text
    assert "nginx refuses an upstream without servers" in text, text
    assert ups["web"] == ["10.0.0.9:49165 max_fails=2 fail_timeout=5s", "10.0.0.9:49166 max_fails=2 fail_timeout=5s",
                          "10.0.0.10:49165 max_fails=2 fail_timeout=5s"], ups
    block = re.search(r"^upstream web \{\n(.*?)^\}", text, re.M | re.S).group(1)
    assert "hash $remote_addr consistent;" in block and "least_conn;" not in block, block
    block = re.search(r"^upstream elasticsearch_8_9200 \{\n(.*?)^\}", text, re.M | re.S).group(1)
    assert "least_conn;" in block and "keepalive 16;" in block, block
    # nginx itself refuses an empty upstream: the placeholder is needed
    r = nginx_check("upstream e {\n}\n", expect_ok=False)
    assert r.returncode != 0 and "no servers are inside upstream" in r.stderr, r.stderr
    _, err = render('return require("register.render.nginx").new{ upstream = {} }', {}, expect_ok=False)
    assert "unknown option upstream" in err, err


@suite.test
def nginx_registrator_layout():
    kv = registrator_kv()
    text, err = render('return require("register.render.nginx").new{ layout = "registrator" }', kv, prefix="/services")
    nginx_check(text)
    assert "left out" not in err, err
    assert upstreams(text) == {
        "api": [HOST + ":40001", HOST + ":40002"],
        "web": ["10.0.0.9:32768", "127.0.0.1:8080", "[::1]:8081", "10.0.0.10:32768", "[fd00::7]:32769"],
    }, text


@suite.test
def nginx_long_names_are_cut():
    """A service name of about 4 KB made an upstream name (and a comment)
    that `nginx -t` refuses ("too long parameter"): one key kept every
    change out.  Names past 200 bytes are cut, with a hash of the whole
    name (two that differ after the cut stay apart), said once each;
    comments are cut too."""
    long = "a" * 5000
    kv = dict([entry("10.0.0.9", long + "x", 1, [("10.0.0.9", "49165", "80", "tcp")]),
               entry("10.0.0.9", long + "y", 2, [("10.0.0.9", "49166", "80", "tcp")]),
               entry("10.0.0.9", "example/web", 3, [("10.0.0.9", "49167", "80", "tcp")])])
    text, err = render(NGINX, kv, api="v3")
    nginx_check(text)
    ups = upstreams(text)
    assert len(ups) == 3 and ups["example_web_80"] == ["10.0.0.9:49167"], ups
    cut = [n for n in ups if n != "example_web_80"]
    assert all(len(n) == 200 and n.startswith("a" * 100) for n in cut), cut
    assert sorted(ups[n][0] for n in cut) == ["10.0.0.9:49165", "10.0.0.9:49166"], ups
    assert max(len(l) for l in text.splitlines()) < 400, text
    said = [l for l in err.splitlines() if "upstream name of" in l]
    assert len(said) == 2 and all("is cut to" in l for l in said), err
    # the same cut every time
    assert render(NGINX, dict(reversed(list(kv.items()))), api="v3")[0] == text
    # registrator: a long name and a long service id
    kv = {"/services/" + "w" * 5000 + "/" + "i" * 5000: "10.0.0.9:80"}
    text, err = render('return require("register.render.nginx").new{ layout = "registrator" }', kv,
                       prefix="/services", api="v3")
    nginx_check(text)
    assert [len(n) for n in upstreams(text)] == [200], text
    assert "upstream name of" in err, err


if __name__ == "__main__":
    suite.run()

"""The default policy against a real dockerd and a real etcd: the exact
/registered bytes, events, removal with directory clean-up, restarts."""
import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import (Dockerd, Etcd, Register, Suite, default_value,  # noqa: E402
                     inspect_bindings, tmpdir, wait_for)

IP = "10.9.8.7"
suite = Suite()
etcd = Etcd().start()
suite.defer(etcd.cleanup)
d = Dockerd().start()
suite.defer(d.cleanup)
d.images()
d.clean()


def img(name):
    """The image as the default policy writes it: what the engine reports
    (podman qualifies local names: localhost/bbx:latest), "/" as "::"."""
    return d.image(name).replace("/", "::")


def key(image, cid):
    return f"/registered/{IP}/{image}/{cid}"


def start_register(*extra):
    r = Register("--etcd", etcd.url, "--docker", d.host, *extra, host_ip=IP).start()
    suite.defer(r.cleanup)
    r.wait_log("in sync")
    return r


def wait_key(k, value=None, timeout=15):
    def ok():
        t = etcd.tree()
        return k in t and (value is None or t[k] == value)
    wait_for(ok, timeout, what=f"key {k}" + (f" = {value}" if value else ""))
    return etcd.tree()[k]


def wait_gone(k, timeout=15):
    wait_for(lambda: k not in etcd.tree(), timeout, what=f"key {k} removed")


@suite.test
def running_before_start_exact_bytes():
    # several ports, udp among them; published before register starts
    cid = d.run("-p", "127.0.0.1::80", "-p", "127.0.0.1::53/udp", "-p", "127.0.0.1::9200")
    r = start_register()
    b = inspect_bindings(d, cid)
    # Docker's order is the byte order of "<port>/<proto>"
    assert [(x[2], x[3]) for x in b] == [("53", "udp"), ("80", "tcp"), ("9200", "tcp")], b
    want = default_value(cid, img("bbx"), b)
    got = wait_key(key(img("bbx"), cid), want)
    assert got == want, (got, want)
    # an independent reader sees the same bytes
    assert etcd.etcdctl("get", key(img("bbx"), cid)).rstrip("\n") == want
    assert len(cid) == 64
    d.docker("rm", "-f", cid)
    wait_gone(key(img("bbx"), cid))
    r.stop()


@suite.test
def one_port_two_bindings_and_udp_example():
    r = start_register()
    cid = d.run("-p", "127.0.0.1:5353:53/udp", "-p", "127.0.0.1::80", "-p", "127.0.0.2::80")
    b = inspect_bindings(d, cid)
    assert len(b) == 3 and b[0] == ("127.0.0.1", "5353", "53", "udp"), b
    got = wait_key(key(img("bbx"), cid))
    assert got == default_value(cid, img("bbx"), b), got
    # the example shape, literally
    assert got.startswith('[{"container":"%s","image":"%s","ip":"127.0.0.1","public_port":"5353",'
                          '"private_port":"53","port_type":"udp"},{' % (cid, img("bbx"))), got
    d.docker("rm", "-f", cid)
    wait_gone(key(img("bbx"), cid))
    r.stop()


@suite.test
def registry_qualified_namespaced_and_untagged_images():
    d.docker("tag", "bbx", "localhost:5000/team/web:1.2")
    d.docker("tag", "bbx", "bbx2")
    r = start_register()
    c1 = d.run("-p", "127.0.0.1::80", image="localhost:5000/team/web:1.2")
    c2 = d.run("-p", "127.0.0.1::80", image="bbx2")
    image_id = d.docker("images", "-q", "--no-trunc", "bbx").split()[0]  # sha256:...
    c3 = d.run("-p", "127.0.0.1::80", image=image_id)
    img1 = img("localhost:5000/team/web:1.2")
    assert img1 == "localhost:5000::team::web:1.2"
    # an image given by id: Docker reports it verbatim, podman by one of
    # its names (4.3: the first, localhost/bbx:latest; 5.8: the last tagged,
    # docker.io/library/bbx2:latest)
    img3 = d.docker("inspect", "-f", "{{.Config.Image}}", c3).replace("/", "::")
    if d.engine.startswith("podman"):
        names = json.loads(d.docker("image", "inspect", "-f", "{{json .RepoTags}}", image_id))
        assert img3 in [n.replace("/", "::") for n in names], (img3, names)
    else:
        assert img3 == image_id, img3
    v1 = wait_key(key(img1, c1))
    assert v1 == default_value(c1, img1, inspect_bindings(d, c1)), v1
    v2 = wait_key(key(img("bbx2"), c2))
    assert v2 == default_value(c2, img("bbx2"), inspect_bindings(d, c2)), v2
    # an image given by id: Config.Image verbatim, nothing added
    v3 = wait_key(key(img3, c3))
    assert '"image":"%s"' % img3 in v3, v3
    assert f"/registered/{IP}/{img1}" in etcd.ls()
    d.docker("rm", "-f", c1, c2, c3)
    for k in (key(img1, c1), key(img("bbx2"), c2), key(img3, c3)):
        wait_gone(k)
    r.stop()


@suite.test
def exposed_but_unpublished_is_not_registered():
    r = start_register()
    quiet = d.run()  # EXPOSE 80 53/udp 9200, nothing published
    marker = d.run("-p", "127.0.0.1::80")  # started after: once it is in, events were seen
    wait_key(key(img("bbx"), marker))
    time.sleep(0.3)
    assert not any(quiet in k for k in etcd.tree()), etcd.tree()
    assert "in sync" in r.output()
    d.docker("rm", "-f", quiet, marker)
    wait_gone(key(img("bbx"), marker))
    r.stop()


@suite.test
def removal_cleans_image_and_host_directories():
    r = start_register()
    a1 = d.run("-p", "127.0.0.1::80")
    a2 = d.run("-p", "127.0.0.1::80")
    d.docker("tag", "bbx", "other:1")
    b1 = d.run("-p", "127.0.0.1::80", image="other:1")
    for k in (key(img("bbx"), a1), key(img("bbx"), a2), key(img("other:1"), b1)):
        wait_key(k)
    d.docker("rm", "-f", a1)
    wait_gone(key(img("bbx"), a1))
    assert f"/registered/{IP}/{img('bbx')}" in etcd.ls()  # a2 is still there
    d.docker("rm", "-f", a2)
    wait_for(lambda: f"/registered/{IP}/{img('bbx')}" not in etcd.ls(), what="empty image dir removed")
    assert f"/registered/{IP}/{img('other:1')}" in etcd.ls()
    d.docker("rm", "-f", b1)
    wait_for(lambda: not any(l.startswith(f"/registered/{IP}") for l in etcd.ls()),
             what="host dir removed")
    # the log names key, container and image for registration and removal
    out = r.output()
    assert f"registered key={key(img('bbx'), a1)} container={a1} image={d.image('bbx')}" in out, out
    assert f"removed key={key(img('bbx'), a1)} container={a1} image={d.image('bbx')}" in out, out
    r.stop()


@suite.test
def stop_and_start_again():
    r = start_register()
    cid = d.run("-p", "127.0.0.1::80")
    wait_key(key(img("bbx"), cid))
    d.docker("stop", "-t", "0", cid)  # die
    wait_gone(key(img("bbx"), cid))
    d.docker("start", cid)
    v = wait_key(key(img("bbx"), cid))
    assert v == default_value(cid, img("bbx"), inspect_bindings(d, cid))
    d.docker("rm", "-f", cid)
    wait_gone(key(img("bbx"), cid))
    r.stop()


@suite.test
def restart_of_register_has_no_gap():
    keep = d.run("-p", "127.0.0.1::80")
    going = d.run("-p", "127.0.0.1::80")
    r = start_register()
    wait_key(key(img("bbx"), keep))
    wait_key(key(img("bbx"), going))
    assert r.stop() == 0
    # SIGTERM: registrations stay, as the original did
    assert key(img("bbx"), keep) in etcd.tree()
    idx = etcd.index()
    # a clean restart with nothing changed writes nothing at all
    r2 = start_register()
    time.sleep(0.5)
    assert etcd.index() == idx, "a restart must not rewrite unchanged keys"
    assert r2.stop() == 0
    # changes while register is down are reconciled at start, keys that
    # are still right are never touched
    keep_index = etcd.v2(key(img("bbx"), keep))[0]["node"]["modifiedIndex"]
    d.docker("rm", "-f", going)
    new = d.run("-p", "127.0.0.1::80")
    r3 = start_register()
    wait_gone(key(img("bbx"), going))
    wait_key(key(img("bbx"), new))
    assert etcd.v2(key(img("bbx"), keep))[0]["node"]["modifiedIndex"] == keep_index
    assert "removed stale key" in r3.output()
    d.docker("rm", "-f", keep, new)
    wait_gone(key(img("bbx"), keep))
    r3.stop()


@suite.test
def deregister_on_exit_removes_this_hosts_keys():
    other = "/registered/10.1.1.1/bbx/" + "f" * 64  # another host's key
    etcd.etcdctl("set", other, "x")
    r = start_register("--deregister-on-exit")
    cid = d.run("-p", "127.0.0.1::80")
    wait_key(key(img("bbx"), cid))
    assert r.stop(signal.SIGINT) == 0
    assert not any(l.startswith(f"/registered/{IP}") for l in etcd.ls()), etcd.ls()
    assert etcd.tree().get(other) == "x"
    etcd.etcdctl("rm", other)
    d.docker("rm", "-f", cid)


@suite.test
def form_encoding_through_a_test_policy():
    tricky = 'a&b=c+d%20e%zz "quoted" \'single\'\nline2\ttab \\ / é ☃'
    pol = os.path.join(tmpdir("rp"), "tricky.lua")
    with open(pol, "w") as f:
        f.write("""
local v = %s
return {
  prefix = function(host) return "/tricky/" .. host.ip end,
  records = function(c, host)
    if #c.ports == 0 then return nil end
    return { ["/tricky/" .. host.ip .. "/" .. c.name .. "/a&b+c%%d=e"] = v,
             ["/tricky/" .. host.ip .. "/" .. c.name .. "/json"] = { v = v } }
  end,
}
""" % ("[==[" + tricky + "]==]"))
    r = Register("--etcd", etcd.url, "--docker", d.host, "--policy", pol, host_ip=IP).start()
    suite.defer(r.cleanup)
    r.wait_log("in sync")
    cid = d.run("--name", "tricky", "-p", "127.0.0.1::80")
    k1 = f"/tricky/{IP}/tricky/a&b+c%d=e"
    wait_for(lambda: k1 in etcd.tree(prefix="/tricky"), what="tricky key")
    assert etcd.tree(prefix="/tricky")[k1] == tricky
    got = etcd.etcdctl("get", k1)
    assert got == tricky + "\n", repr(got)
    j = etcd.tree(prefix="/tricky")[f"/tricky/{IP}/tricky/json"]
    assert j == '{"v":"a&b=c+d%20e%zz \\"quoted\\" \'single\'\\nline2\\ttab \\\\ / é ☃"}', j
    d.docker("rm", "-f", cid)
    wait_for(lambda: etcd.tree(prefix="/tricky") == {}, what="tricky keys removed")
    r.stop()


suite.run()

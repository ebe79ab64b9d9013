"""Networks on a real dockerd with IPv6 (--ipv6, ULA subnets; traffic stays
on this machine): the examples internal.lua (address on a labelled
user-defined network), networks.lua (several networks, IPv4 and IPv6,
connect/disconnect), host-network.lua (--network host), and the 0.0.0.0/::
twins of one -p folded by register.services."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from harness import SRC, Dockerd, Etcd, Register, Suite, wait_for  # noqa: E402

IP = "10.4.4.4"
suite = Suite()
etcd = Etcd().start()
suite.defer(etcd.cleanup)
d = Dockerd(extra=["--ipv6", "--fixed-cidr-v6", "fd00:5e:0:1::/64"]).start()
suite.defer(d.cleanup)
d.images()
d.clean()
EX = os.path.join(SRC, "lua", "examples")
NET = "regnet-backend"
d.docker("network", "rm", NET, check=False)
d.docker("network", "create", "--ipv6", "--subnet", "172.31.250.0/24", "--subnet", "fd00:5e:0:2::/64", NET)
suite.defer(lambda: d.docker("network", "rm", NET, check=False))


def register(policy):
    d.clean()
    for p in ("/internal", "/networks", "/services"):
        etcd.etcdctl("rm", "--recursive", p, check=False)
    r = Register("--etcd", etcd.url, "--docker", d.host, "--policy", os.path.join(EX, policy),
                 "--hostname", "node4", host_ip=IP).start()
    suite.defer(r.cleanup)
    r.wait_log("in sync")
    return r


def addr(cid, net, field="IPAddress"):
    doc = json.loads(d.docker("inspect", cid))[0]
    return doc["NetworkSettings"]["Networks"][net][field]


@suite.test
def internal_address_follows_connect_and_disconnect():
    r = register("internal.lua")
    cid = d.run("--name", "api", "--label", "register.network=" + NET)  # on the default bridge only
    marker = d.run("--name", "mark", "--network", NET)  # registered: events were seen
    wait_for(lambda: any(":mark:" in k for k in etcd.tree("/internal")), what="marker registered")
    assert not any(":api:" in k for k in etcd.tree("/internal"))
    d.docker("network", "connect", NET, cid)
    ip = addr(cid, NET)
    assert ip.startswith("172.31.250."), ip
    want = {f"/internal/bbx-80/node4:api:80": f"{ip}:80", f"/internal/bbx-9200/node4:api:9200": f"{ip}:9200",
            f"/internal/bbx-53/node4:api:53:udp": f"{ip}:53"}
    wait_for(lambda: {k: v for k, v in etcd.tree("/internal").items() if ":api:" in k} == want,
             what="registered on connect " + repr(etcd.tree("/internal")))
    d.docker("network", "disconnect", NET, cid)
    wait_for(lambda: not any(":api:" in k for k in etcd.tree("/internal")), what="removed on disconnect")
    d.docker("rm", "-f", marker, cid)
    wait_for(lambda: etcd.tree("/internal") == {}, what="all removed")
    r.stop()


@suite.test
def several_networks_ipv4_and_ipv6():
    r = register("networks.lua")
    cid = d.run("--name", "two", "--network", NET)
    d.docker("network", "connect", "bridge", cid)
    ip6 = addr(cid, NET, "GlobalIPv6Address")
    assert ip6.startswith("fd00:5e:0:2:"), ip6
    k6 = f"/networks/node4/two/{NET}/80"
    kb = "/networks/node4/two/bridge/80"
    wait_for(lambda: k6 in etcd.tree("/networks") and kb in etcd.tree("/networks"), what="both networks")
    got = json.loads(etcd.tree("/networks")[k6])
    assert got == {"ip": addr(cid, NET), "ip6": ip6, "port": 80}, got
    bridge6 = addr(cid, "bridge", "GlobalIPv6Address")
    assert bridge6.startswith("fd00:5e:0:1:"), bridge6  # the daemon's --fixed-cidr-v6
    assert json.loads(etcd.tree("/networks")[kb])["ip6"] == bridge6
    assert len(etcd.tree("/networks")) == 6  # 3 exposed ports x 2 networks
    d.docker("network", "disconnect", "bridge", cid)
    wait_for(lambda: len(etcd.tree("/networks")) == 3 and kb not in etcd.tree("/networks"),
             what="bridge keys gone on disconnect")
    d.clean()
    wait_for(lambda: etcd.tree("/networks") == {}, what="all removed")
    r.stop()


@suite.test
def host_network_container_gets_the_host_address():
    r = register("host-network.lua")
    d.run("--name", "hostnet", "--network", "host")
    want = {"/services/bbx-80/node4:hostnet:80": f"{IP}:80", "/services/bbx-9200/node4:hostnet:9200": f"{IP}:9200",
            "/services/bbx-53/node4:hostnet:53:udp": f"{IP}:53"}
    wait_for(lambda: etcd.tree("/services") == want, what="host-network keys " + repr(etcd.tree("/services")))
    d.clean()
    wait_for(lambda: etcd.tree("/services") == {}, what="removed")
    r.stop()


@suite.test
def wildcard_twins_are_one_service():
    r = register("registrator.lua")
    cid = d.run("--name", "tw", "-p", "80")
    binds = json.loads(d.docker("inspect", cid))[0]["NetworkSettings"]["Ports"]["80/tcp"]
    ips = sorted(b["HostIp"] for b in binds)
    # Docker >= 20.10.6 with IPv6: 0.0.0.0 and ::; one service, the IPv4 port
    assert ips == ["0.0.0.0", "::"], binds
    v4 = [b["HostPort"] for b in binds if b["HostIp"] == "0.0.0.0"][0]
    wait_for(lambda: etcd.tree("/services") == {"/services/bbx/node4:tw:80": f"{IP}:{v4}"},
             what="one service " + repr(etcd.tree("/services")))
    d.clean()
    r.stop()


suite.run()

"""register under valgrind (memcheck) against real etcd and the fake Docker
daemon: registrations, a removal, a stream cut, a policy error, then
SIGTERM.  No definite or indirect leaks and no memory errors."""
import os
import subprocess
import sys

os.environ["REGISTER_VALGRIND"] = "1"
sys.path.insert(0, os.path.dirname(__file__))
from fake_docker import FakeDocker  # noqa: E402
from harness import REGISTER, Etcd, Register, Suite, tmpdir, wait_for  # noqa: E402

ldd = subprocess.run(["ldd", REGISTER], capture_output=True, text=True).stdout
if "libasan" in ldd or subprocess.run(["which", "valgrind"], capture_output=True).returncode:
    print("skipped: sanitizer build or no valgrind", file=sys.stderr)
    sys.exit(77)

IP = "10.4.4.4"
suite = Suite()
etcd = Etcd().start()
suite.defer(etcd.cleanup)
fake = FakeDocker(os.path.join(tmpdir("rv"), "d.sock")).start()
suite.defer(fake.stop)


@suite.test
def clean_shutdown_has_no_leaks():
    a = fake.add(ports=[("53/udp", [("127.0.0.1", "5353")]), ("80/tcp", [("127.0.0.1", "1"), ("127.0.0.2", "2")])])
    b = fake.add()
    pol = os.path.join(tmpdir("rp"), "p.lua")
    with open(pol, "w") as f:
        f.write('local d = require "register.default"\n'
                'return { prefix = d.prefix, records = function(c, h)\n'
                '  if c.name == "boom" then error("policy error on purpose") end\n'
                '  return d.records(c, h) end }\n')
    r = Register("--etcd", etcd.url, "--docker", fake.host, "--policy", pol, "--ttl", "30", host_ip=IP).start()
    suite.defer(r.cleanup)
    r.wait_log("in sync", timeout=60)
    wait_for(lambda: len(etcd.tree(f"/registered/{IP}")) == 2, 30, what="2 keys")
    fake.set_running(b, False)
    fake.emit(fake.event("die", b))
    bad = fake.add(name="boom")
    fake.emit(fake.event("start", bad))
    r.wait_log("policy error on purpose", timeout=30)
    fake.cut(b'{"Type":"cont')
    r.wait_log("docker: connected", count=2, timeout=60)
    wait_for(lambda: len(etcd.tree(f"/registered/{IP}")) == 1, 30, what="1 key")
    r.stop(timeout=60)  # asserts: exit 0, no leaks, no errors (harness)


suite.run()

"""Docker over TCP with TLS, as the docker CLI does it: DOCKER_HOST,
DOCKER_TLS_VERIFY and DOCKER_CERT_PATH (ca.pem, cert.pem, key.pem)."""
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import Dockerd, Etcd, Register, Suite, free_port, make_pki, tmpdir, wait_for  # noqa: E402
from toolkit import issue_cert  # noqa: E402

IP = "10.0.4.4"
suite = Suite()
pki = make_pki(tmpdir("rk"), "docker")
port = free_port()
d = Dockerd(extra=["-H", f"tcp://127.0.0.1:{port}", "--tlsverify", "--tlscacert", pki["ca"],
                   "--tlscert", pki["server"], "--tlskey", pki["server-key"]]).start()
suite.defer(d.cleanup)
d.images()
d.clean()
etcd = Etcd().start()
suite.defer(etcd.cleanup)
certs = tmpdir("rc")
for src, dst in (("ca", "ca.pem"), ("client", "cert.pem"), ("client-key", "key.pem")):
    shutil.copy(pki[src], os.path.join(certs, dst))


@suite.test
def tcp_with_tls_verify():
    cid = d.run("-p", "127.0.0.1::80")
    r = Register("--etcd", etcd.url, host_ip=IP,
                 env={"DOCKER_HOST": f"tcp://127.0.0.1:{port}", "DOCKER_TLS_VERIFY": "1",
                      "DOCKER_CERT_PATH": certs}).start()
    suite.defer(r.cleanup)
    r.wait_log("in sync")
    wait_for(lambda: f"/registered/{IP}/bbx/{cid}" in etcd.tree(), what="registered over TLS")
    assert f"docker tcp://127.0.0.1:{port}" in r.output()
    d.clean()
    wait_for(lambda: etcd.tree(f"/registered/{IP}") == {}, what="removed")
    r.stop()


@suite.test
def plain_http_to_a_tls_daemon_is_a_clear_error():
    r = Register("--etcd", etcd.url, "--docker", f"tcp://127.0.0.1:{port}", host_ip=IP).start()
    suite.defer(r.cleanup)
    r.wait_log("Client sent an HTTP request to an HTTPS server")
    assert r.proc.poll() is None  # retries, does not die
    r.stop()


@suite.test
def an_expired_client_certificate_is_named():
    # Docker refuses it with a TLS alert that says nothing of why: the
    # error register logs names the certificate and its expiry
    old = tmpdir("rc")
    shutil.copy(pki["ca"], os.path.join(old, "ca.pem"))
    now = int(time.time())
    issue_cert(pki["ca"], pki["ca-key"], os.path.join(old, "cert.pem"), "/CN=register",
               not_before=now - 7200, not_after=now - 3600)
    os.rename(os.path.join(old, "cert-key.pem"), os.path.join(old, "key.pem"))
    r = Register("--etcd", etcd.url, host_ip=IP,
                 env={"DOCKER_HOST": f"tcp://127.0.0.1:{port}", "DOCKER_TLS_VERIFY": "1",
                      "DOCKER_CERT_PATH": old}).start()
    suite.defer(r.cleanup)
    r.wait_log("cannot reach Docker")
    line = next(ln for ln in r.output().splitlines() if "cannot reach Docker" in ln)
    assert f"client certificate {old}/cert.pem expired at" in line and "renew it" in line, line
    assert r.proc.poll() is None  # retries, does not die
    r.stop()


suite.run()

"""Convergence: a random (seeded, printed) sequence of container starts,
stops, kills, restarts and removals on a real dockerd, interleaved with
faults (dockerd kill -9, etcd stopped, etcd wiped, register kill -9); at
the end, within a few seconds, etcd under the prefix is exactly what the
policy produces for the running containers.

REGISTER_SEED=N reproduces a run; REGISTER_STEPS=N changes its length."""
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import Dockerd, Etcd, Register, Suite, log, wait_converged  # noqa: E402

IP = "10.5.5.5"
SEED = int(os.environ.get("REGISTER_SEED", time.time_ns() % 1000000))
STEPS = int(os.environ.get("REGISTER_STEPS", 60))
suite = Suite()
d = Dockerd().start()
suite.defer(d.cleanup)
d.images()
d.clean()
etcd = Etcd().start()
suite.defer(etcd.cleanup)


class Run:
    def __init__(self, rng):
        self.rng = rng
        self.reg = None

    def start_register(self):
        self.reg = Register("--etcd", etcd.url, "--docker", d.host, "--ttl", "6", host_ip=IP).start()
        suite.defer(self.reg.cleanup)

    def containers(self, running=None):
        args = ["ps", "-q", "--no-trunc"] + ([] if running else ["-a"])
        return d.docker(*args).split()

    def op_run(self):
        args = []
        for _ in range(self.rng.randint(0, 3)):
            port = self.rng.choice(["80", "53/udp", "9200", "7000"])
            ip = self.rng.choice(["127.0.0.1", "127.0.0.2"])
            args += ["-p", f"{ip}::{port}"]
        image = self.rng.choice(["bbx", "conv/ns:1", "localhost:5000/conv/web:2"])
        return "run " + d.run(*args, image=image)[:12]

    def pick(self, running):
        ids = self.containers(running)
        return self.rng.choice(ids) if ids else None

    def op_stop(self):
        c = self.pick(True)
        return c and d.docker("stop", "-t", "0", c, check=False) and "stop " + c[:12]

    def op_kill(self):
        c = self.pick(True)
        return c and d.docker("kill", c, check=False) and "kill " + c[:12]

    def op_restart(self):
        c = self.pick(None)
        return c and d.docker("restart", "-t", "0", c, check=False) and "restart " + c[:12]

    def op_start(self):
        c = self.pick(None)
        return c and d.docker("start", c, check=False) and "start " + c[:12]

    def op_rm(self):
        c = self.pick(None)
        return c and d.docker("rm", "-f", c, check=False) and "rm " + c[:12]

    def fault_dockerd(self):
        d.kill9()
        time.sleep(self.rng.uniform(0.2, 1.5))
        d.start()
        return "dockerd kill -9 + restart"

    def fault_etcd_down(self):
        etcd.stop()
        for _ in range(self.rng.randint(1, 4)):
            self.step(faults=False)
        etcd.start()
        return "etcd down for a while"

    def fault_etcd_wipe(self):
        etcd.wipe()
        etcd.start()
        return "etcd data wiped"

    def fault_register(self):
        self.reg.kill9()
        if self.rng.random() < 0.5:
            self.step(faults=False)
        self.start_register()
        return "register kill -9 + restart"

    def step(self, faults=True):
        ops = [self.op_run] * 4 + [self.op_stop, self.op_kill, self.op_restart, self.op_start] + [self.op_rm] * 2
        if faults and self.rng.random() < 0.12:
            ops = [self.fault_dockerd, self.fault_etcd_down, self.fault_etcd_wipe, self.fault_register]
        what = self.rng.choice(ops)()
        log("step:", what or "(nothing to do)")


@suite.test
def random_sequence_converges():
    log(f"seed {SEED} (REGISTER_SEED={SEED} reproduces this run), {STEPS} steps")
    for image in ("conv/ns:1", "localhost:5000/conv/web:2"):
        d.docker("tag", "bbx", image)
    run = Run(random.Random(SEED))
    run.start_register()
    for _ in range(STEPS):
        run.step()
        time.sleep(run.rng.uniform(0, 0.2))
    t0 = time.time()
    wait_converged(etcd, d, IP, timeout=15)
    log(f"converged {time.time() - t0:.1f}s after the last step (seed {SEED})")
    d.clean()
    wait_converged(etcd, d, IP, timeout=15)
    run.reg.stop()


suite.run()

"""The corpus of hostile and buggy policies (tests/policy/hostile/) and
what each file's header says the runtime must make of it."""
import os
import re

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hostile")
# the wall-clock limit the tests run each policy with: long enough that a
# loaded or sanitized machine still reaches the budget or the memory cap
# first, unless the file asks for another (the time-limit case)
TIMEOUT_MS = 30000


# the reasons a worker gives when it is stopped from outside (killed past
# the wall clock, dead of a signal, over the memory limit of the whole
# process): the daemon cannot know the policy's line then
OUTSIDE = {"crash", "timeout", "memory"}


def secret_value(var):
    """The value the tests give a `-- secret:` variable: unique enough that
    finding it anywhere means it leaked."""
    return f"s3cret-{var.lower()}-7f3a9c"


def header(name):
    """{expect: [REASON...], hook: NAME|None, breaks_all: bool, timeout_ms,
    timed: bool (the file sets its own limit: the call must end within it
    plus 1 s), secrets: [VAR...], absent: [TEXT...], max_log_lines: N|None}"""
    h = {"expect": None, "hook": None, "breaks_all": False, "timeout_ms": TIMEOUT_MS,
         "timed": False, "secrets": [], "absent": [], "max_log_lines": None}
    for line in open(os.path.join(CORPUS, name), errors="replace"):
        m = re.match(r"-- (expect|hook|breaks|policy-timeout|secret|absent|max-log-lines): (.*)", line)
        if not m:
            continue
        k, v = m.group(1), m.group(2).strip()
        if k == "secret":
            h["secrets"].append(v)
        elif k == "absent":
            h["absent"].append(v)
        elif k == "max-log-lines":
            h["max_log_lines"] = int(v)
        elif k == "expect":
            h["expect"] = v.split()
        elif k == "hook":
            h["hook"] = v
        elif k == "breaks":
            h["breaks_all"] = v == "all"
        else:
            h["timeout_ms"] = int(v)
            h["timed"] = True
    assert h["expect"], f"{name}: no '-- expect:' line"
    return h


def cases(load=False):
    """The files that fail at load (load=True), or all the others."""
    names = sorted(f for f in os.listdir(CORPUS) if f.endswith(".lua"))
    return [n for n in names if (header(n)["expect"] == ["load"]) == load]


def expected(h, sanitized):
    """The reasons a file may end with on this build.  Under AddressSanitizer
    a memory blow-up in C may reach the wall clock first (its realloc copies
    every growth of cjson's buffers): timeout is as good as memory there."""
    expect = list(h["expect"])
    if sanitized and "memory" in expect and "timeout" not in expect:
        expect.append("timeout")
    return expect


def is_sanitized(binary):
    """Whether binary is an ASan build (slower; see expected())."""
    import subprocess
    return "libasan" in subprocess.run(["ldd", binary], capture_output=True, text=True).stdout

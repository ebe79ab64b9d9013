"""The corpus of hostile and buggy policies (tests/policy/hostile/) and
what each file's header says the runtime must make of it."""
import os
import re

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hostile")
# the wall-clock limit the tests run each policy with: long enough that a
# loaded or sanitized machine still reaches the budget or the memory cap
# first, unless the file asks for another (the time-limit case)
TIMEOUT_MS = 30000


def header(name):
    """{expect: [REASON...], hook: NAME|None, breaks_all: bool, timeout_ms}"""
    h = {"expect": None, "hook": None, "breaks_all": False, "timeout_ms": TIMEOUT_MS}
    for line in open(os.path.join(CORPUS, name)):
        m = re.match(r"-- (expect|hook|breaks|policy-timeout): (.*)", line)
        if not m:
            continue
        k, v = m.group(1), m.group(2).strip()
        if k == "expect":
            h["expect"] = v.split()
        elif k == "hook":
            h["hook"] = v
        elif k == "breaks":
            h["breaks_all"] = v == "all"
        else:
            h["timeout_ms"] = int(v)
    assert h["expect"], f"{name}: no '-- expect:' line"
    return h


def cases(load=False):
    """The files that fail at load (load=True), or all the others."""
    names = sorted(f for f in os.listdir(CORPUS) if f.endswith(".lua"))
    return [n for n in names if (header(n)["expect"] == ["load"]) == load]

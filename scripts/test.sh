#!/bin/sh
# The whole test suite: unit tests (C), policy tests (Lua) and integration
# tests against real etcd and dockerd that the tests start themselves, on a
# normal build (with one run under valgrind) and again under
# AddressSanitizer + UndefinedBehaviorSanitizer; then the libFuzzer targets
# for a fixed time each (REGISTER_FUZZ_SECONDS, default 30).
#
#   scripts/test.sh            everything (as root: dockerd needs it)
#   scripts/test.sh -L unit    extra arguments go to ctest
#
# A test that cannot run here (no root, a missing tool: exit 77) is
# Skipped, which ctest counts as passed; skips are listed at the end, and
# with CI=true any skip fails the run.
set -eu
cd "$(dirname "$0")/.."
scripts/install-deps.sh

jobs=$(nproc 2>/dev/null || echo 2)
skips=$(mktemp)
trap 'rm -f "$skips"' EXIT

# ctest in the current directory with the arguments; the tests that did not
# run (Skipped, Not Run) go to $skips, and with CI=true fail it.
run_ctest() {
  out=$(mktemp)
  rc=0
  ctest -O "$out" "$@" || rc=$?
  sed -n '/^The following tests did not run:/,/^$/p' "$out" | sed '1d;/^$/d' |
    sed "s|^|$(basename "$PWD"): |" >>"$skips"
  if [ "${CI:-}" = true ] && grep -q '^The following tests did not run:' "$out"; then
    echo "== CI=true: a test that did not run is a failure (see above)" >&2
    rc=1
  fi
  rm -f "$out"
  return $rc
}

echo "== build" >&2
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DREGISTER_WERROR=ON >/dev/null
cmake --build build -j"$jobs"
echo "== tests" >&2
(cd build && run_ctest --output-on-failure -j"$jobs" "$@")

echo "== build with ASan + UBSan" >&2
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DREGISTER_ASAN=ON -DREGISTER_WERROR=ON >/dev/null
cmake --build build-asan -j"$jobs"
echo "== tests under ASan + UBSan" >&2
(cd build-asan &&
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  run_ctest --output-on-failure -j"$jobs" "$@")
if [ $# -eq 0 ]; then
  echo "== fuzz targets (clang, libFuzzer)" >&2
  cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DREGISTER_FUZZ=ON -DREGISTER_WERROR=ON \
    -DREGISTER_FUZZ_SECONDS="${REGISTER_FUZZ_SECONDS:-30}" >/dev/null
  cmake --build build-fuzz -j"$jobs"
  (cd build-fuzz && run_ctest --output-on-failure -L fuzz)
fi
if [ -s "$skips" ]; then
  echo "== all tests that ran passed; these did not run:" >&2
  cat "$skips" >&2
else
  echo "== all tests passed" >&2
fi

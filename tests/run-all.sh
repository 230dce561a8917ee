#!/usr/bin/env bash
# tests/run-all.sh: the project's test command (the README's, and CI's through .ci/run).
#
# On a fresh Debian 12, as root:
#   1. tools/dev setup --no-build   (Debian packages, tests/interop's npm packages)
#   2. two builds, both -Dwerror=true:
#        build-asan  ASan + UBSan (+ LeakSanitizer): every suite but valgrind and lint
#        build-test  plain: the suites that cannot run under ASan (valgrind, lint)
#   3. ONE throwaway Postgres 15 + Redis for the whole run on free ports (tools/lib/stack.sh,
#      test mode: fsync, synchronous_commit and full_page_writes off), described to the tests by
#        HM_TEST_PG_HOST      unix socket dir      HM_TEST_PG_PORT     Postgres port (127.0.0.1)
#        HM_TEST_PG_USER      postgres (superuser, trust auth; one database per daemon exists)
#        HM_TEST_PG_CONNINFO  "host=... port=... user=postgres" (append dbname=...)
#        HM_TEST_REDIS_ADDR   127.0.0.1:port
#        HM_TEST_PORT_BASE, HM_TEST_PORT_COUNT   a block of free ports tests may listen on
#        HM_TEST_TMPDIR       scratch folder removed after the run
#   4. optional coverage (HM_COVERAGE=1; default on when CI=true): build-cov with
#      -Db_coverage=true, the same suites as build-asan, a gcovr report; never fails the run.
#   5. stops Postgres and Redis (also on failure or interrupt) and prints, as its last line,
#      "N passed, N failed, N skipped" from the builds' meson-logs/testlog.json. A failed step
#      (set-up, configure, compile, stack) counts as one failure. Exit status 0 only when
#      nothing failed and at least one test passed.
#
# Arguments are passed to the ASan build's `meson test` (e.g. a test name, --suite unit).
# Knobs: HM_SKIP_SETUP=1, HM_COVERAGE=0|1, HM_COVERAGE_DEADLINE (seconds into the run after which
# coverage is skipped, default 600: keeps CI under about 20 min on 2 cores; the
# full suite with coverage took about 25), HM_TIMEOUT_MULTIPLIER (meson test -t, default 3),
# MESON_TESTTHREADS (parallel tests, meson's default: the number of cores).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
HM_PROG=run-all
export HM_PROG
# shellcheck source-path=SCRIPTDIR/.. source=tools/lib/stack.sh
. "$ROOT/tools/lib/stack.sh"
exec </dev/null

T0=$SECONDS
STEP_FAILS=() # steps other than tests that failed, one line each
NOTES=()      # lines for the summary (coverage)
COUNTED=()    # build dirs whose testlog.json counts
STACK_DIR=""
MESON_PID="" # a running meson test, stopped by the signal traps

phase() { printf '\n== %s [%ds]\n' "$*" $((SECONDS - T0)); }
step_fail() {
	STEP_FAILS+=("$1")
	hm_err "FAILED: $1"
}

# ---------------------------------------------------------------------------------------------
# builds

has_option() { grep -qE "option\\(\\s*'$1'" meson_options.txt 2>/dev/null; }

# configure_build DIR MESON_OPTIONS...: sets up DIR or applies the options to an existing one.
configure_build() {
	local dir=$1 log
	shift
	mkdir -p "$dir/meson-logs"
	log="$dir/meson-logs/run-all-setup.log"
	if [ -f "$dir/meson-private/coredata.dat" ] && meson configure "$dir" "$@" >"$log" 2>&1; then
		return 0
	fi
	rm -rf "$dir"
	mkdir -p "$dir/meson-logs"
	if ! meson setup "$dir" "$@" >"$log.tmp" 2>&1; then
		tail -n 40 "$log.tmp" >&2
		return 1
	fi
	mv "$log.tmp" "$log"
}

# build NAME MESON_OPTIONS...: configure + compile; output in NAME/meson-logs/run-all-*.log.
build() {
	local dir=$1 t=$SECONDS
	shift
	phase "build $dir: $*"
	if ! configure_build "$dir" "$@"; then
		step_fail "$dir: meson setup failed"
		return 1
	fi
	if ! meson compile -C "$dir" >"$dir/meson-logs/run-all-compile.log" 2>&1; then
		grep -E -A4 '(error|warning):' "$dir/meson-logs/run-all-compile.log" | head -n 60 >&2 ||
			tail -n 40 "$dir/meson-logs/run-all-compile.log" >&2
		step_fail "$dir: compile failed (log: $dir/meson-logs/run-all-compile.log)"
		return 1
	fi
	echo "$dir compiled in $((SECONDS - t))s"
}

# run_tests DIR MESON_TEST_ARGS...: meson test; its testlog.json then counts in the summary.
run_tests() {
	local dir=$1 rc
	shift
	phase "meson test -C $dir $*"
	rm -f "$dir/meson-logs/testlog.json"
	# In the background so that a signal reaches our trap at once, not after the last test.
	meson test -C "$dir" --print-errorlogs -t "${HM_TIMEOUT_MULTIPLIER:-3}" "$@" &
	MESON_PID=$!
	wait $MESON_PID
	rc=$?
	MESON_PID=""
	if [ -f "$dir/meson-logs/testlog.json" ]; then
		COUNTED+=("$dir")
		# A non-zero exit with no failed test in the log is a failure of meson itself.
		if [ $rc -ne 0 ] && ! grep -qvE '"result": "(OK|SKIP|EXPECTEDFAIL)"' "$dir/meson-logs/testlog.json"; then
			step_fail "meson test -C $dir exited $rc"
		fi
	elif [ $rc -ne 0 ]; then
		step_fail "meson test -C $dir exited $rc before running any test"
	else
		echo "(no test of this selection in $dir)"
	fi
}

# ---------------------------------------------------------------------------------------------
# Postgres + Redis for the run

start_stack() {
	local tries starts=0 base
	phase "start Postgres + Redis"
	STACK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/hm-test.XXXXXX") || return 1
	chmod 0755 "$STACK_DIR" # the postgres user must reach STACK_DIR/pg
	for ((tries = 0; tries < 30 && starts < 3; tries++)); do
		# 28000..32699 in blocks of 100: below the ephemeral range, apart from tools/dev's.
		base=$((28000 + (RANDOM % 47) * 100))
		hm_ports_free "$base" 100 || continue
		starts=$((starts + 1))
		if hm_stack_start "$STACK_DIR" "$base" $((base + 1)) test; then
			export HM_TEST_PG_HOST HM_TEST_PG_PORT=$base HM_TEST_PG_USER=postgres
			HM_TEST_PG_HOST=$(hm_pg_sockdir "$STACK_DIR")
			export HM_TEST_PG_CONNINFO="host=$HM_TEST_PG_HOST port=$base user=postgres"
			export HM_TEST_REDIS_ADDR="127.0.0.1:$((base + 1))"
			export HM_TEST_PORT_BASE=$((base + 10)) HM_TEST_PORT_COUNT=90
			export HM_TEST_TMPDIR="$STACK_DIR/tmp"
			mkdir -p "$HM_TEST_TMPDIR"
			echo "postgres 127.0.0.1:$base (socket $HM_TEST_PG_HOST), redis $HM_TEST_REDIS_ADDR," \
				"test ports $HM_TEST_PORT_BASE..$((HM_TEST_PORT_BASE + HM_TEST_PORT_COUNT - 1))"
			return 0
		fi
	done
	return 1
}

# Kills what tests left listening on the run's port block (it would outlive the run).
reap_leftovers() {
	local pids
	[ -n "${HM_TEST_PORT_BASE:-}" ] || return 0
	pids=$(ss -Hltnp 2>/dev/null | awk -v lo="$HM_TEST_PORT_BASE" -v hi=$((HM_TEST_PORT_BASE + HM_TEST_PORT_COUNT)) '
		{ n = split($4, a, ":"); p = a[n] + 0; if (p >= lo && p < hi) print }' |
		grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u)
	[ -n "$pids" ] || return 0
	NOTES+=("warning: tests left processes listening on their ports (killed): $(ps -o pid=,comm= -p "$(paste -sd, <<<"$pids")" | tr -s ' \n' '  ')")
	# shellcheck disable=SC2086
	kill -KILL $pids 2>/dev/null
	return 0
}

cleanup() {
	[ -n "$STACK_DIR" ] || return 0
	reap_leftovers
	hm_stack_stop "$STACK_DIR" || hm_err "could not stop the test Postgres/Redis in $STACK_DIR"
	rm -rf "$STACK_DIR"
	STACK_DIR=""
}
# On a signal: stop the running meson test (it ends its tests), then Postgres and Redis.
# shellcheck disable=SC2317 # called from the traps below
interrupted() {
	if [ -n "$MESON_PID" ]; then
		kill -TERM "$MESON_PID" 2>/dev/null
		wait "$MESON_PID" 2>/dev/null
	fi
	cleanup
	exit "$1"
}
trap cleanup EXIT
trap 'interrupted 130' INT
trap 'interrupted 143' TERM

# ---------------------------------------------------------------------------------------------
# coverage (optional, never fails the run)

coverage() {
	local want=${HM_COVERAGE:-} deadline=${HM_COVERAGE_DEADLINE:-600} out pct
	if [ -z "$want" ]; then
		if [ "${CI:-}" = true ]; then want=1; else want=0; fi
	fi
	[ "$want" = 1 ] || return 0
	if [ $((SECONDS - T0)) -gt "$deadline" ]; then
		NOTES+=("coverage: skipped, $((SECONDS - T0))s into the run (HM_COVERAGE_DEADLINE=${deadline}s)")
		return 0
	fi
	phase "coverage build"
	if ! configure_build build-cov -Db_coverage=true -Dbuildtype=debug -Dwerror=false ||
		! meson compile -C build-cov >build-cov/meson-logs/run-all-compile.log 2>&1; then
		NOTES+=("coverage: the build-cov build failed (not counted)")
		return 0
	fi
	find build-cov -name '*.gcda' -delete
	phase "coverage tests (results not counted)"
	rm -f build-cov/meson-logs/testlog.json
	meson test -C build-cov -t "${HM_TIMEOUT_MULTIPLIER:-3}" --no-suite valgrind --no-suite lint \
		>build-cov/meson-logs/run-all-test.log 2>&1
	tail -n 8 build-cov/meson-logs/run-all-test.log
	mkdir -p build-cov/coverage
	if out=$(gcovr -r "$ROOT" -j 2 --exclude 'build[^/]*/' --exclude 'tests/' \
		--html-details build-cov/coverage/index.html --print-summary build-cov 2>build-cov/coverage/gcovr.log) &&
		pct=$(sed -n 's/^lines: *\([0-9.]*%\).*/\1/p' <<<"$out") && [ -n "$pct" ]; then
		NOTES+=("coverage: lines $pct $(sed -n 's/^lines: *[0-9.]*% *//p' <<<"$out"), report build-cov/coverage/index.html")
	else
		NOTES+=("coverage: gcovr produced no figure (build-cov/coverage/gcovr.log)")
	fi
}

# ---------------------------------------------------------------------------------------------
# summary: the last line is "N passed, N failed, N skipped"

summary() {
	local logs=() d
	for d in "${COUNTED[@]}"; do logs+=("$d/meson-logs/testlog.json"); done
	printf '\n== summary [%ds]\n' $((SECONDS - T0))
	python3 - "${#STEP_FAILS[@]}" "${STEP_FAILS[@]}" "${#NOTES[@]}" "${NOTES[@]}" "${logs[@]}" <<'PY'
import json, sys

args = sys.argv[1:]
n = int(args.pop(0)); steps = args[:n]; args = args[n:]
n = int(args.pop(0)); notes = args[:n]; logs = args[n:]
PASS = {"OK", "EXPECTEDFAIL"}
FAIL = {"FAIL", "UNEXPECTEDPASS", "TIMEOUT", "ERROR"}
total = {"passed": 0, "failed": 0, "skipped": 0}
failures = []
for path in logs:
    build = path.split("/meson-logs/")[0]
    c = {"passed": 0, "failed": 0, "skipped": 0}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            t = json.loads(line)
            r = t.get("result", "ERROR")
            if r in PASS:
                c["passed"] += 1
            elif r == "SKIP":
                c["skipped"] += 1
            else:
                c["failed"] += 1
                failures.append(f"  {r:<14} {build}: {t.get('name', '?')}")
    print(f"{build}: {c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped")
    for k in total:
        total[k] += c[k]
for line in failures:
    print(line)
for s in steps:
    print(f"  FAILED STEP    {s}")
for s in notes:
    print(s)
total["failed"] += len(steps)
ok = total["failed"] == 0 and total["passed"] > 0
if total["passed"] == 0 and total["failed"] == 0:
    print("no test ran: that is a failure")
print(f"{total['passed']} passed, {total['failed']} failed, {total['skipped']} skipped")
sys.exit(0 if ok else 1)
PY
}

finish() {
	phase "stop Postgres + Redis"
	cleanup
	summary
	exit $?
}

# ---------------------------------------------------------------------------------------------

phase "set-up"
if [ "${HM_SKIP_SETUP:-0}" != 1 ]; then
	tools/dev setup --no-build || {
		step_fail "tools/dev setup failed"
		finish
	}
fi

# shellcheck disable=SC2054 # the comma belongs to the option's value
asan_opts=(-Dwerror=true -Db_sanitize=address,undefined -Db_lundef=false)
has_option sanitize_tests && asan_opts+=(-Dsanitize_tests=true)
build build-asan "${asan_opts[@]}" && asan_ok=1 || asan_ok=0
build build-test -Dwerror=true -Db_sanitize=none && plain_ok=1 || plain_ok=0

if [ "$asan_ok$plain_ok" = 00 ]; then
	finish
fi
if ! start_stack; then
	step_fail "could not start the test Postgres + Redis"
	finish
fi

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:halt_on_error=1:abort_on_error=0:print_stacktrace=1:strict_string_checks=1:check_initialization_order=1:detect_stack_use_after_return=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
if [ -z "${LSAN_OPTIONS:-}" ] && [ -f tests/lsan.supp ]; then
	export LSAN_OPTIONS="suppressions=$ROOT/tests/lsan.supp:print_suppressions=0"
fi

[ "$asan_ok" = 1 ] && run_tests build-asan --no-suite valgrind --no-suite lint "$@"
[ "$plain_ok" = 1 ] && run_tests build-test --suite valgrind --suite lint

# A short real libFuzzer run of every target of tests/fuzz (suite 'fuzz'): only on a full run
# (no selection given) or with HM_FUZZ=1, and only when clang and its libFuzzer runtime are
# installed (tools/dev setup installs clang and libclang-rt-14-dev). build-fuzz compiles only
# the fuzz targets and what they link; each fuzzes HM_FUZZ_SECONDS (default 10) after
# replaying its corpus. HM_FUZZ=0 skips it.
fuzz_run() {
	local rt dir=build-fuzz t=$SECONDS targets
	rt=$(clang -print-file-name=libclang_rt.fuzzer-x86_64.a 2>/dev/null) || rt=""
	if [ ! -f "$rt" ]; then
		echo "(clang or libFuzzer not installed: no fuzz run)"
		return 0
	fi
	phase "build $dir (clang, libFuzzer): the fuzz targets"
	if ! CC=clang configure_build "$dir" -Dfuzz=true -Db_sanitize=address,undefined \
		-Db_lundef=false -Dwerror=true; then
		step_fail "$dir: meson setup failed"
		return 1
	fi
	mapfile -t targets < <(meson introspect "$dir" --tests | python3 -c '
import json, sys
for t in json.load(sys.stdin):
    if any(s.split(":")[-1] == "fuzz" for s in t["suite"]):
        print("tests/fuzz/" + t["name"])')
	if [ ${#targets[@]} -eq 0 ]; then
		step_fail "$dir: no fuzz targets found in the test list"
		return 1
	fi
	if ! meson compile -C "$dir" "${targets[@]}" >"$dir/meson-logs/run-all-compile.log" 2>&1; then
		grep -E -A4 '(error|warning):' "$dir/meson-logs/run-all-compile.log" | head -n 60 >&2
		step_fail "$dir: compile failed (log: $dir/meson-logs/run-all-compile.log)"
		return 1
	fi
	echo "$dir: ${#targets[@]} fuzz targets compiled in $((SECONDS - t))s"
	HM_FUZZ_SECONDS=${HM_FUZZ_SECONDS:-10} run_tests "$dir" --no-rebuild --suite fuzz
}
if [ "${HM_FUZZ:-}" = 1 ] || { [ $# -eq 0 ] && [ "${HM_FUZZ:-}" != 0 ]; }; then
	fuzz_run
fi
coverage
finish

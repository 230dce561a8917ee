#!/bin/sh
# Runs one libFuzzer target for the 'fuzz' test suite: replays the committed seed corpus, then
# fuzzes with the given limits. New inputs go to WORKDIR/corpus (kept between runs, never into
# the source tree); a crash, leak or timeout leaves its reproducer in WORKDIR and fails the test.
# libFuzzer's own failure status is 77, which meson reads as "skipped": it is mapped to 1.
# Usage: run-fuzzer.sh FUZZER SEED_DIR WORKDIR [libFuzzer flags...]
set -eu
# HM_FUZZ_SECONDS (set by tests/run-all.sh's short CI run) replaces any -max_total_time given.
fuzzer=$1 seeds=$2 work=$3
shift 3
mkdir -p "$work/corpus"
if [ -n "${HM_FUZZ_SECONDS:-}" ]; then
    for a in "$@"; do
        shift
        case $a in -max_total_time=*) ;; *) set -- "$@" "$a" ;; esac
    done
    set -- "$@" -max_total_time="$HM_FUZZ_SECONDS"
fi
exec "$fuzzer" -artifact_prefix="$work/" -print_final_stats=1 -error_exitcode=1 \
    -timeout_exitcode=1 "$@" "$work/corpus" "$seeds"

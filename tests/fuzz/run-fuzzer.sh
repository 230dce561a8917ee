#!/bin/sh
# Runs one libFuzzer target for the 'fuzz' test suite: replays the committed seed corpus, then
# fuzzes with the given limits. New inputs go to WORKDIR/corpus (kept between runs, never into
# the source tree); a crash, leak or timeout leaves its reproducer in WORKDIR and fails the test.
# libFuzzer's own failure status is 77, which meson reads as "skipped": it is mapped to 1.
# Usage: run-fuzzer.sh FUZZER SEED_DIR WORKDIR [libFuzzer flags...]
set -eu
fuzzer=$1 seeds=$2 work=$3
shift 3
mkdir -p "$work/corpus"
exec "$fuzzer" -artifact_prefix="$work/" -print_final_stats=1 -error_exitcode=1 \
    -timeout_exitcode=1 "$@" "$work/corpus" "$seeds"

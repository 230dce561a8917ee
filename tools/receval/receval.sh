#!/usr/bin/env bash
# tools/receval/receval.sh [receval options]: the offline evaluation of recommenderd's models on
# MovieLens latest-small (2016: 100,004 ratings, 671 users, 9,066 movies), which ships inside
# Debian's r-cran-dslabs. The data is extracted with R into a temporary folder for the run and
# deleted afterwards; it is never committed. Needs r-cran-dslabs (and so r-base-core): this is
# the evaluation's own set-up, not CI's.
#   bash tools/receval/receval.sh                    # both protocols, 1000 bootstrap resamples
#   RECEVAL=build-test/tools/receval/receval bash tools/receval/receval.sh --protocol random
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
RECEVAL=${RECEVAL:-$ROOT/build-test/tools/receval/receval}
if ! command -v Rscript >/dev/null || ! Rscript -e 'stopifnot(requireNamespace("dslabs", quietly=TRUE))' >/dev/null 2>&1; then
	echo "receval.sh: needs R with dslabs: apt-get install --no-install-recommends r-cran-dslabs" >&2
	exit 2
fi
[ -x "$RECEVAL" ] || { echo "receval.sh: build receval first ($RECEVAL)" >&2; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
Rscript -e 'data("movielens", package = "dslabs");
  write.csv(movielens[, c("userId", "movieId", "rating", "timestamp", "genres")],
            commandArgs(TRUE)[1], row.names = FALSE)' "$tmp/movielens.csv"
"$RECEVAL" --data "$tmp/movielens.csv" "$@"

#!/bin/sh
# Formats (fix) or checks (check) every C file of the project with the committed .clang-format.
set -eu
cd "${MESON_SOURCE_ROOT:-$(dirname "$0")/..}"
files=$(git ls-files '*.c' '*.h' 2>/dev/null || find common services tools tests -name '*.[ch]')
[ -n "$files" ] || exit 0
if [ "${1:-check}" = fix ]; then
    clang-format -i $files
else
    clang-format --dry-run --Werror $files
fi

#!/usr/bin/env bash
# Fuzz smoke run for CI: every target in fuzz/ for FUZZ_SECONDS (default 30) seconds,
# starting from the committed seeds. Installs cargo-fuzz if missing. Fails if any target
# finds a crash, a hang or an out-of-memory; the offending input is kept in
# fuzz/artifacts/<target>/ and can be replayed with
#   (cd fuzz && cargo fuzz run -s none <target> artifacts/<target>/<file>)
# Long runs: scripts/fuzz-long.sh.
source "$(dirname "$0")/fuzz-common.sh"

seconds="${FUZZ_SECONDS:-30}"
fuzz_install
fuzz_build

logs="$(mktemp -d -t rstmdb-fuzz.XXXXXX)"
trap 'rm -rf "$logs"' EXIT
failed=()
for target in $(fuzz_targets); do
    if fuzz_run "$target" "$seconds" "$logs/$target.log"; then
        printf '== %-20s ok    %12s execs in %ss\n' "$target" "$(fuzz_execs "$logs/$target.log")" "$seconds"
    else
        printf '== %-20s FAILED\n' "$target"
        tail -n 60 "$logs/$target.log"
        failed+=("$target")
    fi
done
if ((${#failed[@]})); then
    echo "fuzz smoke: failures in ${failed[*]} (inputs in fuzz/artifacts/)"
    exit 1
fi
echo "fuzz smoke: all targets clean"

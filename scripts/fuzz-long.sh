#!/usr/bin/env bash
# Long fuzz run: every target (or the ones named) for SECONDS each (default 600), one after
# the other, growing the working corpus in fuzz/corpus/. Prints executions per target.
#
#   scripts/fuzz-long.sh                 # 600 s per target
#   scripts/fuzz-long.sh 3600 guard      # one hour on the guard language
#   FUZZ_JOBS=2 scripts/fuzz-long.sh     # libFuzzer forks 2 workers per target
#   FUZZ_SANITIZER=address scripts/fuzz-long.sh
#
# Exit status is non-zero if any target failed; inputs are kept in fuzz/artifacts/<target>/.
source "$(dirname "$0")/fuzz-common.sh"

seconds="${1:-600}"
shift || true
fuzz_install
fuzz_build
if (($#)); then targets=("$@"); else mapfile -t targets < <(fuzz_targets); fi

logs="$(mktemp -d -t rstmdb-fuzz-long.XXXXXX)"
echo "== logs in $logs"
extra=()
if [[ -n "${FUZZ_JOBS:-}" ]]; then extra=(-fork="$FUZZ_JOBS"); fi
failed=()
results=()
for target in "${targets[@]}"; do
    echo "== $target: ${seconds}s"
    status=ok
    fuzz_run "$target" "$seconds" "$logs/$target.log" "${extra[@]}" || status=FAILED
    execs="$(fuzz_execs "$logs/$target.log")"
    corpus="$(find "$FUZZ_DIR/corpus/$target" -type f | wc -l)"
    results+=("$(printf '%-20s %-6s %14s %10s %8s' "$target" "$status" "${execs:-?}" \
        "$(( ${execs:-0} / seconds ))" "$corpus")")
    if [[ "$status" != ok ]]; then
        tail -n 60 "$logs/$target.log"
        failed+=("$target")
    fi
done
echo
printf '%-20s %-6s %14s %10s %8s\n' target status execs "execs/s" corpus
printf '%s\n' "${results[@]}"
if ((${#failed[@]})); then
    echo "failures in ${failed[*]} (inputs in fuzz/artifacts/)"
    exit 1
fi

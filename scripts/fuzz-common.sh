# Shared by fuzz-smoke.sh and fuzz-long.sh (sourced, not run).
#
# cargo-fuzz drives libFuzzer. With the default sanitizer `none` it builds on stable rustc as
# is; `FUZZ_SANITIZER=address` adds `-Zsanitizer=address`, which stable rustc accepts only
# with RUSTC_BOOTSTRAP=1 — set here so both work on CI's stable-only machines. The crates
# under test deny unsafe code, so `none` (about twice as fast) is the default.
set -euo pipefail

FUZZ_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz" && pwd)"
FUZZ_SANITIZER="${FUZZ_SANITIZER:-none}"
# Fuzz builds use their own target dir (their flags differ from the workspace's).
FUZZ_TARGET_DIR="${FUZZ_TARGET_DIR:-$FUZZ_DIR/target}"
export RUSTC_BOOTSTRAP=1

fuzz_install() {
    if ! cargo fuzz --version >/dev/null 2>&1; then
        echo "== installing cargo-fuzz"
        cargo install cargo-fuzz --locked
    fi
}

fuzz_build() {
    echo "== building fuzz targets (sanitizer: $FUZZ_SANITIZER)"
    (cd "$FUZZ_DIR" && cargo fuzz build -s "$FUZZ_SANITIZER" --target-dir "$FUZZ_TARGET_DIR")
}

fuzz_targets() {
    (cd "$FUZZ_DIR" && cargo fuzz list)
}

# fuzz_run TARGET SECONDS LOGFILE [libFuzzer args...]: fuzzes TARGET from its committed seeds
# (fuzz/seeds/TARGET, read only) and its working corpus (fuzz/corpus/TARGET, git-ignored,
# where new inputs go). Returns libFuzzer's status: non-zero on a crash, a leak, an input
# running longer than 10 s or an out-of-memory; the input is saved in fuzz/artifacts/TARGET/.
fuzz_run() {
    local target="$1" seconds="$2" log="$3"
    shift 3
    mkdir -p "$FUZZ_DIR/corpus/$target"
    (cd "$FUZZ_DIR" && cargo fuzz run -s "$FUZZ_SANITIZER" --target-dir "$FUZZ_TARGET_DIR" \
        "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "$@") \
        >"$log" 2>&1
}

# The number of inputs a finished run executed, from its log (final stats, or in fork mode
# the last progress line).
fuzz_execs() {
    local n
    n="$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$1" | tail -n 1)"
    if [[ -z "$n" ]]; then
        n="$(sed -n 's/^#\([0-9][0-9]*\).*/\1/p' "$1" | tail -n 1)"
    fi
    echo "$n"
}

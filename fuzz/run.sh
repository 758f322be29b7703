#!/usr/bin/env bash
# Builds every fuzz target and runs each for FUZZ_SECONDS (default 20),
# starting from the committed seeds in fuzz/corpus/TARGET. Fails on any
# crash or broken invariant. No nightly needed: RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${FUZZ_SECONDS:-20}"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

cargo fuzz build
targets=$(cargo fuzz list)

# New inputs go to a scratch corpus, so the committed seeds stay small.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

for target in $targets; do
    echo "fuzz: $target for ${seconds} s"
    mkdir -p "$scratch/$target" "corpus/$target"
    log="$scratch/$target.log"
    if ! cargo fuzz run "$target" "$scratch/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "fuzz: $target FAILED (the input is in fuzz/artifacts/$target/)" >&2
        exit 1
    fi
    grep -E '^stat::(number_of_executed_units|peak_rss_mb)' "$log" || true
done
echo "fuzz: every target ran ${seconds} s without a finding"

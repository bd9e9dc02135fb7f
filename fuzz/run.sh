#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60) on the seed corpus in
# fuzz/corpus, with cargo-fuzz on the stable toolchain (no sanitizer: the
# crate forbids unsafe code, so the targets look for panics, hangs, OOMs and
# violated assertions). Prints executions and crashes per target.
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH="${1:-60}"
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
cargo fuzz build -s none -O
for t in scope_parse declarations token_form verify_token; do
  mkdir -p "corpus/$t"
  # Run on a scratch copy so the committed seed corpus stays small.
  work="$(mktemp -d)"; cp -r "corpus/$t/." "$work/"
  log="$(mktemp)"
  cargo fuzz run -s none -O "$t" "$work" -- -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 >"$log" 2>&1 || { tail -40 "$log"; echo "$t: CRASH"; exit 1; }
  execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)"
  [ -n "$execs" ] || execs="$(grep -oE '#[0-9]+' "$log" | tail -1 | tr -d '#')"
  echo "$t: ${execs} executions, 0 crashes, corpus $(ls "$work" | wc -l) inputs"
  rm -rf "$work" "$log"
done

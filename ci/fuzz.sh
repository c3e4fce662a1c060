#!/usr/bin/env bash
# libFuzzer campaign over the portable core (firmware/fuzz/README.md): builds fuzz_config,
# fuzz_commands and fuzz_prompt_file with clang (-fsanitize=fuzzer,address,undefined) into
# build/fuzz/, makes the micro card they boot on (build/fuzz/card), then runs each for
# FUZZ_SECONDS (default 60) seconds on a scratch copy of its committed corpus
# (firmware/fuzz/corpus/<target>/, never modified). Findings go to
# build/fuzz/artifacts/<target>-*; the summary to build/reports/fuzz.json.
#
#   bash ci/fuzz.sh [--seconds N] [--target NAME] [--build-only]
#
# Exit: 0 no finding; 1 a target found a crash, sanitizer report, contract break, leak or
# timeout (or a committed regression-* input still reproduces); 2 a build or setup error;
# 3 no clang or no libFuzzer runtime. TINYLLM_FUZZ_CC names the compiler (default: the first
# of clang, clang-19 ... clang-14 on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."

ALL_TARGETS=(fuzz_config fuzz_commands fuzz_prompt_file fuzz_flash_tier)
seconds=${FUZZ_SECONDS:-60}
targets=("${ALL_TARGETS[@]}")
build_only=0
usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) [ $# -ge 2 ] || { usage >&2; exit 2; }; seconds=$2; shift 2 ;;
    --seconds=*) seconds=${1#*=}; shift ;;
    --target) [ $# -ge 2 ] || { usage >&2; exit 2; }; targets=("$2"); shift 2 ;;
    --target=*) targets=("${1#*=}"); shift ;;
    --build-only) build_only=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "ci/fuzz.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
case "$seconds" in ''|*[!0-9]*) echo "ci/fuzz.sh: --seconds wants a whole number of seconds, got '$seconds'" >&2; exit 2 ;; esac
for t in "${targets[@]}"; do
  case " ${ALL_TARGETS[*]} " in *" $t "*) ;; *) echo "ci/fuzz.sh: unknown target '$t' (${ALL_TARGETS[*]})" >&2; exit 2 ;; esac
done

OUT=build/fuzz
mkdir -p "$OUT" build/reports

# --- clang and its libFuzzer runtime ---------------------------------------------------------
cc=${TINYLLM_FUZZ_CC:-}
if [ -z "$cc" ]; then
  for c in clang clang-19 clang-18 clang-17 clang-16 clang-15 clang-14; do
    if command -v "$c" >/dev/null 2>&1; then cc=$(command -v "$c"); break; fi
  done
fi
if [ -z "$cc" ] || ! command -v "$cc" >/dev/null 2>&1; then
  echo "ci/fuzz.sh: no clang found (TINYLLM_FUZZ_CC='${TINYLLM_FUZZ_CC:-}'; tried clang, clang-19 ... clang-14 on PATH)." >&2
  echo "ci/fuzz.sh: on Debian 12: apt-get install clang-14 libclang-rt-14-dev" >&2
  exit 3
fi
if ! "$cc" --version 2>/dev/null | grep -qi clang; then
  echo "ci/fuzz.sh: $cc is not clang (TINYLLM_FUZZ_CC='${TINYLLM_FUZZ_CC:-}'): libFuzzer needs clang." >&2
  echo "ci/fuzz.sh: on Debian 12: apt-get install clang-14 libclang-rt-14-dev" >&2
  exit 3
fi
probe=$(mktemp -d)
printf '#include <stddef.h>\n#include <stdint.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n' > "$probe/probe.c"
if ! "$cc" -fsanitize=fuzzer,address,undefined "$probe/probe.c" -o "$probe/probe" > "$probe/log" 2>&1; then
  echo "ci/fuzz.sh: $cc cannot link -fsanitize=fuzzer,address,undefined: the libFuzzer/sanitizer runtime is missing." >&2
  sed 's/^/  /' "$probe/log" | head -5 >&2
  ver=$("$cc" -dumpversion 2>/dev/null | cut -d. -f1)
  echo "ci/fuzz.sh: on Debian 12: apt-get install libclang-rt-${ver:-14}-dev" >&2
  rm -rf "$probe"
  exit 3
fi
rm -rf "$probe"

# --- build and card (one at a time: a second ci/fuzz.sh or the tests may be here too) ------------
exec 9>"$OUT/.lock"
flock 9
# cJSON from Debian's source package (the same 1.7.15 the linux target links), so that the
# parser the config bytes go through is instrumented too; else the system library.
cjson_dir=build/third_party/cjson
if [ ! -f "$cjson_dir/cJSON.c" ] && ! bash ci/fetch-cjson-source.sh >/dev/null 2>&1; then
  echo "ci/fuzz.sh: no cJSON source (ci/fetch-cjson-source.sh failed): linking the system libcjson, uninstrumented"
  cjson_dir=""
fi
echo "ci/fuzz.sh: building ${ALL_TARGETS[*]} with $cc into $OUT/"
if ! { cmake -S firmware/fuzz -B "$OUT/cmake" -DCMAKE_C_COMPILER="$cc" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
         -DCMAKE_RUNTIME_OUTPUT_DIRECTORY="$PWD/$OUT" -DCJSON_SOURCE_DIR="${cjson_dir:+$PWD/$cjson_dir}" \
         && cmake --build "$OUT/cmake" -j "$(nproc 2>/dev/null || echo 2)"; } > "$OUT/build.log" 2>&1; then
  tail -30 "$OUT/build.log" >&2
  echo "ci/fuzz.sh: the build failed (log: $OUT/build.log)" >&2
  exit 2
fi

# The micro card (both weight sets), remade when the harness or the model fixture changed.
card=$OUT/card
stamp=$(find harness -name "*.py" | LC_ALL=C sort | xargs cat fixtures/models/micro.json | sha256sum | cut -c1-16)
PY=$(bash ci/python.sh) # the harness: the card, and fuzz_flash_tier's matching seeds
if [ "$(cat "$card/.stamp" 2>/dev/null || true)" != "$stamp" ]; then
  rm -rf "$card.new"
  echo "ci/fuzz.sh: exporting the micro card into $card"
  if ! "$PY" -m harness.cli export --model micro --out "$card.new" > "$OUT/card.log" 2>&1; then
    tail -20 "$OUT/card.log" >&2
    echo "ci/fuzz.sh: could not export the micro card with $PY (run ci/setup.sh first; log: $OUT/card.log)" >&2
    exit 2
  fi
  echo "$stamp" > "$card.new/.stamp"
  rm -rf "$card"
  mv "$card.new" "$card"
fi
flock -u 9

if [ "$build_only" = 1 ]; then
  for t in "${ALL_TARGETS[@]}"; do echo "$OUT/$t"; done
  exit 0
fi

# --- run -------------------------------------------------------------------------------------
max_len_of() { case "$1" in fuzz_config) echo 32768 ;; fuzz_commands) echo 4096 ;; fuzz_prompt_file) echo 10240 ;;
  fuzz_flash_tier) echo 65536 ;; esac; }
dict_of() { case "$1" in fuzz_config|fuzz_flash_tier) echo "firmware/fuzz/dict/$1.dict" ;;
  *) echo firmware/fuzz/dict/fuzz_commands.dict ;; esac; }

export TINYLLM_FUZZ_CARD="$PWD/$card"
mkdir -p "$OUT/artifacts" "$OUT/logs" "$OUT/tmp"
export TMPDIR="$PWD/$OUT/tmp" # fuzz_prompt_file's scratch card folders
scratch=$(mktemp -d "$OUT/scratch.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

status=0
json="{"
for t in "${targets[@]}"; do
  bin=$OUT/$t
  log=$OUT/logs/$t.log
  corpus=$scratch/$t
  mkdir -p "$corpus"
  findings=0
  artifacts=()
  # Committed reproducers of findings (regression-*) first: one that still breaks the
  # target is a finding of its own, and stays out of the campaign so it can look further.
  for f in firmware/fuzz/corpus/"$t"/*; do
    [ -f "$f" ] || continue
    case "$(basename "$f")" in
      regression-*)
        if ! "$bin" -runs=1 -artifact_prefix="$OUT/artifacts/$t-" "$f" > "$OUT/logs/$t-$(basename "$f").log" 2>&1; then
          findings=$((findings + 1))
          artifacts+=("$f (committed regression input still reproduces; log $OUT/logs/$t-$(basename "$f").log)")
          continue
        fi ;;
    esac
    cp "$f" "$corpus/"
  done
  if [ "$t" = fuzz_flash_tier ]; then # tiers that match this card (its card id is the export's)
    for p in float32 int8; do
      if ! "$PY" -m harness.cli flash-tier --card "$card" --precision "$p" --out "$corpus/made-$p.bin" > /dev/null; then
        echo "ci/fuzz.sh: could not make the $p flash tier seed with $PY" >&2
        exit 2
      fi
    done
  fi
  echo "ci/fuzz.sh: $t: fuzzing for ${seconds} s (corpus $(ls "$corpus" | wc -l) seeds, log $log)"
  start=$(date +%s.%N)
  rc=0
  "$bin" "$corpus" -max_total_time="$seconds" -print_final_stats=1 -artifact_prefix="$OUT/artifacts/$t-" \
    -dict="$(dict_of "$t")" -max_len="$(max_len_of "$t")" -timeout=60 -rss_limit_mb=2560 > "$log" 2>&1 || rc=$?
  end=$(date +%s.%N)
  elapsed=$(awk -v a="$start" -v b="$end" 'BEGIN { printf("%.1f", b - a) }')
  execs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -1)
  if [ -z "$execs" ]; then # no final stats (a crash): the last status line's count
    execs=$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#')
  fi
  execs=${execs:-0}
  # libFuzzer also writes a unit slower than 10 s (slow-unit-*): a note, not a finding
  written=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | grep -v -- "-slow-unit-" || true)
  slow=$(sed -n 's/.*Test unit written to \(.*-slow-unit-.*\)$/\1/p' "$log" | tail -1)
  if [ "$rc" != 0 ] || [ -n "$written" ]; then
    findings=$((findings + 1))
    if [ -n "$written" ]; then
      while IFS= read -r a; do artifacts+=("$a (log $log)"); done <<< "$written"
    else
      artifacts+=("(libFuzzer exited $rc without writing an input; log $log)")
    fi
    grep -m1 -E "CONTRACT BREAK|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error|SUMMARY" "$log" | sed 's/^/  /' || true
  fi
  [ -z "$slow" ] || echo "ci/fuzz.sh: $t: note: an input took over 10 s once ($slow; a busy machine can do that too)"
  rate=$(awk -v n="$execs" -v s="$elapsed" 'BEGIN { printf("%.0f", (s > 0) ? n / s : 0) }')
  echo "ci/fuzz.sh: $t: $execs executions in $elapsed s ($rate/s), $findings finding(s)"
  for a in "${artifacts[@]+"${artifacts[@]}"}"; do echo "ci/fuzz.sh: $t: FINDING: $a"; done
  [ "$findings" = 0 ] || status=1
  [ "$json" = "{" ] || json+=", "
  json+="\"$t\": {\"executions\": $execs, \"seconds\": $elapsed, \"crashes\": $findings}"
done
json+="}"
echo "$json" > build/reports/fuzz.json
echo "ci/fuzz.sh: wrote build/reports/fuzz.json"
exit "$status"

#!/usr/bin/env bash
# Benchmark: plan time, peak memory and no-op build time for a pipeline of N shard targets, all fresh,
# on the local store (issue: "Plan time and peak memory for a pipeline of 100,000 shard targets, all fresh,
# on the local store: aim under 1 s and under 200 MB; the no-op build time for the same pipeline").
#
# Figures (N=500000: 10⁶ targets, 2 cores, 2026-11-30, load 1.5–2), interleaved with the previous release:
#   `dsmake plan`       2.49–2.60 s wall, 4.5–4.7 s CPU, 740–800 MB peak RSS  (before: 3.68–3.71 s, 6.5 s, 710 MB)
#   no-op build         2.40–2.51 s                                           (before: 3.69–3.77 s)
#   GNU make no-op      8.5–9.6 s: dsmake's no-op build takes 0.3× make's
# Those plans do not list the manifests' folder (unchanged since the index described it: see ARCHITECTURE.md,
# "A listing is trusted only while nothing could have changed it"). The first plan after that folder changed
# (a build, gc) lists it whole: 3.4–3.7 s, 6.2–6.4 s CPU, 840–850 MB.
#
# What it does
#   1. `cargo build --release`, then uses $CARGO_TARGET_DIR/release/dsmake (./target when unset).
#   2. In a work folder generates N small source files (one python3 process) and a pipeline:
#        step `src`  (kind files, paths = "src/*.txt")        -> N source targets (hashed, never built)
#        step `copy` (kind command, per = "shard", cp)        -> N built targets
#      so the plan has 2N targets: N source + N built. The store (--store) and DSMAKE_CACHE_DIR (the stat
#      cache) live inside the work folder too.
#   3. Runs the first full build once, with -q (spawns N bash processes: minutes at N=100000), and prints
#      its time and built targets/s. Then checks (plan --format json, as below) that every `copy` target
#      is fresh and the stats are zero; it stops there if not, since the timings would mean nothing.
#   4. REPEAT times (default 3), interleaved, and reports each run and the median:
#        - `dsmake plan PIPELINE`                  wall time and peak RSS (table output to /dev/null)
#        - `dsmake build -q --format json PIPELINE` (no-op) wall time and peak RSS; asserts built == 0
#        - `dsmake plan --format json PIPELINE`    wall time, peak RSS and its `stats` object; asserts
#          stats.sources_hashed == 0 and stats.manifests_read == 0 (exits 1 if not): on an all-fresh
#          pipeline the stat cache and the per-step index must answer everything.
#   5. Reference peer on the same machine in the same run: GNU make's no-op over the same N files
#      (Makefile with `make-out/%.txt: src/%.txt ; cp $< $@`, builtin rules off; the outputs are made by
#      one bulk `cp -r`, the sources being dated an hour back, so `make -q` says up to date), REPEAT
#      times, and the ratio dsmake no-op / make no-op (medians). Skipped, with a note, without `make`.
#   6. Prints a summary block.
#
# How time and memory are measured (one way, everywhere): a small python3 helper starts the command with
# os.posix_spawn and reaps it with os.wait4, which gives the rusage of exactly that child. Wall time is
# time.perf_counter() around spawn..reap (python's own start-up is not included); peak memory is the
# child's ru_maxrss (KiB on Linux), shown in MB = 10^6 bytes. /usr/bin/time is not needed. The child's CPU
# time (user + system, all threads) is printed beside each run: on a shared machine it moves less than wall.
# Peak RSS has a floor: Linux counts the spawning python's resident set (~10-15 MB) in the child's ru_maxrss
# (exec after vfork); the script measures `true` and prints that floor. It matters only for small N.
#
# Run (from anywhere; needs bash, python3, cargo; make is optional):
#   tests/bench/engine_plan.sh                    # N=100000, fresh temp folder, removed at the end
#   N=2000 tests/bench/engine_plan.sh             # quick smoke run
#   BENCH_DIR=/tmp/b tests/bench/engine_plan.sh   # work there and keep it afterwards (KEEP=1 keeps a temp one)
#   BENCH_DIR=/tmp/b REUSE=1 tests/bench/engine_plan.sh       # reuse a folder built by an earlier run:
#                                                             # skips generation and the first build
# Environment:
#   N (100000)  REPEAT (3)  BENCH_DIR (mktemp -d; must be empty or absent unless REUSE=1)
#   KEEP=1      keep a mktemp work folder (a given BENCH_DIR is always kept)
#   JOBS        -j for the first build (default: dsmake's default, the number of cores)
#   STRICT=1    also exit 1 when the plan median is over 1 s or its peak RSS over 200 MB
#   FIXTURE=1   no first build: tests/it/plan_fixture.rs writes the outputs, manifests and index that it would
#               leave (minutes at N=500000 instead of hours); the all-fresh check below still applies
#   DSMAKE      a dsmake binary to measure (default: cargo build --release)
# Exit status: 0 ok; 1 a check failed (stats not zero, plan not all fresh, a command failed, STRICT aims).
set -euo pipefail

N=${N:-100000}
REPEAT=${REPEAT:-3}
REUSE=${REUSE:-0}
KEEP=${KEEP:-0}
STRICT=${STRICT:-0}
FIXTURE=${FIXTURE:-0}
AIM_PLAN_S=1.0
AIM_PLAN_MB=200

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
die() { echo "engine_plan.sh: $*" >&2; exit 1; }
command -v python3 >/dev/null || die "python3 is needed (file generation and measurement)"
[[ $N =~ ^[1-9][0-9]*$ ]] || die "N must be a positive integer, got '$N'"
[[ $REPEAT =~ ^[1-9][0-9]*$ ]] || die "REPEAT must be a positive integer, got '$REPEAT'"

# --- 1. build dsmake ------------------------------------------------------------------------------------
if [[ -n ${DSMAKE:-} ]]; then
    echo "== using DSMAKE=$DSMAKE (no build)"
else
    echo "== building dsmake (release)"
    (cd "$ROOT" && cargo build --release --quiet)
    target_dir=${CARGO_TARGET_DIR:-target}
    [[ $target_dir = /* ]] || target_dir="$ROOT/$target_dir"
    DSMAKE="$target_dir/release/dsmake"
fi
[[ -x $DSMAKE ]] || die "no binary at $DSMAKE"

# --- work folder -----------------------------------------------------------------------------------------
if [[ -n ${BENCH_DIR:-} ]]; then
    WORK=$BENCH_DIR
    KEEP=1
    mkdir -p "$WORK"
else
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/dsmake-bench-plan.XXXXXX")
fi
WORK=$(cd "$WORK" && pwd)
cleanup() {
    if [[ $KEEP != 1 ]]; then
        echo "== removing $WORK (KEEP=1 keeps it)"
        rm -rf -- "$WORK"
    fi
}
trap cleanup EXIT

MARKER="$WORK/.dsmake-bench-plan"
if [[ $REUSE = 1 ]]; then
    [[ -f $MARKER && $(cat "$MARKER") = "N=$N" ]] || die "REUSE=1: $WORK was not built by this script with N=$N"
else
    [[ -z $(ls -A "$WORK") ]] || die "$WORK is not empty (set REUSE=1 to reuse an earlier run's folder)"
fi

PIPELINE="$WORK/pipeline.toml"
STORE="$WORK/store"
export DSMAKE_CACHE_DIR="$WORK/cache"
cd "$WORK"

# Measurement helper: `measure.py STDOUT_FILE CMD...` runs CMD with stdout to STDOUT_FILE and prints
# "WALL_S MAXRSS_KIB EXIT_CODE CPU_S" on its own stdout (CPU_S = user + system time of the child).
cat >"$WORK/measure.py" <<'PY'
import os, sys, time
out, argv = sys.argv[1], sys.argv[2:]
fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
start = time.perf_counter()
pid = os.posix_spawnp(argv[0], argv, os.environ, file_actions=[(os.POSIX_SPAWN_DUP2, fd, 1)])
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
os.close(fd)
print(f"{wall:.4f} {usage.ru_maxrss} {os.waitstatus_to_exitcode(status)} {usage.ru_utime + usage.ru_stime:.4f}")
PY
measure() { python3 "$WORK/measure.py" "$@"; }

# Prints "median" of the numbers given.
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k * 1024 / 1e6 }'; }

echo "== machine: $(uname -sm), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
read -r _ floor_kb _ _ < <(measure /dev/null true)
echo "== peak RSS floor of the measurement (\`true\`): $(mb "$floor_kb") MB"
echo "== work folder: $WORK   N=$N   REPEAT=$REPEAT"
echo "   targets: $N source targets (step src, kind files) + $N built targets (step copy, kind command)" \
    "= $((2 * N)) in the plan"

# --- 2. sources and pipeline ---------------------------------------------------------------------------
if [[ $REUSE != 1 ]]; then
    echo "== generating $N source files and the pipeline"
    t0=$(date +%s.%N)
    python3 - "$WORK/src" "$N" <<'PY'
import os, sys, time
dest, n = sys.argv[1], int(sys.argv[2])
os.makedirs(dest)
width = max(6, len(str(n - 1)))
# Dated an hour back: outside the stat cache's racy window, and older than make's outputs.
past = time.time() - 3600
for i in range(n):
    path = os.path.join(dest, f"{i:0{width}d}.txt")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, f"shard {i}: the quick brown fox jumps over the lazy dog\n".encode())
    os.close(fd)
    os.utime(path, (past, past))
PY
    cat >"$PIPELINE" <<'TOML'
# Generated by tests/bench/engine_plan.sh: N source files, each copied by one command target.
[pipeline]
name = "bench-plan"
description = "Plan benchmark: N files sources, N per-shard copies"

[steps.src]
kind = "files"
paths = "src/*.txt"

[steps.copy]
kind = "command"
from = "src"
per = "shard"
run = "cp {input} {output}"
TOML
    echo "   done in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
fi

# --- 3. first build ------------------------------------------------------------------------------------
first_s="" first_rate="" first_mb=""
if [[ $REUSE != 1 && $FIXTURE = 1 ]]; then
    echo "== FIXTURE=1: writing what the first build would leave (tests/it/plan_fixture.rs), no first build"
    (cd "$ROOT" && BENCH_DIR=$WORK cargo test --quiet --test it engine_plan_fixture -- --ignored --nocapture) \
        | grep '^fixture:' || die "the fixture failed"
    echo "N=$N" >"$MARKER"
elif [[ $REUSE != 1 ]]; then
    echo "== first build: $N built targets (spawns $N bash processes; minutes at N=100000)"
    jobs_arg=()
    [[ -n ${JOBS:-} ]] && jobs_arg=(-j "$JOBS")
    read -r first_s first_kb rc first_cpu < <(measure "$WORK/first-build.out" \
        "$DSMAKE" build -q "$PIPELINE" --store "$STORE" "${jobs_arg[@]}")
    [[ $rc = 0 ]] || die "first build failed with exit code $rc (see $WORK/first-build.out)"
    first_rate=$(awk -v n="$N" -v s="$first_s" 'BEGIN { printf "%.0f", n / s }')
    first_mb=$(mb "$first_kb")
    echo "   first build: ${first_s} s, ${first_rate} built targets/s, peak RSS ${first_mb} MB, cpu ${first_cpu} s"
    echo "N=$N" >"$MARKER"
else
    echo "== REUSE=1: no generation, no first build"
fi

# Checks a `plan --format json` output: every copy target fresh, nothing to run, stats.sources_hashed == 0
# and stats.manifests_read == 0. The file is large (all 2N targets), so `stats` and `steps` are looked for
# near its start and end (serde_json writes object keys sorted: they come before `targets`), and the whole
# file is parsed only if they are not found there. Prints "ok <stats>" or "FAIL <why> <stats>".
check_json() {
    python3 - "$1" "$N" <<'PY'
import json, os, sys
path, n = sys.argv[1], int(sys.argv[2])
size = os.path.getsize(path)
with open(path, "rb") as f:
    head = f.read(1 << 20).decode("utf-8", "replace")
    f.seek(max(0, size - (1 << 20)))
    tail = f.read().decode("utf-8", "replace")
def find(key):
    for text in (head, tail):
        at = text.find(f'\n  "{key}":')
        if at >= 0:
            try:
                return json.JSONDecoder().raw_decode(text[at + len(key) + 6:].lstrip())[0]
            except ValueError:
                pass
    return None
stats, steps = find("stats"), find("steps")
if stats is None or steps is None:
    with open(path) as f:
        whole = json.load(f)
    stats, steps = whole["stats"], whole["steps"]
problems = []
by = {s["step"]: s for s in steps}
src, copy = by.get("src", {}), by.get("copy", {})
if src.get("source") != n:
    problems.append(f"src has {src.get('source')} source targets, wanted {n}")
if copy.get("fresh") != n or copy.get("run") != 0:
    problems.append(f"copy has {copy.get('fresh')} fresh and {copy.get('run')} to run, wanted {n} and 0")
for k in ("sources_hashed", "manifests_read"):
    if stats.get(k) != 0:
        problems.append(f"{k} = {stats.get(k)}, wanted 0")
line = json.dumps(stats, separators=(",", ":"))
print(("FAIL " + "; ".join(problems) + " ") if problems else "ok ", line, sep="")
PY
}

# --- 4. plan, no-op build, plan --format json --------------------------------------------------------
echo "== checking that the plan is all fresh before timing anything"
# A plan notes an unchanged manifests' folder only once it has been unchanged for 2 s (ARCHITECTURE.md): this
# plan notes it, so that every timed plan below is the steady state, whatever just wrote the store.
sleep 2
read -r s kb rc cpu < <(measure "$WORK/plan.json" "$DSMAKE" plan --format json "$PIPELINE" --store "$STORE")
[[ $rc = 0 ]] || die "dsmake plan --format json failed with exit code $rc"
verdict=$(check_json "$WORK/plan.json")
echo "   plan --format json ${s} s  $(mb "$kb") MB  cpu ${cpu} s  stats ${verdict#* }"
[[ $verdict = ok* ]] || die "not a fresh, fully built pipeline: ${verdict#FAIL }"

echo "== plan / no-op build / plan --format json, $REPEAT times each (interleaved)"
plan_s=() plan_kb=() plan_cpu=() noop_s=() noop_kb=() noop_cpu=() json_s=() json_kb=() failed=0
for ((r = 1; r <= REPEAT; r++)); do
    read -r s kb rc cpu < <(measure /dev/null "$DSMAKE" plan "$PIPELINE" --store "$STORE")
    [[ $rc = 0 ]] || die "dsmake plan failed with exit code $rc"
    plan_s+=("$s") plan_kb+=("$kb") plan_cpu+=("$cpu")
    echo "   run $r  plan              ${s} s  $(mb "$kb") MB  cpu ${cpu} s"

    # --format json: its small summary says how many targets were built, which must be none.
    read -r s kb rc cpu < <(measure "$WORK/noop-build.json" \
        "$DSMAKE" build -q --format json "$PIPELINE" --store "$STORE")
    [[ $rc = 0 ]] || die "no-op dsmake build failed with exit code $rc"
    built=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["built"])' "$WORK/noop-build.json")
    [[ $built = 0 ]] || die "the no-op build built $built targets (see $WORK/noop-build.json)"
    noop_s+=("$s") noop_kb+=("$kb") noop_cpu+=("$cpu")
    echo "   run $r  no-op build       ${s} s  $(mb "$kb") MB  cpu ${cpu} s"

    read -r s kb rc cpu < <(measure "$WORK/plan.json" "$DSMAKE" plan --format json "$PIPELINE" --store "$STORE")
    [[ $rc = 0 ]] || die "dsmake plan --format json failed with exit code $rc"
    json_s+=("$s") json_kb+=("$kb")
    verdict=$(check_json "$WORK/plan.json")
    echo "   run $r  plan --format json ${s} s  $(mb "$kb") MB  cpu ${cpu} s  stats ${verdict#* }"
    if [[ $verdict != ok* ]]; then
        echo "   FAIL: ${verdict#FAIL }" >&2
        failed=1
    fi
done
json_bytes=$(stat -c %s "$WORK/plan.json")

# --- 5. GNU make no-op over the same files -----------------------------------------------------------
make_med="" ratio=""
if command -v make >/dev/null; then
    echo "== GNU make no-op over the same $N files ($(make --version | head -n1))"
    if [[ ! -d $WORK/make-out ]]; then
        cat >"$WORK/Makefile" <<'MAKE'
# Generated by tests/bench/engine_plan.sh: the same N copies as the dsmake pipeline.
MAKEFLAGS += --no-builtin-rules
.SUFFIXES:
OUTS := $(patsubst src/%.txt,make-out/%.txt,$(wildcard src/*.txt))
all: $(OUTS)
make-out/%.txt: src/%.txt
	cp $< $@
MAKE
        # One bulk copy instead of N cp processes; the copies are newer than the sources (dated back).
        cp -r "$WORK/src" "$WORK/make-out"
    fi
    make -q -C "$WORK" >/dev/null || die "make -q says the make outputs are not up to date"
    make_s=()
    for ((r = 1; r <= REPEAT; r++)); do
        read -r s kb rc cpu < <(measure "$WORK/make.out" make -C "$WORK")
        [[ $rc = 0 ]] || die "make failed with exit code $rc"
        make_s+=("$s")
        echo "   run $r  make no-op        ${s} s  $(mb "$kb") MB  cpu ${cpu} s"
    done
    make_med=$(median "${make_s[@]}")
else
    echo "== make not found: skipping the GNU make reference"
fi

# --- 6. summary ----------------------------------------------------------------------------------------
plan_med=$(median "${plan_s[@]}")
plan_mb=$(mb "$(median "${plan_kb[@]}")")
noop_med=$(median "${noop_s[@]}")
noop_mb=$(mb "$(median "${noop_kb[@]}")")
json_med=$(median "${json_s[@]}")
json_mb=$(mb "$(median "${json_kb[@]}")")
[[ -n $make_med ]] && ratio=$(awk -v a="$noop_med" -v b="$make_med" 'BEGIN { printf "%.1f", a / b }')
verdict() { awk -v v="$1" -v aim="$2" 'BEGIN { print (v + 0 <= aim + 0) ? "ok" : "OVER AIM" }'; }
plan_v=$(verdict "$plan_med" "$AIM_PLAN_S")
mem_v=$(verdict "$plan_mb" "$AIM_PLAN_MB")
stats_v=ok
[[ $failed = 0 ]] || stats_v=FAILED

cat <<EOF

== summary: N=$N -> $N source targets (src) + $N built targets (copy) = $((2 * N)) targets, all fresh
   machine: $(nproc) cores, load average now $(cut -d' ' -f1-3 /proc/loadavg)
   median of $REPEAT; wall time in s, peak RSS in MB (10^6 bytes)
   plan s                     $plan_med   (aim < $AIM_PLAN_S s: $plan_v)   runs: ${plan_s[*]}   cpu s: ${plan_cpu[*]}
   plan MB                    $plan_mb   (aim < $AIM_PLAN_MB MB: $mem_v)
   no-op build s              $noop_med   runs: ${noop_s[*]}   cpu s: ${noop_cpu[*]}
   no-op build MB             $noop_mb
   plan --format json s       $json_med   ($json_mb MB, $((json_bytes / 1000000)) MB of JSON); stats check: $stats_v
   make no-op s               ${make_med:-skipped (no make)}
   ratio no-op dsmake / make  ${ratio:-n/a}
   first build s              ${first_s:-n/a (REUSE=1)}   (${first_rate:-?} built targets/s, ${first_mb:-?} MB)
EOF

[[ $failed = 0 ]] || die "plan stats check failed (sources_hashed / manifests_read not 0, or plan not all fresh)"
if [[ $STRICT = 1 && ( $plan_v != ok || $mem_v != ok ) ]]; then
    die "STRICT=1: plan over its aim (${plan_med} s, ${plan_mb} MB)"
fi

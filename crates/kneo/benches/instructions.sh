#!/usr/bin/env bash
# Instructions per request, client and server together, counted by callgrind
# (load-independent, unlike throughput on a shared machine):
#   (a) bare hyper-util client, (b) kneo's ClientLayer over the same client.
# Each client runs the loopback bench at two request counts; the difference
# cancels start-up and other fixed costs, so
#   per request = (Ir(N2) - Ir(N1)) / (requests(N2) - requests(N1)),
# counting the bench's warm-up pass in the requests. The bench runs on a
# one-thread runtime here, so the counts do not depend on work stealing.
#
#   bash crates/kneo/benches/instructions.sh            # N1=4000 N2=8000, 16 callers
#   N1=2000 N2=4000 CONCURRENCY=8 bash crates/kneo/benches/instructions.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."

N1=${N1:-4000}
N2=${N2:-8000}
CONCURRENCY=${CONCURRENCY:-16}

if ! command -v valgrind >/dev/null 2>&1; then
    echo "valgrind is not installed (apt-get install -y valgrind): no instruction counts" >&2
    exit 1
fi

bin=$(cargo bench -p kneo --bench loopback --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "loopback" and m.get("executable"):
        print(m["executable"])')
[ -n "$bin" ] || { echo "could not build the loopback bench" >&2; exit 1; }

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# count CLIENT N: prints "instructions requests" for one run.
count() {
    local client=$1 n=$2 file="$out/cg.$1.$2"
    KNEO_BENCH_CLIENTS=$client KNEO_BENCH_REQUESTS=$n KNEO_BENCH_ROUNDS=1 \
        KNEO_BENCH_CONCURRENCY=$CONCURRENCY KNEO_BENCH_RUNTIME=current \
        valgrind --tool=callgrind --callgrind-out-file="$file" "$bin" --bench \
        >"$file.stdout" 2>"$file.stderr"
    local ir warmup
    ir=$(awk '/^summary:/ {print $2}' "$file")
    warmup=$(awk '/^warm-up:/ {print $2}' "$file.stdout")
    echo "$ir $((n + warmup))"
}

printf 'callgrind, loopback bench, %s callers, %s and %s requests per pass\n' "$CONCURRENCY" "$N1" "$N2"
declare -A per
for client in a b; do
    read -r ir1 r1 < <(count "$client" "$N1")
    read -r ir2 r2 < <(count "$client" "$N2")
    per[$client]=$(( (ir2 - ir1) / (r2 - r1) ))
    name=$([ "$client" = a ] && echo "(a) hyper-util, bare" || echo "(b) kneo ClientLayer")
    printf '%-24s %12s Ir at %6s requests, %12s Ir at %6s: %s instructions per request\n' \
        "$name" "$ir1" "$r1" "$ir2" "$r2" "${per[$client]}"
done
python3 -c "import sys; a,b=int(sys.argv[1]),int(sys.argv[2]); print(f'stack / bare: {b/a:.3f} (+{(b-a)/a*100:.1f}%, +{b-a} instructions per request)')" "${per[a]}" "${per[b]}"

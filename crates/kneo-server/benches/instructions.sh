#!/usr/bin/env bash
# Instructions per keyed first request, client and server together, counted
# by callgrind (load-independent, unlike throughput on a shared machine):
#   (a) the bare axum handler, (b) the same behind IdempotencyLayer(MemoryStore).
# Each runs the idempotency bench's counted mode at two request counts; the
# difference cancels start-up and other fixed costs, so
#   per request = (Ir(N2) - Ir(N1)) / (N2 - N1).
#
#   bash crates/kneo-server/benches/instructions.sh          # N1=2000 N2=4000
#   N1=1000 N2=2000 bash crates/kneo-server/benches/instructions.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."

N1=${N1:-2000}
N2=${N2:-4000}

if ! command -v valgrind >/dev/null 2>&1; then
    echo "valgrind is not installed (apt-get install -y valgrind): no instruction counts" >&2
    exit 1
fi

bin=$(cargo bench -p kneo-server --bench idempotency --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "idempotency" and m.get("executable"):
        print(m["executable"])')
[ -n "$bin" ] || { echo "could not build the idempotency bench" >&2; exit 1; }

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# count SCENARIO N: prints the instructions of one run.
count() {
    local file="$out/cg.$1.$2"
    KNEO_BENCH_SCENARIO=$1 KNEO_BENCH_REQUESTS=$2 \
        valgrind --tool=callgrind --callgrind-out-file="$file" "$bin" >/dev/null 2>&1
    awk '/^summary:/ {print $2}' "$file"
}

printf 'callgrind, keyed first requests from 16 callers, %s and %s requests per run\n' "$N1" "$N2"
declare -A per
for scenario in bare memory; do
    ir1=$(count "$scenario" "$N1")
    ir2=$(count "$scenario" "$N2")
    per[$scenario]=$(( (ir2 - ir1) / (N2 - N1) ))
    printf '%-8s %12s Ir at %6s, %12s Ir at %6s: %s instructions per request\n' \
        "$scenario" "$ir1" "$N1" "$ir2" "$N2" "${per[$scenario]}"
done
python3 -c "import sys; a,b=int(sys.argv[1]),int(sys.argv[2]); print(f'memory / bare: {b/a:.3f} (+{b-a} instructions per request)')" "${per[bare]}" "${per[memory]}"

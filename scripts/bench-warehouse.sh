#!/usr/bin/env bash
# The warehouse at scale, side by side with DuckDB on the same files: write rate, bytes
# per reading, three queries (count per hour over a day, mean heart rate per patient for
# a day, top-10 patients by alert count) timed in vitalwatch and in DuckDB, and
# compaction's rate.
#
#   bash scripts/bench-warehouse.sh target/release/vitalwatch [PATIENTS] [DURATION]
#
# Defaults: 1,000 patients for 1h50m of one reading set a second = 6.6 M observation
# sets = 52.8 M readings (8 vitals each). DuckDB comes from the readers venv
# scripts/services.sh installs. Scratch space: $BENCH_DIR (default /tmp/vitalwatch-wh-bench).
set -euo pipefail
VW=$(realpath "${1:?usage: bench-warehouse.sh path/to/vitalwatch [patients] [duration]}")
PATIENTS=${2:-1000}
DURATION=${3:-110m}
B=${BENCH_DIR:-/tmp/vitalwatch-wh-bench}
PY=${VITALWATCH_SERVICES:-$HOME/.cache/vitalwatch-services}/readers/venv/bin/python
[ -x "$PY" ] || { echo "run bash scripts/services.sh first (DuckDB)" >&2; exit 1; }
rm -rf "$B" && mkdir -p "$B"
cd "$B"

now() { python3 -c "import time; print(time.time())"; }
echo "simulating $PATIENTS patients for $DURATION …"
"$VW" simulate --patients "$PATIENTS" --rate "$PATIENTS" --duration "$DURATION" --seed 1 --output ward.jsonl 2>&1 | tail -1
t0=$(now)
"$VW" replay ward.jsonl --data d 2>&1 | grep -E "readings:|peak memory" || true
t1=$(now)
rm -f ward.jsonl
READINGS=$("$VW" query --data d --format csv "SELECT count(*) FROM vitals" | tail -1)
BYTES=$(du -sb d/warehouse/vitals | cut -f1)
FILES=$(find d/warehouse/vitals -name '*.parquet' | wc -l)
python3 -c "print(f'write: {$READINGS:,} readings in {$t1-$t0:.1f} s = {$READINGS/($t1-$t0):,.0f} readings/s (replay end to end: decode, rules, alerts, Parquet); {$BYTES/$READINGS:.2f} bytes/reading on disk; $FILES files')"

Q1="SELECT date_trunc('hour', observed_at) AS h, count(*) AS n FROM vitals WHERE date = DATE '2026-01-01' GROUP BY 1 ORDER BY 1"
Q2="SELECT patient_id, avg(value) AS mean_hr FROM vitals WHERE vital = 'heart_rate' AND date = DATE '2026-01-01' GROUP BY patient_id ORDER BY patient_id"
Q3="SELECT patient_id, count(*) AS alerts FROM alerts WHERE event = 'triggered' GROUP BY patient_id ORDER BY alerts DESC, patient_id LIMIT 10"
ROOT=$(realpath d/warehouse)
bench_queries() {
  for q in "$Q1" "$Q2" "$Q3"; do
    best=999
    for _ in 1 2 3; do
      t0=$(now); "$VW" query --data d --format csv "$q" > /dev/null; t1=$(now)
      best=$(python3 -c "print(min($best, $t1 - $t0))")
    done
    duck=$("$PY" - "$ROOT" "$q" <<'PY'
import duckdb, sys, time
root, q = sys.argv[1], sys.argv[2]
con = duckdb.connect(); con.execute("SET threads=2")
for t in ("vitals", "alerts"):
    try:
        con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{root}/{t}/*/*/*.parquet', hive_partitioning = true, hive_types = {{'date': DATE, 'hour': INTEGER}})")
    except duckdb.IOException:  # no alerts at all
        con.execute(f"CREATE VIEW {t} AS SELECT NULL::VARCHAR AS patient_id, NULL::VARCHAR AS event WHERE false")
best = 1e9
for _ in range(3):
    t = time.time(); con.execute(q).fetchall(); best = min(best, time.time() - t)
print(best)
PY
)
    python3 - "$best" "$duck" "$q" <<'PY'
import sys
ours, duck, q = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
print(f"  vitalwatch {ours*1000:7.0f} ms (whole command)  DuckDB {duck*1000:7.0f} ms (in process)  ratio {ours/duck:5.2f}  {q[:60]}…")
PY
  done
}
echo "queries, best of 3, before compaction:"
bench_queries
t0=$(now)
"$VW" warehouse compact --data d --before 2100-01-01 2>&1 | tail -1
t1=$(now)
echo "compaction: $(find d/warehouse/vitals -name '*.parquet' | wc -l) vitals files now"
echo "queries, best of 3, after compaction:"
bench_queries

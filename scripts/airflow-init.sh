#!/usr/bin/env bash
# Initialise (or upgrade) the recpipe Airflow metadata database. Idempotent: safe on every start.
# Run by the docker-compose `airflow-init` service, and natively by tests/test_postgres_metadata.py.
#   1. `recpipe airflow-setup`: `airflow db migrate`, then the project's pools (the one-slot
#      warehouse writer pool of config/recpipe.yaml)
#   2. the first admin user of the FAB auth manager, from AIRFLOW_ADMIN_USERNAME, _PASSWORD and
#      _EMAIL; an existing user is left as it is (change passwords in the UI or with
#      `airflow users reset-password`).
set -euo pipefail

: "${AIRFLOW_ADMIN_USERNAME:?set AIRFLOW_ADMIN_USERNAME (see .env.example)}"
: "${AIRFLOW_ADMIN_PASSWORD:?set AIRFLOW_ADMIN_PASSWORD (see .env.example)}"
: "${AIRFLOW_ADMIN_EMAIL:?set AIRFLOW_ADMIN_EMAIL (see .env.example)}"

recpipe airflow-setup
airflow users create \
  --username="${AIRFLOW_ADMIN_USERNAME}" \
  --password="${AIRFLOW_ADMIN_PASSWORD}" \
  --email="${AIRFLOW_ADMIN_EMAIL}" \
  --role Admin \
  --firstname recpipe \
  --lastname admin
echo "recpipe airflow-init: metadata database ready, admin user ${AIRFLOW_ADMIN_USERNAME}"

#!/usr/bin/env bash
# System packages the test suite needs beyond Python (Debian/Ubuntu, apt-get):
#   postgresql             tests/test_postgres_metadata.py: a throwaway PostgreSQL cluster
#   chromium, chromium-driver  tests/test_browser.py: the Airflow UI in headless Chromium
#   redis-server           tests/test_celery_workers.py: the Celery broker of the CeleryExecutor
#   openjdk-17-jre-headless  the Java runtime of Spark (dbt on Spark)
# Idempotent (installs only what is missing), quiet and non-interactive. Run as root or with sudo.
set -euo pipefail

PACKAGES=(postgresql chromium chromium-driver redis-server openjdk-17-jre-headless)

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi

if ! command -v apt-get >/dev/null; then
  echo "install-system-deps: no apt-get here; install ${missing[*]} with your package manager" >&2
  exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  sudo=(sudo)
fi
echo "install-system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

#!/usr/bin/env bash
# Makes sure PostgreSQL's server binaries are installed (the Debian package when they
# are missing). Tests and the main job start their own server from them.
set -euo pipefail
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 && [ -z "${CRMESSENGER_POSTGRES_BIN:-}" ]; then
  echo "PostgreSQL is not installed; installing the Debian package" >&2
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq postgresql >/dev/null
fi

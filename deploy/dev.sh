#!/usr/bin/env bash
# The project's entry point on a fresh machine: a Python environment with meterstream
# installed (editable, with the test extras), then the `meterstream` command.
#
#   deploy/dev.sh demo              run locally on embedded defaults over the sample data
#   deploy/dev.sh test [PYTEST...]  lint and type-check, then run the test suite (starts Kafka
#                                   and Postgres first); any ruff or mypy finding fails it
#   deploy/dev.sh lint              only ruff and mypy (no service needed)
#   deploy/dev.sh bench [ARGS...]   run the benchmarks (bench/), each beside its reference
#   deploy/dev.sh up|down|status    the local Kafka and Postgres
#   deploy/dev.sh meterstream ...   any meterstream command, inside the environment
#
# Installs what is missing (Debian's python3-venv if needed; the Python packages from PyPI);
# idempotent: a second run reuses the environment unless pyproject.toml changed.
# Every command runs in development mode (MS_DEV=1: the built-in development keys and the
# local plaintext services, docs/security.md); a deployment never sets it.
set -euo pipefail
export MS_DEV=1

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${MS_VENV:-$root/.venv}

find_python() {
  local candidate
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      command -v "$candidate"
      return 0
    fi
  done
  return 1
}

apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "$@" >/dev/null
}

ensure_venv() {
  local python stamp
  if [[ ! -x $venv/bin/python ]]; then
    python=$(find_python) || { apt_install python3 python3-venv; python=$(find_python); }
    if ! "$python" -m venv "$venv" 2>/dev/null; then
      rm -rf "$venv"
      apt_install python3-venv
      "$python" -m venv "$venv"
    fi
  fi
  stamp=$(sha256sum "$root/pyproject.toml" | cut -c1-16)
  if [[ ! -f $venv/.meterstream-installed || $(cat "$venv/.meterstream-installed") != "$stamp" ]]; then
    echo "dev.sh: installing meterstream and its dependencies into $venv" >&2
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$root[test]"
    echo "$stamp" >"$venv/.meterstream-installed"
  fi
}

lint() {
  cd "$root"
  "$venv/bin/ruff" check . || { echo "dev.sh: ruff found problems (fix them, or ruff check --fix)" >&2; return 1; }
  "$venv/bin/mypy" || { echo "dev.sh: mypy found type errors" >&2; return 1; }
}

command=${1:-help}
[[ $# -gt 0 ]] && shift
case $command in
  demo)
    ensure_venv
    exec "$venv/bin/meterstream" demo "$@"
    ;;
  lint)
    ensure_venv
    lint
    ;;
  test)
    ensure_venv
    lint
    "$venv/bin/meterstream" dev up
    cd "$root"
    set +e
    "$venv/bin/python" -m pytest "$@"
    rc=$?
    set -e
    if [[ $rc -eq 5 ]]; then
      echo "dev.sh: pytest collected no tests: that is a failure" >&2
      exit 1
    fi
    exit $rc
    ;;
  bench)
    ensure_venv
    cd "$root"
    exec "$venv/bin/python" -m bench "$@"
    ;;
  up|down|status)
    ensure_venv
    exec "$venv/bin/meterstream" dev "$command"
    ;;
  meterstream)
    ensure_venv
    exec "$venv/bin/meterstream" "$@"
    ;;
  *)
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    [[ $command == help || $command == -h || $command == --help ]] || exit 2
    ;;
esac

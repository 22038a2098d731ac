#!/usr/bin/env bash
# Install mpobs (editable) into a virtual environment, .venv (never the system Python),
# with what the tests need when given --test. Prints nothing on stdout.
# Debian packages for the real-parts tests (chromium for the page, prometheus for /metrics,
# gzip/bzip2/xz-utils/zstd for compressed inputs, prometheus-alertmanager for alerts)
# are installed with apt-get when missing and when we are root (CI, a fresh dev machine).
# PYTHON picks the interpreter that makes the venv (default python3); MPOBS_VENV its folder.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MPOBS_VENV:-.venv}

extras=""
if [ "${1:-}" = "--test" ]; then
  # dask: the Dask executor's tests run on a real LocalCluster and a CLI-started cluster;
  # docs: CI builds the documentation site with mkdocs build --strict.
  extras="[test,dask,docs]"
  need=()
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
  command -v promtool >/dev/null 2>&1 || need+=(prometheus)
  # The compressed-input tests make their files with the real tools, as users do.
  command -v gzip >/dev/null 2>&1 || need+=(gzip)
  command -v bzip2 >/dev/null 2>&1 || need+=(bzip2)
  command -v xz >/dev/null 2>&1 || need+=(xz-utils)
  command -v zstd >/dev/null 2>&1 || need+=(zstd)
  # Follow-mode tests rotate their log with the real logrotate (its own config and state file).
  command -v logrotate >/dev/null 2>&1 || [ -x /usr/sbin/logrotate ] || need+=(logrotate)
  # The bench (CI's smoke run) times mawk as a peer of the default job.
  command -v mawk >/dev/null 2>&1 || need+=(mawk)
  # Alert tests post to a real Alertmanager (its own temp storage, on 127.0.0.1).
  command -v prometheus-alertmanager >/dev/null 2>&1 || need+=(prometheus-alertmanager)
  if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
      echo "setup: apt-get install ${need[*]}" >&2
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    else
      echo "setup: missing Debian packages ${need[*]}; install them (sudo apt-get install ${need[*]}) or the browser/Prometheus tests will fail" >&2
    fi
  fi
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating the virtual environment $VENV" >&2
  "${PYTHON:-python3}" -m venv "$VENV"
fi
# compat: the editable install is a path entry (.pth), not an import hook; the hook cost every
# Python start (the CLI, the resource tracker) about 10 ms of imports (pathlib, fnmatch, re).
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".${extras}" --config-settings editable_mode=compat >&2
# An editable install leaves the sources uncompiled, and with PYTHONDONTWRITEBYTECODE set
# every start would compile them again (~50 ms); pip does this for a regular install.
"$VENV/bin/python" -m compileall -q mpobs dashboard_app >/dev/null

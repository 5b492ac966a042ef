#!/usr/bin/env bash
# Checks the Helm chart, deploy/, crds/ and examples/ (scripts/check_packaging.py)
# in a virtual environment of its own, target/packaging-venv, made on the first
# run from PyPI and reused while scripts/packaging-requirements.txt is unchanged.
# Fails (never skips) when PyPI cannot be reached: CI's machines reach it.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/packaging-venv
req=scripts/packaging-requirements.txt
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$req" | cut -d' ' -f1)
start=$SECONDS
if [[ ! -x $venv/bin/python || ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    echo "packaging: making $venv from $req"
    rm -rf "$venv"
    if ! python3 -m venv "$venv"; then
        echo "packaging: FAILED: python3 -m venv (CPython 3.11 with venv is on every machine)" >&2
        exit 1
    fi
    if ! "$venv/bin/pip" install --disable-pip-version-check -q -r "$req"; then
        echo "packaging: FAILED: pip could not install $req (is PyPI reachable?)" >&2
        rm -rf "$venv"
        exit 1
    fi
    echo "$want" >"$stamp"
    echo "packaging: installed in $((SECONDS - start))s"
fi
exec "$venv/bin/python" scripts/check_packaging.py

#!/usr/bin/env bash
# Static security checks of infra/ with checkov, run from a virtualenv of its own: checkov pins
# dependencies that conflict with the project's. The virtualenv lives outside the work tree and is
# reused while the pinned version stays the same (the first run installs it, in about 30 s).
#
#   .ci/checkov.sh [extra checkov arguments]
#   CHECKOV_VENV=/path/to/venv  PYTHON=python3.12  override where and with what it is installed
#
# A deliberate exception is an inline `#checkov:skip=CKV_...:reason` in the .tf file.
set -euo pipefail

CHECKOV_VERSION="3.3.30"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${CHECKOV_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/gemini-webhook-relay/checkov-$CHECKOV_VERSION}"

if [ ! -x "$venv/bin/checkov" ]; then
    mkdir -p "$(dirname "$venv")"
    # One installer at a time: parallel test runs share the virtualenv.
    exec 9>"$venv.lock"
    flock 9
    if [ ! -x "$venv/bin/checkov" ]; then
        echo "installing checkov $CHECKOV_VERSION into $venv" >&2
        "${PYTHON:-python3}" -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION" >&2
    fi
    exec 9>&-
fi

# --skip-download: no calls to Prisma Cloud; the checks themselves ship with the package.
exec "$venv/bin/checkov" --directory "$root/infra" --framework terraform \
    --quiet --compact --skip-download "$@"

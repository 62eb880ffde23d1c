#!/usr/bin/env bash
# Create the competitor environments used by benchmarks/competitors/ (idempotent).
#
#   .venv-suite2p : Suite2p 1.1.0 on CPU torch (+ oasis-deconv for OASIS runs)
#
# A stamp file records a successful install; re-running is a no-op unless
# the stamp is removed or FORCE=1 is set.  Usage:  bash scripts/suite2p_env.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ROOT}/.venv-suite2p"
STAMP="${VENV}/.calseg-env-ok"
PY="${PYTHON:-python3}"
SPEC_S2P="torch==2.14.1 torchvision==0.29.1 suite2p==1.1.0"
SPEC_OASIS="oasis-deconv"

if [[ -f "${STAMP}" && "${FORCE:-0}" != "1" ]]; then
    echo "suite2p env already complete: ${VENV} ($(cat "${STAMP}"))"
    exit 0
fi

if [[ ! -x "${VENV}/bin/python" ]]; then
    echo "creating ${VENV}"
    "${PY}" -m venv "${VENV}"
fi
"${VENV}/bin/pip" install --upgrade pip
# shellcheck disable=SC2086
"${VENV}/bin/pip" install ${SPEC_S2P}

# OASIS: try the normal build first; fall back to building against the
# already-installed numpy/cython without build isolation.
# shellcheck disable=SC2086
if ! "${VENV}/bin/pip" install ${SPEC_OASIS}; then
    echo "oasis-deconv: isolated build failed; retrying with --no-build-isolation"
    "${VENV}/bin/pip" install cython numpy setuptools wheel
    # shellcheck disable=SC2086
    "${VENV}/bin/pip" install --no-build-isolation ${SPEC_OASIS}
fi

"${VENV}/bin/python" - <<'PY'
import suite2p, torch, oasis.functions  # noqa: F401
from importlib.metadata import version
print("suite2p", version("suite2p"), "torch", torch.__version__,
      "oasis-deconv", version("oasis-deconv"))
PY
date -u +%Y-%m-%dT%H:%M:%SZ > "${STAMP}"
echo "suite2p env ready: ${VENV}"

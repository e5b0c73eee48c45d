#!/usr/bin/env bash
# Install the open-source Serverless Framework CLI (`osls`, a v3 fork that needs no account) into
# .ci/node/, where tests/test_deploy_package.py looks for it. Idempotent: a second run with the same
# version installed does nothing, so .ci/run can call it every time.
set -euo pipefail

OSLS_VERSION="${OSLS_VERSION:-4.3.1}"   # pinned so CI and developers package with the same CLI
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix="${repo_root}/.ci/node"
bin="${prefix}/node_modules/.bin/osls"

if [[ -x "${bin}" ]] && [[ "$(node -p "require('${prefix}/node_modules/osls/package.json').version" 2>/dev/null)" == "${OSLS_VERSION}" ]]; then
  echo "osls ${OSLS_VERSION} already installed at ${bin}"
  exit 0
fi

command -v npm >/dev/null || { echo "install-osls: npm not found; install Node.js >= 20.19" >&2; exit 1; }

mkdir -p "${prefix}"
# A private package.json keeps npm from walking up and treating the repo as a Node project.
[[ -f "${prefix}/package.json" ]] || echo '{"name": "eventrag-ci-node", "private": true}' > "${prefix}/package.json"
npm install --prefix "${prefix}" --no-audit --no-fund --loglevel=error "osls@${OSLS_VERSION}"
echo "installed osls $("${bin}" --version 2>/dev/null | head -1) at ${bin}"

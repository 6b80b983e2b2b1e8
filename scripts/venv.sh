# Sourced by ./run and ./test: create .venv and (re)install the project when pyproject.toml changed.
ensure_venv() {
  local extras="$1" stamp
  if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
  fi
  stamp="$(sha256sum pyproject.toml | cut -c1-16)${extras}"
  if [ "$(cat .venv/.approvals-installed 2>/dev/null)" != "$stamp" ]; then
    # Quiet on success; on failure show pip's whole log rather than hiding it.
    if ! { .venv/bin/python -m pip install -q --upgrade pip && .venv/bin/python -m pip install -q -e ".${extras}"; } \
        >.venv/pip.log 2>&1; then
      cat .venv/pip.log >&2
      return 1
    fi
    echo "$stamp" > .venv/.approvals-installed
  fi
  # Translations are compiled here rather than committed: the .po catalogs are the source.
  local catalogs
  for catalogs in webui/translations*/; do
    .venv/bin/pybabel compile -d "$catalogs" >/dev/null 2>&1
  done
  export PATH="$PWD/.venv/bin:$PATH"
  export VIRTUAL_ENV="$PWD/.venv"
}

# Sourced too: install the front-end packages from the lock file and bundle them when anything changed.
ensure_assets() {
  if ! command -v npm >/dev/null 2>&1; then
    echo "npm is missing: install Node.js (Debian: apt-get install nodejs npm)" >&2
    return 1
  fi
  local stamp
  mkdir -p webui/assets webui/static/dist
  stamp="$(find webui/package-lock.json webui/build.mjs webui/assets -type f | sort | xargs cat | sha256sum | cut -c1-16)"
  if [ ! -d webui/node_modules ] || [ "$(cat webui/static/dist/.stamp 2>/dev/null)" != "$stamp" ]; then
    (cd webui && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build)
    echo "$stamp" > webui/static/dist/.stamp
  fi
}

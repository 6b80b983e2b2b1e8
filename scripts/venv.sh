# Sourced by ./run and ./test: create .venv and (re)install the project when pyproject.toml changed.
ensure_venv() {
  local extras="$1" stamp
  if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
  fi
  stamp="$(sha256sum pyproject.toml | cut -c1-16)${extras}"
  if [ "$(cat .venv/.approvals-installed 2>/dev/null)" != "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".${extras}"
    echo "$stamp" > .venv/.approvals-installed
  fi
  export PATH="$PWD/.venv/bin:$PATH"
  export VIRTUAL_ENV="$PWD/.venv"
}

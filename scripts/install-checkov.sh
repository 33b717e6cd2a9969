#!/usr/bin/env bash
# checkov in a virtualenv of its own (.venv/tools/checkov), from tests/checkov-requirements.txt:
# it pins boto3, packaging and networkx to versions this project cannot use. Made again only when
# the requirements change (their digest is kept beside it). `make test` runs this before the tests,
# so that installing it is not counted in the suite; tests/cloud/test_template.py runs it too.
set -euo pipefail
cd "$(dirname "$0")/.."
requirements=tests/checkov-requirements.txt
venv=.venv/tools/checkov
digest=$(sha256sum "$requirements" | cut -d' ' -f1)
if [ -f "$venv/.requirements-sha256" ] && [ "$(cat "$venv/.requirements-sha256")" = "$digest" ]; then
  exit 0
fi
"${PYTHON:-.venv/bin/python}" -m venv --clear "$venv"  # the project's Python
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
echo "$digest" > "$venv/.requirements-sha256"

#!/usr/bin/env bash
# Set up .venv if needed (scripts/setup_env.sh), then run the test suite; arguments go to pytest.
source "$(dirname "$0")/setup_env.sh"
cd "$root"
exec "$py" -m pytest -q "$@"

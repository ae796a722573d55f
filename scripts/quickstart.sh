#!/usr/bin/env bash
# Set up .venv if needed (scripts/setup_env.sh), then run `imdm quickstart` with any arguments.
source "$(dirname "$0")/setup_env.sh"
cd "$root"
exec "$venv/bin/imdm" quickstart "$@"

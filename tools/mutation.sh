#!/usr/bin/env bash
# Mutation testing of the math: tools/mutation.py does the work (targets: setup.cfg [mutation:*];
# counts: docs/properties.md). Usage: tools/mutation.sh run [TARGET ...] | counts | survivors [TARGET ...]
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" tools/mutation.py "$@"

#!/usr/bin/env bash
# Mutation testing of the math (configuration: setup.cfg [mutmut]; counts: docs/properties.md).
# mutants/ is mutmut's working copy. kernels/ installs as minidiff.kernels (setup.py package_dir),
# so the copy gets the same layout: mutants/minidiff/kernels points at the mutated mutants/kernels.
set -euo pipefail
cd "$(dirname "$0")/.."
export HYPOTHESIS_PROFILE=ci-fixed
mkdir -p mutants/minidiff
ln -sfn ../kernels mutants/minidiff/kernels
"${PYTHON:-python3}" -m mutmut run --max-children "${MUTMUT_CHILDREN:-1}" "$@"
"${PYTHON:-python3}" -m mutmut results

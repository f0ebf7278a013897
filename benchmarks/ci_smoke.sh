#!/usr/bin/env bash
# CI smoke test of the asv suite: the benchmarks import, pass `asv check`, and
# run once each on the quick profile in the current Python environment (no
# virtualenv, no build: `--python=same`).  A few minutes at most on 2 cores.
#
# `--python=same` records nothing unless `--set-commit-hash` names the commit,
# and asv reads that commit from git, so this must run inside a git checkout
# whose HEAD is a real commit (CI's fresh clone is one).  Results and the HTML
# go to .asv/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."

export MIMFAST_BENCH_PROFILE=quick
ASV="python -m asv"
COMMIT="$(git rev-parse HEAD)"

$ASV machine --yes >/dev/null                # non-interactive machine record
$ASV check --python=same
$ASV run --python=same --quick --show-stderr --set-commit-hash "$COMMIT"
$ASV publish >/dev/null
test -f .asv/html/index.html
echo "asv smoke: ok (results in .asv/results, HTML in .asv/html)"

#!/usr/bin/env bash
# The long runs of docs/results.md, in order, each resuming where it stopped:
#   1. the 50-trial search with the defaults,   2. its top 3 confirmed with 3 seeds,
#   3. the B.1 grid with 3 seeds,
# all in one study database under benchmarks/results/search/. Hours of CPU: run it from a
# separate git worktree at a fixed commit with its own venv, under nohup, and copy what it
# made into the checkout with `python benchmarks/keep.py` to commit it; run it again (the
# same command) in the next session to go on.
#
#   nohup benchmarks/long_runs.sh > benchmarks/results/search/run.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${VAE_SEARCH_DATA:-../shared/data/cifar10-jpeg.tar.gz}
VS=${VS:-.venv/bin/vae-search}
S=(--storage sqlite:///benchmarks/results/search/studies.db --artifact-dir benchmarks/results/search/artifacts)
mkdir -p benchmarks/results/search
echo "== $(date -u +%FT%TZ) long runs at $(git rev-parse --short HEAD)"
$VS optimize --trials 50 --data-dir "$DATA" "${S[@]}"
$VS confirm --study-name search --top 3 --seeds 3 --data-dir "$DATA" "${S[@]}"
$VS grid --preset b1 --seeds 3 --data-dir "$DATA" "${S[@]}"
$VS best --study-name search "${S[@]}"
echo "== $(date -u +%FT%TZ) done"

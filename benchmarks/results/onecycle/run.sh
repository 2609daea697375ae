#!/bin/bash
# The search again, at one-cycle and batch 64 (README.md here): 30 trials with the defaults
# (TPE, the default pruner), its top 3 confirmed with 3 seeds, then best. Run from the
# repository root with its venv; the same command resumes where it stopped.
set -e
S=sqlite:///benchmarks/results/onecycle/studies.db
A=${ARTIFACTS:-/tmp/onecycle-artifacts}  # trials' weights and PNGs: not kept in git
D=${VAE_SEARCH_DATA:-../shared/data/cifar10-jpeg.tar.gz}
echo "== $(date -u +%FT%TZ) at $(git rev-parse --short HEAD)"
.venv/bin/vae-search optimize --space benchmarks/results/onecycle/space.toml --study-name onecycle --trials 30 \
    --storage $S --artifact-dir "$A" --data-dir "$D" ${JOBS:+--jobs $JOBS}
.venv/bin/vae-search confirm --study-name onecycle --top 3 --seeds 3 --storage $S --artifact-dir "$A" --data-dir "$D" \
    ${JOBS:+--jobs $JOBS}
.venv/bin/vae-search best --study-name onecycle --storage $S
echo "== $(date -u +%FT%TZ) done"

#!/bin/bash
# The one-cycle search, learning rates 1e-3 to 5e-2 (README.md here): 30 trials, the defaults
# (TPE, the default pruner), its top 3 confirmed with 3 seeds, then best. Run from the
# repository root with its venv; the same command resumes where it stopped.
set -e
S=sqlite:///benchmarks/results/onecycle-lr/studies.db
A=${ARTIFACTS:-/tmp/onecycle-lr-artifacts}  # trials' weights and PNGs: not kept in git
D=${VAE_SEARCH_DATA:-../shared/data/cifar10-jpeg.tar.gz}
echo "== $(date -u +%FT%TZ) at $(git rev-parse --short HEAD)"
.venv/bin/vae-search optimize --space benchmarks/results/onecycle-lr/space.toml --study-name onecycle-lr --trials 30 \
    --storage $S --artifact-dir "$A" --data-dir "$D" ${JOBS:+--jobs $JOBS}
.venv/bin/vae-search confirm --study-name onecycle-lr --top 3 --seeds 3 --storage $S --artifact-dir "$A" --data-dir "$D" \
    ${JOBS:+--jobs $JOBS}
.venv/bin/vae-search best --study-name onecycle-lr --storage $S
echo "== $(date -u +%FT%TZ) done"

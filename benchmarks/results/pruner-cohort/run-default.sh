#!/bin/bash
# The same search with the default pruner, into the same database (README.md here): the
# pair on one machine, in one precision, from the same seed. Run from the repository root
# with its venv after run.sh; the same command resumes where it stopped.
set -e
S=sqlite:///benchmarks/results/pruner-cohort/studies.db
A=${ARTIFACTS:-/tmp/pruner-cohort-artifacts}  # trials' weights and PNGs: not kept in git
D=${VAE_SEARCH_DATA:-../shared/data/cifar10-jpeg.tar.gz}
echo "== $(date -u +%FT%TZ) at $(git rev-parse --short HEAD)"
.venv/bin/vae-search optimize --trials 50 --study-name search-default \
    --storage $S --artifact-dir "$A" --data-dir "$D" ${JOBS:+--jobs $JOBS}
.venv/bin/vae-search confirm --study-name search-default --top 3 --seeds 3 --storage $S --artifact-dir "$A" \
    --data-dir "$D" ${JOBS:+--jobs $JOBS}
.venv/bin/vae-search best --study-name search-default --storage $S
echo "== $(date -u +%FT%TZ) done"

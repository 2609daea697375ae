#!/bin/bash
# The README's search with --pruner cohort instead of the default (README.md here): 50
# trials, everything else the defaults (TPE, seed 0, --jobs and --precision auto), its top 3
# confirmed with 3 seeds, then best. The B.1 grid of ../search/ is copied in once, so that
# best compares with it and pools its seed noise. Run from the repository root with its
# venv; the same command resumes where it stopped.
set -e
DB=benchmarks/results/pruner-cohort/studies.db
S=sqlite:///$DB
A=${ARTIFACTS:-/tmp/pruner-cohort-artifacts}  # trials' weights and PNGs: not kept in git
D=${VAE_SEARCH_DATA:-../shared/data/cifar10-jpeg.tar.gz}
echo "== $(date -u +%FT%TZ) at $(git rev-parse --short HEAD)"
if [ ! -f $DB ]; then
    .venv/bin/python -c "import optuna; optuna.copy_study(from_study_name='b1', \
        from_storage='sqlite:///benchmarks/results/search/studies.db', to_storage='$S')"
fi
.venv/bin/vae-search optimize --trials 50 --pruner cohort --study-name search-cohort \
    --storage $S --artifact-dir "$A" --data-dir "$D" ${JOBS:+--jobs $JOBS}
.venv/bin/vae-search confirm --study-name search-cohort --top 3 --seeds 3 --storage $S --artifact-dir "$A" \
    --data-dir "$D" ${JOBS:+--jobs $JOBS}
.venv/bin/vae-search best --study-name search-cohort --storage $S
echo "== $(date -u +%FT%TZ) done"

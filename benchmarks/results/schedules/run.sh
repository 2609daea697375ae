#!/bin/bash
# The learning-rate schedule and batch size on the search's winner (README.md here): the nine
# configurations of space.toml with one seed, then two more seeds each. Run from the repository
# root with its venv; the same command resumes where it stopped.
set -e
S=sqlite:///benchmarks/results/schedules/studies.db
A=${ARTIFACTS:-/tmp/schedules-artifacts}  # trials' weights and PNGs: not kept in git
D=${VAE_SEARCH_DATA:-../shared/data/cifar10-jpeg.tar.gz}
.venv/bin/vae-search optimize --space benchmarks/results/schedules/space.toml --study-name schedules \
    --sampler random --pruner none --trials 9 --storage $S --artifact-dir "$A" --data-dir "$D"
.venv/bin/vae-search confirm --study-name schedules --top 9 --seeds 3 --storage $S --artifact-dir "$A" --data-dir "$D"
.venv/bin/vae-search best --study-name schedules --storage $S

"""The precomputed experiments: grids of runs, their resumable orchestration, the
summary written to experiments.json and the README blocks made from it."""

"""Run folders: run.json and its SAEs, opening a run with its model, importing others' SAEs as a run."""

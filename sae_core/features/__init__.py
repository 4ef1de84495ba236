"""Feature statistics of SAEs, precomputed into one DuckDB file per run, and the reader the app uses."""

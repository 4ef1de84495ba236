"""Scaffolding for tests, benchmarks and screenshots, not for users' runs: tiny random models
(`tiny_models`), synthetic feature files of any size (`synthetic_features`), and the real app started in a
subprocess (`app_server`)."""

"""Benchmarks: each script measures one thing, prints a table and writes bench/results/<name>.json
(bench/measure.py); RESULTS.md records the figures with the machine that gave them. gpu.sh runs
every GPU measurement in one go; sweep_*.py rerun learned qualities over seeds and thread counts
to set the tests' bars; outputs.py fingerprints what users get, before and after a refactor."""

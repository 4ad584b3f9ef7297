"""The structure lab behind `archlab compare`: variants of a recipe trained at equal compute, with tuned
learning rates, several budgets (scaling curves, IsoFLOP), paired seeds and significance tests, run as
independent jobs in-process, on a local process pool or on a Ray cluster.

spec.py (what to compare) -> plan.py (jobs keyed by a hash of their resolved config) -> executors.py
(where they run; jobs.py is what a worker runs) -> study.py (phases, aggregation) -> stats.py, plots.py,
report.py. archlab/compare.py is the command-line entry.
"""

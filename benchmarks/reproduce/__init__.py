"""The CIFAR-10 study of MutualNet's claims (issue 15); ``python -m benchmarks.reproduce``.

settings.py: scales, the run matrix, each run's TrainConfig; runs.py: one run (train with
resume, evaluate, results file) and status; study.py: aggregation and the claims'
verdicts; plots.py; report.py: the text for docs/, BENCHMARKS.md and the README;
probe.py: time a few steps to size a scale; __main__.py: the CLI.
"""

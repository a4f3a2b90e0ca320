"""Orchestration, one floor above the recipes and jobs: the pipeline of stages from one YAML (`stages`),
the lab demo (`demo`, `demo.yaml`) and iterative RLHF (`iterate`)."""

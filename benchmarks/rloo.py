"""rlhfkit RLOO vs TRL's RLOOTrainer, side by side: benchmarks/grpo.py with --method rloo (G = 4,
beta 0.05 in the reward, one on-policy update per batch; the settings are listed there).

    .venv/bin/python benchmarks/rloo.py [--steps 6 --repeats 3 --baseline-src DIR]
"""

from __future__ import annotations

from grpo import main

if __name__ == "__main__":
    main(method="rloo")

"""The KL coefficient beta: fixed, or adapted toward a target KL (lm-human-preferences).

The only state in PPO's maths, kept in a tiny object whose `state_dict()` is plain JSON, so
the recipe stores it in the checkpoint's trainer state and a resumed run continues the same
beta trajectory. The update rule itself is the pure `losses.ppo.adaptive_beta`.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhfkit.losses.ppo import adaptive_beta


@dataclass
class KLController:
    """beta with an optional target: `update(kl, n_episodes)` after every rollout batch.

    target None = fixed beta (`update` is a no-op). Otherwise the lm-human-preferences
    proportional controller with its error clipped to +-0.2 and `horizon` in episodes.
    """

    beta: float
    target: float | None = None
    horizon: int = 10_000

    def __post_init__(self) -> None:
        if self.target is not None and self.target <= 0:
            raise ValueError(f"KL target must be positive, got {self.target}")
        if self.horizon <= 0:
            raise ValueError(f"KL horizon must be positive, got {self.horizon}")

    def update(self, kl: float, n_episodes: int) -> float:
        if self.target is not None:
            self.beta = adaptive_beta(self.beta, kl, self.target, self.horizon, n_episodes)
        return self.beta

    def state_dict(self) -> dict[str, float | int | None]:
        return {"beta": self.beta, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.beta = float(state["beta"])
        self.target = state.get("target", self.target)
        self.horizon = int(state.get("horizon", self.horizon))

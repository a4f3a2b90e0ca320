"""What a run measured and what it checked, as the report states it: the text or prompts each value
was measured on (from the provenance keys recipes record), and which alarms had their inputs."""

from __future__ import annotations

from dataclasses import dataclass

from rlhfkit.monitor.alarms import ALL_ALARMS, MonitorConfig
from rlhfkit.monitor.run_data import Stage, is_num

# Values measured on sampled responses: held-out prompts (eval/prompts_on), or a recipe's own
# training rollouts for ROLLOUT_KINDS.
SAMPLED = ("gold/mean", "kl/mean", "response/length", "response/eos_rate", "reward/mean")
# Recipes whose logged gold/mean, kl/mean, response/* and reward/mean are of their training
# rollouts (PPO scores every batch it samples), not of held-out prompts.
ROLLOUT_KINDS = ("ppo", "grpo", "rloo")
TRAINING = ("loss/", "reward/accuracy", "rewards/")


def value_on(metric: str, prov: dict, prompts: str | None = None, data: dict | None = None) -> str | None:
    """What one value of `metric` was measured on, as a phrase ("by lab:gold on lab:prompts_eval",
    "on training batches"); None = not recorded. `prov`: the provenance keys of its run or model;
    `prompts`: what was sampled instead of eval/prompts_on (training rollouts); `data`: the run's
    config `data:` section (its held-out comparisons)."""
    if metric == "eval/perplexity":
        return f"on {prov['eval/perplexity_on']}" if prov.get("eval/perplexity_on") else None
    if metric in SAMPLED:
        on = prompts or prov.get("eval/prompts_on")
        by = {"gold/mean": prov.get("gold/judge"), "reward/mean": prov.get("reward/source")}.get(metric)
        return " ".join(p for p in (by and f"by {by}", on and f"on {on}") if p) or None
    if metric in ("eval/accuracy", "eval/loss"):
        data = data or {}
        held = data.get("eval") or (f"({data['eval_fraction']:g} of {data['train']})"
                                    if is_num(data.get("eval_fraction")) and data.get("train") else None)
        return "on held-out comparisons" + (f" {held}" if held else "")
    if metric.startswith(TRAINING):
        return "on training batches"
    return None


def stage_value_on(st: Stage, metric: str) -> str | None:
    """What a stage's logged `metric` was measured on."""
    data = st.config.get("data") if isinstance(st.config.get("data"), dict) else {}
    if st.kind == "reward" and metric.startswith("reward/"):  # the RM's scores of its training pairs
        return "on training batches"
    prompts = None
    if st.kind in ROLLOUT_KINDS:
        prompts = "training rollouts" + (f" of {data['prompts']}" if data.get("prompts") else "")
    return value_on(metric, st.provenance, prompts, data)


@dataclass(frozen=True)
class Coverage:
    """Which alarms of a stage had their inputs, and over how many rows; why the others did not."""

    how: str  # how the alarms were obtained
    checked: dict[str, int]  # alarm -> rows carrying all its inputs
    unchecked: dict[str, str]  # alarm -> why it could not run


def alarm_inputs(name: str, cfg: MonitorConfig) -> list[str] | None:
    """The metrics each check in `monitor.alarms.CHECKS` reads; None for a check not listed here."""
    return {"proxy_gold": [cfg.proxy_key, cfg.gold_key], "ensemble_disagreement": ["reward/ensemble_std", cfg.proxy_key],
            "kl_runaway": ["kl/mean"], "length_drift": ["response/length"],
            "perplexity": ["eval/perplexity"]}.get(name)


def coverage(st: Stage) -> Coverage:
    cfg = st.monitor
    settings = "its monitor: settings" if st.monitor_configured else "the default monitor settings"
    how = "logged by the live monitor" if st.alarms_source == "logged" else f"report-time scan with {settings}"
    if not cfg.enabled:
        return Coverage("monitor off (monitor.enabled: false)", {}, {a: "monitor off" for a in ALL_ALARMS})
    checked, unchecked = {}, {}
    for name in dict.fromkeys([*ALL_ALARMS, *cfg.alarms]):
        if name not in cfg.alarms:
            unchecked[name] = "not in monitor.alarms"
            continue
        if name == "kl_runaway" and cfg.kl_max is None:
            unchecked[name] = "monitor.kl_max is null"
            continue
        keys = alarm_inputs(name, cfg)
        if keys is None:  # a check this table does not know: it ran over every row
            checked[name] = len(st.rows)
            continue
        n = sum(all(is_num(r.get(k)) for k in keys) for r in st.rows)
        if n:
            checked[name] = n
        else:
            missing = [k for k in keys if not any(is_num(r.get(k)) for r in st.rows)]
            unchecked[name] = (f"needs {', '.join(missing)}: not logged" if missing
                               else f"needs {' and '.join(keys)} in the same rows")
    return Coverage(how, checked, unchecked)

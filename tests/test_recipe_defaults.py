"""A recipe's own section defaults (`section(TrainConfig, ..., lr=2e-3)`) survive every override:
setting one field, by --set or by YAML, changes that field and nothing else, in every verb's
config, nested ones (iterate's compare/reward/ppo) included."""

from __future__ import annotations

import dataclasses
import json
import types
from typing import Literal, Union, get_args, get_origin, get_type_hints

import pytest
import yaml

from rlhfkit.cli import main
from rlhfkit.config import load_config, to_dict
from rlhfkit.verbs import VERBS


def config_class(verb: str) -> type:
    from rlhfkit.verbs import config_class

    return config_class(VERBS[verb])


# Every verb with a config (the tools take plain arguments).
ALL_VERBS = [name for name, verb in VERBS.items() if verb.config]


def leaves(cfg, prefix: str = ""):
    """(dotted key, value, type) of every non-section field."""
    hints = get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            yield from leaves(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value, hints[f.name]


def _matches(value, tp) -> bool:
    origin = get_origin(tp)
    if origin is Literal:
        return value in get_args(tp)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, dict)
    return False


def other_value(value, tp):
    """A valid value of type `tp` that differs from `value`, as plain YAML/JSON data."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            return other_value(None, args[0])
        return other_value(value, next(a for a in args if _matches(value, a)))
    if origin is Literal:
        return next(a for a in get_args(tp) if a != value)
    if tp is bool:
        return not value
    if tp is int:
        return (value or 0) + 1
    if tp is float:
        return (value or 0.0) * 2 + 1.5
    if tp is str:
        return f"{value or 'x'}_other"
    if origin in (list, tuple):
        (item,) = get_args(tp)
        if dataclasses.is_dataclass(item):
            return [{"name": "other"}]
        return [other_value(None, item)] if item is not float else [0.25, 0.5]
    if origin is dict:
        return {"other": 1}
    raise AssertionError(f"no other value for {tp}")


def flat(tree: dict, keys: set[str], prefix: str = "") -> dict:
    """`tree` (a config as nested mappings) by dotted field key; `keys` are the leaf fields, so a
    mapping-valued field (a stage's `config`, an annotator's `options`) stays one value."""
    out = {}
    for k, v in tree.items():
        path = f"{prefix}{k}"
        if path not in keys and isinstance(v, dict):
            out.update(flat(v, keys, f"{path}."))
        else:
            out[path] = v
    return out


def nested(dotted: str, value) -> dict:
    for part in reversed(dotted.split(".")):
        value = {part: value}
    return value


@pytest.mark.parametrize("verb", ALL_VERBS)
def test_one_override_changes_that_field_and_nothing_else(verb, tmp_path):
    """Every field of every verb's config, overridden alone by --set and by YAML: the resolved
    config equals the defaults except at that field (which holds the new value)."""
    cls = config_class(verb)
    keys = {k for k, _, _ in leaves(load_config(cls))}
    default = flat(to_dict(load_config(cls)), keys)
    checked = 0
    for key, value, tp in leaves(load_config(cls)):
        new = other_value(value, tp)
        yaml_file = tmp_path / "one.yaml"
        yaml_file.write_text(yaml.safe_dump(nested(key, new)))
        for how, cfg in (("--set", load_config(cls, None, [f"{key}={json.dumps(new)}"])),
                         ("yaml", load_config(cls, yaml_file))):
            got = flat(to_dict(cfg), keys)
            assert got.keys() == default.keys()
            changed = {k for k in got if got[k] != default[k]}
            assert changed == {key}, f"{verb} {how} {key}={new!r} also changed {sorted(changed - {key})}"
        checked += 1
    assert checked >= 5


def _print_config(capsys, *argv) -> dict:
    assert main([*argv, "--print-config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("verb", ALL_VERBS)
def test_cli_print_config_keeps_every_other_field(verb, capsys, tmp_path):
    """Through the CLI: `--set` of one unrelated field per section, and the same through
    --config YAML, print the defaults everywhere else."""
    default = _print_config(capsys, verb)
    cfg = load_config(config_class(verb))
    keys = {k for k, _, _ in leaves(cfg)}
    per_section: dict[str, tuple] = {}
    for key, value, tp in leaves(cfg):
        per_section.setdefault(key.rpartition(".")[0], (key, value, tp))
    for key, value, tp in per_section.values():
        new = other_value(value, tp)
        via_set = _print_config(capsys, verb, "--set", f"{key}={json.dumps(new)}")
        if verb == "pipeline":
            via_yaml = None  # the pipeline's YAML is its positional argument (below)
        else:
            f = tmp_path / "c.yaml"
            f.write_text(yaml.safe_dump(nested(key, new)))
            via_yaml = _print_config(capsys, verb, "--config", str(f))
        for got in (via_set, via_yaml):
            if got is None:
                continue
            a, b = flat(got, keys), flat(default, keys)
            assert {k for k in a if a[k] != b[k]} == {key}, key


def test_reward_defaults_survive_a_partial_train_override(capsys, tmp_path):
    """The reported bug: `reward --set train.max_steps=3` reset lr/batch/epochs to TrainConfig's."""
    tuned = {"lr": 2e-3, "batch_size": 16, "micro_batch_size": 16, "epochs": 3.0}
    train = _print_config(capsys, "reward")["train"]
    assert {k: train[k] for k in tuned} == tuned
    train = _print_config(capsys, "reward", "--set", "train.max_steps=3")["train"]
    assert {k: train[k] for k in tuned} == tuned and train["max_steps"] == 3
    f = tmp_path / "r.yaml"
    f.write_text("train: {max_steps: 3}\n")
    train = _print_config(capsys, "reward", "--config", str(f))["train"]
    assert {k: train[k] for k in tuned} == tuned and train["max_steps"] == 3
    train = _print_config(capsys, "reward", "--set", "train.epochs=3.0")["train"]
    assert train["lr"] == 2e-3


def test_dpo_monitor_keeps_its_proxy_key(capsys):
    """DPO logs no reward/mean; its monitor's proxy is the implicit reward margin, after any override."""
    mon = _print_config(capsys, "dpo", "--set", "monitor.action=stop")["monitor"]
    assert mon["proxy_key"] == "rewards/margin" and mon["action"] == "stop"


def test_ppo_train_section_defaults_and_help(capsys):
    """PPO's optimisation defaults (no subclass any more) and its narrower help for some fields."""
    assert main(["ppo", "--print-config", "--set", "train.seed=3"]) == 0
    text = capsys.readouterr().out
    train = yaml.safe_load(text)["train"]
    assert (train["lr"], train["schedule"], train["warmup_ratio"], train["batch_size"], train["max_steps"]) == \
        (1e-5, "constant", 0.0, 64, 100)
    assert "# peak learning rate (AdamW) of the policy\n  lr: 1.0e-05" in text
    assert main(["sft", "--print-config"]) == 0
    assert "# peak learning rate (AdamW)\n  lr: 5.0e-05" in capsys.readouterr().out


def test_iterate_nested_sections_keep_their_recipes_defaults():
    """iterate nests compare/reward/ppo configs: a partial override of one of their sections keeps
    that recipe's own defaults, not the shared class's."""
    from rlhfkit.pipeline.iterate import IterateConfig

    cfg = load_config(IterateConfig, None, ["reward.train.max_steps=3", "ppo.train.batch_size=8",
                                            "ppo.monitor.action=stop"])
    assert (cfg.reward.train.lr, cfg.reward.train.batch_size, cfg.reward.train.epochs) == (2e-3, 16, 3.0)
    assert cfg.reward.train.max_steps == 3
    assert (cfg.ppo.train.lr, cfg.ppo.train.max_steps, cfg.ppo.train.schedule) == (1e-5, 100, "constant")
    assert cfg.ppo.train.batch_size == 8
    f = load_config(IterateConfig, None, ["reward.train={max_steps: 3}"])
    assert f.reward.train.lr == 2e-3

"""Typed, nested, frozen configs: one dataclass per recipe, YAML files plus `key=value` overrides.

Every field carries its documentation in `field(metadata={"help": ...})`, so `--print-config`
can show the resolved config with a comment per field (CleanRL's `Args`, with nesting).
Unknown keys are errors that suggest the closest valid key; wrong types name the key and the
expected type. Resolution order: defaults < YAML file < `--set` overrides.

A recipe gives a shared section its own defaults in one way only: `section(TrainConfig, "help",
lr=2e-3, ...)`. Those are the section's defaults in that recipe (and wherever the recipe's config
is nested, e.g. iterate's `reward:`); a partial override such as `train.max_steps=3` applies on
top of them, never on top of the class defaults.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from rlhfkit.errors import UserError

T = TypeVar("T")


class ConfigError(UserError):
    """A config that cannot be used: unknown key, wrong type, unreadable file."""


def doc(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with a default and its one-line documentation."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def section(cls: type, help: str, *, helps: dict[str, str] | None = None, **defaults: Any) -> Any:
    """A nested config section: `cls` with this recipe's `defaults` for some of its fields, and
    `helps` replacing some fields' help where the recipe gives them a narrower meaning."""
    cls(**defaults)  # a misspelt default fails at import, not at the first run
    unknown = set(helps or ()) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise TypeError(f"section({cls.__name__}): helps for unknown fields {sorted(unknown)}")
    factory = functools.partial(cls, **defaults) if defaults else cls
    return dataclasses.field(default_factory=factory, metadata={"help": help, "helps": dict(helps or {})})


# ----------------------------------------------------------------------------- building


def build(cls: type[T], data: dict[str, Any] | None = None, *, where: str = "", base: T | None = None) -> T:
    """Build `cls` from a (possibly partial) nested dict, validating keys and types.

    Every field missing from `data` keeps its value in `base` (default `cls()`: each field's own
    default, a section's being its `section(...)` factory's output). A section given as a mapping
    is built the same way on top of its value in `base`, so per-recipe section defaults survive
    any partial override."""
    data = dict(data or {})
    base = cls() if base is None else base
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        full = f"{where}{key}"
        close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.5)
        hint = f"; did you mean '{where}{close[0]}'?" if close else ""
        valid = ", ".join(sorted(fields))
        raise ConfigError(f"unknown config key '{full}'{hint} (valid keys here: {valid})")
    kwargs = {}
    for name, value in data.items():
        current = getattr(base, name)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            kwargs[name] = build(type(current), value, where=f"{where}{name}.", base=current)
        else:
            kwargs[name] = _coerce(value, hints[name], f"{where}{name}")
    return dataclasses.replace(base, **kwargs)


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' is a section; expected a mapping, got {value!r}")
        return build(tp, value, where=f"{key}.")
    if origin in (Union, types.UnionType):
        errors = []
        for arg in get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        (item,) = get_args(tp)[:1] or (Any,)
        items = [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"config key '{key}': expected null, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected bool (true/false), got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected int, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"config key '{key}': expected float, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. a model name that YAML read as a number
        raise ConfigError(f"config key '{key}': expected str, got {value!r}")
    raise ConfigError(f"config key '{key}': unsupported type {tp!r}")  # pragma: no cover


# ----------------------------------------------------------------------------- sources


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one `dotted.key=value`; the value is read as YAML (`3e-4`, `true`, `[1, 2]`)."""
    if "=" not in text:
        raise ConfigError(f"--set expects dotted.key=value, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set expects dotted.key=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    # YAML reads "3e-4" as a string; accept it as the float users mean.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value.lower() for c in ".e") else value
        except ValueError:
            pass
    return key, value


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: typing.Sequence[str] = (),
    base: dict[str, Any] | None = None,
) -> T:
    """Resolve a config: defaults < `base` dict < YAML file < `key=value` overrides."""
    tree: dict[str, Any] = _deep_merge({}, base or {})
    if path is not None:
        tree = _deep_merge(tree, load_yaml(path))
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    return build(cls, tree)


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ----------------------------------------------------------------------------- output


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Any, comments: bool = True) -> str:
    """The resolved config as YAML; with `comments`, each field's help above it."""
    if not comments:
        return yaml.safe_dump(to_dict(cfg), sort_keys=False)
    lines: list[str] = []
    _emit(cfg, lines, indent=0)
    return "\n".join(lines) + "\n"


def _emit(cfg: Any, lines: list[str], indent: int, helps: dict[str, str] | None = None) -> None:
    """`helps`: the enclosing `section(...)`'s help for some fields, replacing the class's own."""
    pad = "  " * indent
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        help_text = (helps or {}).get(f.name) or f.metadata.get("help")
        if help_text:
            lines.append(f"{pad}# {help_text}")
        if dataclasses.is_dataclass(value):
            lines.append(f"{pad}{f.name}:")
            _emit(value, lines, indent + 1, f.metadata.get("helps"))
        elif isinstance(value, (list, tuple)) and any(dataclasses.is_dataclass(v) for v in value):
            # e.g. a pipeline's stages: plain mappings, one block per item
            items = [dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for v in value]
            block = yaml.safe_dump({f.name: items}, sort_keys=False, width=1000)
            lines.extend(pad + line for line in block.rstrip("\n").split("\n"))
        else:
            dumped = yaml.safe_dump({f.name: value}, default_flow_style=True, width=1000).strip()
            if dumped.startswith("{") and dumped.endswith("}"):
                dumped = dumped[1:-1]
            lines.append(f"{pad}{dumped}")


def replace(cfg: T, **changes: Any) -> T:
    """A copy of a frozen config with some top-level fields changed."""
    return dataclasses.replace(cfg, **changes)


# ----------------------------------------------------------------------------- shared sections
# Sections every recipe reuses. Recipe configs (SFTConfig, RewardConfig, ...) live at the top of
# their recipe file, CleanRL-style, and nest these.


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    enabled: bool = doc(False, "train low-rank adapters (peft LoRA) instead of all weights; final/ holds the merged model")
    r: int = doc(16, "adapter rank")
    alpha: int = doc(32, "LoRA scaling numerator: updates are scaled by alpha / r")
    dropout: float = doc(0.0, "dropout on the adapter input (keep 0 for RL and preference recipes)")
    target_modules: list[str] | str = doc("all-linear", "module names to adapt, or 'all-linear' (every linear layer but the output head)")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    name_or_path: str = doc("lab", "Hub id ('gpt2', 'org/name') or local folder; a name starting with /, ./, ../ or ~, "
                                   "with two or more '/', or that exists on disk is a folder; 'lab' = the built-in lab base model")
    revision: str | None = doc(None, "hub revision (branch, tag or commit) when loading by name")
    trust_remote_code: bool = doc(False, "allow model code from the hub; off unless you trust it")
    allow_pickle_weights: bool = doc(False, "also load pickle .bin weights when there are no safetensors; "
                                            "unpickling can run code, so only for sources you trust")
    dtype: Literal["float32", "bfloat16", "float16"] = doc("float32", "weights dtype when loading")
    gradient_checkpointing: bool = doc(False, "recompute activations in backward to save memory")
    disable_dropout: bool = doc(False, "SFT: set every dropout probability to 0 (reward, DPO and PPO always do, "
                                       "in every model: their losses compare passes)")
    chat_template: str | None = doc(None, "Jinja chat template (inline or path) for tokenizers without one")
    lora: LoRAConfig = section(LoRAConfig, "low-rank adapters via peft (off by default)")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    seed: int = doc(0, "seed for init, data order and sampling")
    lr: float = doc(5e-5, "peak learning rate (AdamW)")
    weight_decay: float = doc(0.0, "AdamW weight decay")
    adam_betas: list[float] = doc([0.9, 0.999], "AdamW betas")
    adam_eps: float = doc(1e-8, "AdamW epsilon")
    schedule: Literal["constant", "linear", "cosine"] = doc("cosine", "learning-rate schedule after warmup")
    warmup_ratio: float = doc(0.05, "share of the total steps spent warming up linearly")
    max_grad_norm: float = doc(1.0, "clip the global gradient norm to this; 0 = off")
    batch_size: int = doc(32, "global batch (examples per optimizer step, all processes together)")
    micro_batch_size: int = doc(16, "examples per forward pass per process; accumulation is derived")
    epochs: float = doc(1.0, "passes over the training data (ignored when max_steps > 0)")
    max_steps: int = doc(0, "optimizer steps to run; 0 = derive from epochs")
    mixed_precision: Literal["no", "bf16", "fp16"] = doc("no", "autocast precision through accelerate")
    sharding: Literal["none", "fsdp"] = doc("none", "with several processes: none = data parallel (DDP, every process "
                                                    "holds every weight); fsdp = FSDP2, parameters, gradients and "
                                                    "optimizer state sharded over the processes (docs/DISTRIBUTED.md)")


@dataclasses.dataclass(frozen=True)
class LogConfig:
    log_every: int = doc(1, "write metrics every N optimizer steps")
    eval_every: int = doc(50, "evaluate on held-out data every N steps; 0 = only at the end")
    save_every: int = doc(100, "write a resumable checkpoint every N steps; 0 = only final")
    keep_checkpoints: int = doc(2, "how many recent checkpoints to keep (older ones are deleted)")
    progress: bool = doc(True, "show progress bars")
    trackers: list[str] = doc([], "accelerate trackers to log to as well: tensorboard, wandb, trackio")

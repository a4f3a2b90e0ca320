"""Load policies, references and tokenizers from HF names or folders; save HF folders.

`name_or_path="lab"` resolves to the built-in lab's base model (built on first use). Everything
saved here loads in plain transformers: `save_pretrained` with safetensors, tokenizer alongside.

Local folder or Hub id (`is_local_path`): a name that starts with `/`, `./`, `../` or `~`, has
more than one `/`, ends with `/`, contains a backslash or a drive letter (`C:`), or exists on
disk is a local folder; a missing one is an error at once, with no Hub call. Anything else
(`gpt2`, `org/name`) is a Hub id. With `HF_HUB_OFFLINE=1`, or when one TCP connect to the Hub
(or the HTTPS proxy) fails within 3 s, a Hub id is looked up in the local HF cache only, instead
of huggingface_hub's five retries with backoff (~50 s). Every failure to find or read a model is
one `ModelLoadError` line naming it.

Weights load from safetensors only (`use_safetensors=True`): pickle `.bin` files can run code
when read, so they need `model.allow_pickle_weights=true`.

Why one file (~440 lines): loading and saving are the two directions of one contract (HF folders,
safetensors only, LoRA merged on save, atomic publishing that follows the umask), and their helpers
(peft adapters, dropout, unwrapping a sharded module) serve both.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import threading
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import torch
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from rlhfkit.config import ModelConfig
from rlhfkit.errors import UserError
from rlhfkit.lab.names import is_lab_name
from rlhfkit.lab.names import model_dir as lab_model_dir

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_HUB_PROBE_TIMEOUT_S = 3.0


class ModelLoadError(UserError):
    """A model or tokenizer that cannot be loaded: missing folder, unknown or unreachable Hub id,
    no safetensors weights."""


def is_local_path(name_or_path: str) -> bool:
    """True when `name_or_path` names a folder rather than a Hub id (rule in the module docstring).
    Hub ids are `name` or `namespace/name`, never with a leading `.`, `/`, `~` or two slashes."""
    name = name_or_path
    return (name.startswith(("/", "./", "../", "~")) or name in (".", "..") or name.count("/") > 1
            or name.endswith("/") or "\\" in name
            or re.match(r"^[A-Za-z]:", name) is not None or os.path.exists(name))


def resolve_model_path(name_or_path: str) -> str:
    """The folder or Hub id to load: `lab` names become the lab's folders (`lab.names`), `~` is
    expanded, and a local path that does not exist raises `ModelLoadError` (no Hub call)."""
    if is_lab_name(name_or_path):  # the lab resolves its own names (and builds on first use)
        return str(lab_model_dir(name_or_path))
    if is_local_path(name_or_path):
        path = os.path.expanduser(name_or_path)
        if not os.path.isdir(path):
            what = "is a file, not a model folder" if os.path.exists(path) else "does not exist"
            raise ModelLoadError(f"model '{name_or_path}': local folder {path} {what} (a name starting with /, ./, ../ "
                                 f"or ~, or with more than one '/', is a local path, not a Hub id)")
        return path
    return name_or_path


def _can_connect(host: str, port: int, timeout: float) -> bool:
    """One TCP connect, DNS included, given up after `timeout` s (getaddrinfo has no timeout of
    its own, hence the thread)."""
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(ok)


_REACHABLE: dict[tuple[str, int], bool] = {}


def hub_reachable() -> bool:
    """Whether the Hub endpoint (HF_ENDPOINT, or the HTTPS proxy when one is set) accepts a TCP
    connection; asked once per process and address."""
    from huggingface_hub import constants

    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") or os.environ.get("ALL_PROXY")
    url = urlparse(proxy or constants.ENDPOINT)
    key = (url.hostname or "", url.port or (443 if url.scheme == "https" else 80))
    if key not in _REACHABLE:
        _REACHABLE[key] = _can_connect(*key, _HUB_PROBE_TIMEOUT_S)
    return _REACHABLE[key]


def from_pretrained(loader, name_or_path: str, **kwargs):
    """`loader.from_pretrained(name_or_path, **kwargs)` (an Auto* class) with rlhfkit's rules:
    local paths checked first, Hub ids from the cache only when offline or unreachable, and any
    failure to find or read the model as one `ModelLoadError` line. Callers pass `revision` and
    `trust_remote_code` (from `ModelConfig`), and `use_safetensors` for weights."""
    from huggingface_hub import constants
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    path = resolve_model_path(name_or_path)
    hub = not os.path.isdir(path)
    if hub:
        try:
            validate_repo_id(path)
        except HFValidationError as e:
            raise ModelLoadError(f"model '{name_or_path}': not a local folder, and not a Hub id ({e})") from None
    offline = hub and (constants.HF_HUB_OFFLINE or not hub_reachable())
    if offline:
        kwargs["local_files_only"] = True
    try:
        with _offline_mode(offline):
            return loader.from_pretrained(path, **kwargs)
    except OSError as e:  # transformers reports not-found, offline, bad repo ids and missing weights as OSError
        reason = " ".join(str(e).split())
        if offline:
            why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the Hugging Face Hub is unreachable"
            reason = f"not a local folder, not in the local Hugging Face cache, and {why}"
        elif kwargs.get("use_safetensors") and "safetensors" in reason:
            reason += (" (rlhfkit loads safetensors weights only; set model.allow_pickle_weights=true to read pickle "
                       ".bin weights from a source you trust)")
        raise ModelLoadError(f"model '{name_or_path}': {reason}") from None


@contextmanager
def _offline_mode(on: bool):
    """huggingface_hub's offline mode for the block. `local_files_only` alone is not enough:
    transformers' Auto classes look for a peft adapter_config.json without it, which retries
    five times with backoff when the Hub is unreachable."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = before or on
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def load_tokenizer(cfg: ModelConfig, path: str | None = None) -> PreTrainedTokenizerBase:
    """Tokenizer with a pad token guaranteed.

    Without a pad token we reuse EOS. That is safe here because rlhfkit never derives labels or
    EOS positions from the attention mask: labels are built explicitly (data.tokenize), and
    generations are cut at the first EOS (rollout), which is the usual source of "the model never
    learns to stop" when pad == eos.
    """
    tok = from_pretrained(AutoTokenizer, path or cfg.name_or_path, revision=None if path else cfg.revision,
                          trust_remote_code=cfg.trust_remote_code)
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ModelLoadError(f"tokenizer of {cfg.name_or_path!r} has neither a pad nor an EOS token; set one first")
        tok.pad_token = tok.eos_token
    if cfg.chat_template:
        template = cfg.chat_template
        if os.path.isfile(template):
            template = Path(template).read_text()
        tok.chat_template = template
    tok.padding_side = "right"  # training default; rollout pads left itself
    return tok


def load_policy(cfg: ModelConfig, path: str | None = None, lora: bool | None = None) -> PreTrainedModel:
    """A causal LM from `path` (a checkpoint) or the configured name/folder.

    With `cfg.lora.enabled`, the model loaded for training (no `path`; or `lora=True`) is wrapped
    in a peft `PeftModel` whose adapters are the only trainable parameters. Models loaded from an
    explicit `path` (references, checkpoints to score) are left plain unless `lora=True`.
    """
    model = from_pretrained(
        AutoModelForCausalLM,
        path or cfg.name_or_path,
        revision=None if path else cfg.revision,
        trust_remote_code=cfg.trust_remote_code,
        use_safetensors=not cfg.allow_pickle_weights,
        dtype=_DTYPES[cfg.dtype],
    )
    if cfg.disable_dropout:
        disable_dropout(model)
    if cfg.gradient_checkpointing:
        enable_checkpointing(model)
    if (cfg.lora.enabled and path is None) if lora is None else lora:
        model = apply_lora(model, cfg)
    return model


def enable_checkpointing(model: PreTrainedModel) -> None:
    """Gradient checkpointing: each block's activations are recomputed in backward instead of kept
    (transformers >= 5 names it activation checkpointing; older versions gradient checkpointing)."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    model.config.use_cache = False  # the KV cache is useless in training and conflicts with recompute


def apply_lora(model: PreTrainedModel, cfg: ModelConfig, task_type: str = "CAUSAL_LM"):
    """Wrap `model` in peft LoRA adapters (Hu et al. 2021: W x + (alpha / r) B A x, B = 0 at
    start, so the wrapped model computes exactly what the base does until the first update).

    task_type is peft's: CAUSAL_LM for policies; SEQ_CLS for reward models, where peft also
    trains a full copy of the `score`/`classifier` head (modules_to_save)."""
    from peft import LoraConfig, get_peft_model

    lc = cfg.lora
    if cfg.gradient_checkpointing:
        model.enable_input_require_grads()  # frozen embeddings would otherwise cut the graph
    targets = lc.target_modules if isinstance(lc.target_modules, str) else list(lc.target_modules)
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    head = next((n for n, m in model.named_modules() if m is out), None)
    if out is not None and inp is not None and out.weight is inp.weight and not isinstance(targets, str) \
            and head is not None and any(head == t or head.endswith("." + t) for t in targets):
        # An adapted output head tied to the input embedding: merging would change both. Untie
        # (one frozen copy of the head) so the merged final/ has the head's update only.
        out.weight = torch.nn.Parameter(out.weight.detach().clone(), requires_grad=False)
        model.config.tie_word_embeddings = False
    peft_cfg = LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=targets,
                          task_type=task_type, bias="none")
    return get_peft_model(model, peft_cfg)


def is_peft(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


class AdapterDisabled(torch.nn.Module):
    """The base model under a LoRA policy, used as the reference without a second copy of the
    weights: every forward runs inside `peft_model.disable_adapter()`. The policy is held outside
    the module tree, so `.train()/.eval()` here never change the policy's mode."""

    def __init__(self, peft_model):
        super().__init__()
        object.__setattr__(self, "_policy", peft_model)

    def parameters(self, recurse: bool = True):
        return self._policy.parameters(recurse)

    @property
    def config(self):  # the base model's: callers pick attention masks and layouts from it
        return self._policy.config

    def forward(self, *args, **kwargs):
        with self._policy.disable_adapter():
            return self._policy(*args, **kwargs)


def load_reference(cfg: ModelConfig, policy: torch.nn.Module, ref_model: str | None = None) -> torch.nn.Module:
    """The frozen reference of a KL-regularised method (PPO, DPO). A LoRA policy with no separate
    `ref_model` is its own reference with the adapters off (`AdapterDisabled`: no second copy of
    the weights); otherwise `ref_model`, or the starting model, is loaded plain, dropout off, frozen."""
    if is_peft(policy) and ref_model is None:
        return AdapterDisabled(policy)
    ref = load_policy(cfg, path=resolve_model_path(ref_model) if ref_model else None, lora=False)
    disable_dropout(ref)
    return ref.eval().requires_grad_(False)


# Names of dropout-like probabilities on configs and modules: dropout, attention_dropout,
# hidden_dropout_prob, summary_first_dropout, resid_pdrop, attn_pdrop, layerdrop (OPT skips whole
# layers), drop_path_rate / drop_prob (stochastic depth), attn_drop_rate, ...
_DROPOUT_NAME = re.compile(r"dropout|drop_(rate|prob|path)|pdrop$|layerdrop$")


def disable_dropout(model: torch.nn.Module) -> None:
    """Every dropout probability in `model` set to 0, wherever it is kept.

    RL and preference losses compare log-probs across passes (policy vs reference, before vs
    after an update); any dropout makes them noisy: DPO's first loss is no longer ln 2, PPO's
    first KL no longer 0. Three places hold a probability: nn.Dropout modules (`p`); floats that
    modules copied from the config at init (OPT's layers call F.dropout(p=self.dropout), Llama-
    family attention passes self.attention_dropout to the kernel); and the config and its
    sub-configs, which some models read at forward time. Dropout stays off in saved configs.
    """
    for m in model.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd):
            m.p = 0.0
        for name, value in list(vars(m).items()):
            if isinstance(value, float) and _DROPOUT_NAME.search(name):
                setattr(m, name, 0.0)
        if isinstance(getattr(m, "config", None), PretrainedConfig):
            _zero_config_dropout(m.config)


def _zero_config_dropout(config: PretrainedConfig) -> None:
    for name, value in list(vars(config).items()):
        if isinstance(value, PretrainedConfig):  # text_config, vision_config, ...
            _zero_config_dropout(value)
        elif isinstance(value, float) and _DROPOUT_NAME.search(name):
            setattr(config, name, 0.0)


@contextmanager
def merged_weights(model: torch.nn.Module):
    """The model's weights under plain HF names. A peft LoRA model is merged in place for the
    block (W + (alpha / r) B A; no second copy) with its fully trained modules (modules_to_save,
    e.g. a reward model's head) replacing the frozen originals, and unmerged on exit, so copy a
    tensor to keep it past the block. A plain model: its state_dict."""
    if not is_peft(model):
        yield model.state_dict()
        return
    model.merge_adapter()
    try:
        live = f".modules_to_save.{model.active_adapter}."
        state = {}
        for k, v in model.get_base_model().state_dict().items():
            k = k.replace(".base_layer.", ".").replace(live, ".")
            if "lora_" not in k and ".original_module." not in k and ".modules_to_save." not in k:
                state[k] = v
        yield state
    finally:
        model.unmerge_adapter()


def save_hf(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None, folder: Path, state_dict=None,
            merged: bool = True) -> None:
    """`save_pretrained` (safetensors) + tokenizer: a folder plain transformers can load.

    A peft LoRA model writes its adapters under `folder/adapter/` (what resume loads) and, with
    `merged`, the merged model W + (alpha / r) B A in `folder` itself. The merge is done in place
    and undone after saving (no second copy of the weights; undoing it is exact only up to float
    rounding, so checkpoints mid-run pass merged=False). Modules peft trains in full
    (modules_to_save, e.g. a reward model's head) are saved under their plain names. `state_dict`
    is ignored for peft models.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if is_peft(model):
        model.save_pretrained(folder / "adapter", safe_serialization=True)
        if merged:
            with merged_weights(model) as state:
                model.get_base_model().save_pretrained(folder, state_dict=state, safe_serialization=True)
    else:
        model.save_pretrained(folder, state_dict=state_dict, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    follow_umask(*folder.rglob("*.safetensors"))


def plain_copy(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A CPU model of `model`'s architecture holding `state`, a full state dict (gathered from a
    sharded model): built on the meta device, then given the tensors themselves (no second copy).
    A peft model gets the same adapters, so `save_hf` merges them with peft's own code."""
    import copy

    if is_peft(model):
        from peft import get_peft_model

        base = model.get_base_model()
        with torch.device("meta"):
            twin = get_peft_model(_unsharded_class(base)(base.config), copy.deepcopy(model.peft_config[model.active_adapter]))
    else:
        with torch.device("meta"):
            twin = _unsharded_class(model)(model.config)
    twin.load_state_dict(state, assign=True, strict=True)
    (twin.get_base_model() if is_peft(twin) else twin).tie_weights()  # assign=True gave tied names two tensors
    return twin.eval()


def _unsharded_class(model: torch.nn.Module) -> type:
    """The model's own class: `fully_shard` swaps it for a subclass `FSDP<Name>` (FSDPModule first)."""
    from torch.distributed.fsdp import FSDPModule

    return next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))


def follow_umask(*files: Path) -> None:
    """safetensors creates its files with mode 0600; give them the mode any other new file gets
    (0666 minus the umask), so a run folder's weights are as readable as its config."""
    for f in files:
        os.chmod(f, 0o666 & ~_umask())


def _umask() -> int:
    try:  # Linux shows it; elsewhere read it the racy way (set and restore)
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def load_weights(model: torch.nn.Module, folder: Path) -> None:
    """Load a `save_pretrained` folder's weights into an existing model, exactly (for resume).

    Tied weights (e.g. GPT-2's lm_head = wte) are not stored twice; they are the only keys
    allowed to be missing.
    """
    folder = Path(folder)
    if is_peft(model):
        from peft import set_peft_model_state_dict

        adapter = folder / "adapter" / "adapter_model.safetensors"
        if not adapter.exists():
            raise RuntimeError(f"{folder}: the model has LoRA adapters but the folder has no adapter/ to load")
        result = set_peft_model_state_dict(model, load_file(str(adapter)))
        if result.unexpected_keys:
            raise RuntimeError(f"{folder}: adapter keys do not match the model (unexpected {result.unexpected_keys[:5]})")
        return
    index = folder / "model.safetensors.index.json"
    if index.exists():
        state = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            state.update(load_file(str(folder / shard)))
    else:
        state = load_file(str(folder / "model.safetensors"))
    result = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or {})
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"{folder}: weights do not match the model (missing {missing[:5]}, unexpected {result.unexpected_keys[:5]})")


def publish_folder(tmp: Path, final: Path) -> None:
    """Move a fully written folder into place, replacing an older one: the old one is renamed out of
    the way first and deleted after, so a kill at any moment leaves either folder whole at `final`
    (or none, between two renames) and never a half-deleted one."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

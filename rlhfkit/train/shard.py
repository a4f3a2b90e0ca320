"""Sharded training: FSDP2 (torch's `fully_shard`) behind one switch, `train.sharding: fsdp`.

With sharding on (any number of processes; one is a group of one), `TrainSession` builds a
`ShardedAccelerator`: the recipe's own calls (`accelerator.prepare(model, optimizer)`,
`prepare_model(ref, evaluation_mode=True)`, `clip_grad_norm_`, `no_sync`) shard instead of wrapping
in DDP, so no recipe changes between the two.

    every transformer block (the model's `_no_split_modules` classes) and then the root get
    `fully_shard` over a 1-D mesh of all processes: each process keeps 1/N of every parameter,
    gradient and AdamW moment; a block's parameters are all-gathered for its forward and
    backward and freed after (frozen models too: the reference, the online loop's reward models).

Why torch's `fully_shard` and not accelerate's FSDP plugin, on GPUs too: accelerate 1.15 shards one
model per `prepare` call together with its own optimizer (PPO trains policy and critic with one
optimizer), refuses `prepare_model` of frozen models under FSDP2, and on CPU turns an FSDP plugin
into DDP. `fully_shard` is what its plugin calls; here it runs the same on CPU (gloo, tested) and
CUDA (NCCL). An `accelerate launch` with an FSDP config switches this sharding on.

Gradients: FSDP2 reduce-scatters each micro-batch's gradients (mean over processes, as DDP), so
`no_sync` is a no-op here: sharded gradient memory, one reduce-scatter per micro-batch.

A sharded forward is a collective: every process must run the same number of them. Training and
the no-grad passes over equal shards do; generation (data-dependent length) and evaluations over
uneven shares run inside `gathered(model)`, which all-gathers the whole model once (its full
size in memory on every process for the block) and then forwards locally.

Checkpoints (`save_sharded` / `load_sharded`): torch.distributed.checkpoint with its Hugging Face
storage (safetensors files, one per process, DCP offsets in their headers; no pickle), the
optimizer's non-tensor state (param groups) as JSON. `read_sharded` assembles full tensors from
such a folder in one process (tests, tools).
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn

SHARDED_DIR = "sharded"  # inside a checkpoint: the DCP safetensors shards + param groups
_RESHARD = "_rlhfkit_reshard_after_forward"  # each sharded module's own setting, restored after `gathered`
_GATHERED = "_rlhfkit_gathered"


def launcher_asks_fsdp() -> bool:
    """True when `accelerate launch` was given an FSDP config (it exports ACCELERATE_USE_FSDP).
    rlhfkit then shards itself, and the variable is cleared so accelerate's own FSDP path (which
    cannot take PPO's two models under one optimizer) stays off."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return False
    os.environ["ACCELERATE_USE_FSDP"] = "false"
    return True


# ----------------------------------------------------------------------------- sharding a model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    model = getattr(model, "_policy", model)  # AdapterDisabled: the policy it runs
    return any(isinstance(m, FSDPModule) for m in model.modules())


def block_classes(model: nn.Module) -> set[str]:
    """Class names of the model's transformer blocks: HF's `_no_split_modules` (the blocks that must
    stay on one device), found on the model or on any submodule (peft wraps the HF model)."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or [])
    return names


def shard_model(model: nn.Module, mesh, frozen: bool) -> nn.Module:
    """`fully_shard` every block and scalar head, then the root (embeddings, final norm, LM head), in place.

    After its forward a block frees its gathered parameters (reshard). The root of a trained model
    keeps its own (torch's default: backward needs them next); a frozen model's root frees them too,
    since no backward follows. A reward model's scalar head (`score`) is its own unit because
    `models.reward.forward_rewards` calls it after the model's forward, outside the root's."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    from rlhfkit.models.reward import HEAD_NAMES

    if is_sharded(model):
        return model
    blocks = block_classes(model)
    for name, m in list(model.named_modules()):
        if m is not model and (type(m).__name__ in blocks or name.rsplit(".", 1)[-1] in HEAD_NAMES):
            fully_shard(m, mesh=mesh, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, reshard_after_forward=frozen)
    for m in model.modules():
        if isinstance(m, FSDPModule):  # explicit per module (no lazy root heuristic), restored by `gathered`
            setattr(m, _RESHARD, m is not model or frozen)
            m.set_reshard_after_forward(getattr(m, _RESHARD), recurse=False)
    # Name the root now rather than at its first forward: torch takes the first module to run
    # forward as the root, and peft's generate enters through the inner HF model (a block first).
    model._get_fsdp_state()._lazy_init()
    return model


@contextmanager
def gathered(*models):
    """Every sharded module of `models` unsharded for the block (one all-gather each, on every
    process), so forwards inside run locally, in any number: generation, uneven evaluations.
    Costs the models' full parameter size on every process while open. Re-entrant; a no-op for
    models that are not sharded. Every process must enter it (the all-gathers are collectives)."""
    from torch.distributed.fsdp import FSDPModule

    mods, seen = [], set()
    for model in models:
        if model is None:
            continue
        model = getattr(model, "_policy", model)  # AdapterDisabled: the policy it runs
        for m in model.modules():
            if isinstance(m, FSDPModule) and id(m) not in seen and not getattr(m, _GATHERED, False):
                seen.add(id(m))
                mods.append(m)
    for m in mods:
        m.unshard()
        m.set_reshard_after_forward(False, recurse=False)
        setattr(m, _GATHERED, True)
    try:
        yield
    finally:
        for m in mods:
            m.reshard()
            m.set_reshard_after_forward(getattr(m, _RESHARD, True), recurse=False)
            setattr(m, _GATHERED, False)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict on the main process, on CPU; {} on the others. A collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def unsharded(model: nn.Module) -> nn.Module:
    """`model` itself, or for a sharded one a plain CPU copy of it (the full weights gathered; LoRA
    adapters kept, so merging stays peft's): what a consumer of whole weights (vLLM's engine) reads.
    A collective; the full weights land on the main process only, so one process (vLLM's rule)."""
    from rlhfkit.models.loading import plain_copy

    return plain_copy(model, full_state_dict(model)) if is_sharded(model) else model


# ----------------------------------------------------------------------------- the accelerator


class ShardedAccelerator(Accelerator):
    """accelerate's process group, device, autocast and reductions; FSDP2 sharding instead of DDP.

    `on_prepare(optimizer)` (set by `TrainSession.resume`) runs once the optimizer has been
    prepared with its models: a sharded checkpoint can only be loaded into sharded models."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh

        if not dist.is_initialized():  # one process: a group of one, so the sharded code path is the same
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo", store=dist.HashStore(),
                                    rank=0, world_size=1, device_id=self.device if self.device.type == "cuda" else None)
        self.mesh = init_device_mesh(self.device.type, (self.num_processes,))
        self.on_prepare = None

    def prepare(self, *args, device_placement=None):
        """Shard the models in place and point the optimizers at the sharded parameters (the
        optimizers are built before, on the plain models, and hold no state yet)."""
        models = [a for a in args if isinstance(a, nn.Module)]
        optimizers = [a for a in args if isinstance(a, torch.optim.Optimizer)]
        if len(models) + len(optimizers) != len(args):
            raise TypeError("ShardedAccelerator.prepare takes models and optimizers only")
        owner = {id(p): (i, n) for i, m in enumerate(models) for n, p in m.named_parameters()}
        for m in models:
            shard_model(m.to(self.device), self.mesh, frozen=False)
        sharded = {(i, n): p for i, m in enumerate(models) for n, p in m.named_parameters()}
        for opt in optimizers:
            if opt.state:
                raise RuntimeError("prepare the optimizer before its first step (its state would stay unsharded)")
            for group in opt.param_groups:
                group["params"] = [sharded[owner[id(p)]] for p in group["params"]]
                group["fused"] = None  # torch's plain AdamW kernel on sharded parameters (as online.py)
        for opt in optimizers:
            if self.on_prepare is not None:
                hook, self.on_prepare = self.on_prepare, None
                hook(opt)
        return args[0] if len(args) == 1 else args

    def prepare_model(self, model, device_placement=None, evaluation_mode=False):
        """A model prepared alone: frozen (reference, reward model), sharded like the trained ones."""
        return shard_model(model.to(self.device), self.mesh, frozen=evaluation_mode)

    def no_sync(self, model):
        return nullcontext()  # every micro-batch's gradients are reduce-scattered (module docstring)

    def clip_grad_norm_(self, parameters, max_norm, norm_type=2):
        norm = torch.nn.utils.clip_grad_norm_(list(parameters), max_norm, norm_type)  # global norm over shards
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    def get_state_dict(self, model, unwrap=True):
        return full_state_dict(model)


# ----------------------------------------------------------------------------- sharded checkpoints


def _unique(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Without the second name of tied weights (GPT-2's lm_head = wte): safetensors refuses
    tensors sharing memory, and loading one name fills both."""
    seen, out = set(), {}
    for k, v in state.items():
        local = v.to_local() if hasattr(v, "to_local") else v
        key = (local.untyped_storage().data_ptr(), local.storage_offset(), tuple(local.shape))
        if local.numel() and key in seen:
            continue
        seen.add(key)
        out[k] = v
    return out


def _states(models: dict[str, nn.Module], optimizer):
    """(model state, optimizer state) of `models` as one module tree (names `policy.…`, `critic.…`),
    sharded tensors; an optimizer without state gets zeros (torch's `_init_optim_state`)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    root = nn.ModuleDict(models)
    if optimizer is None:
        return root, get_model_state_dict(root), None
    return root, *get_state_dict(root, optimizer)


def _tensors(msd: dict, osd: dict | None) -> dict[str, torch.Tensor]:
    flat = {f"model/{k}": v for k, v in _unique(msd).items()}
    for name, state in (osd or {}).get("state", {}).items():
        for k, v in state.items():
            if not isinstance(v, torch.Tensor):
                raise TypeError(f"optimizer state {name}.{k} is not a tensor ({type(v).__name__})")
            flat[f"optim/{name}/{k}"] = v
    return flat


def save_sharded(folder: Path, models: dict[str, nn.Module], optimizer=None) -> None:
    """Every process writes its shards of `models` (and the optimizer state) into `folder`;
    the main process writes the param groups. A collective."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    from rlhfkit.train.checkpoint import save_tree

    _, msd, osd = _states(models, optimizer)
    dcp.save(_tensors(msd, osd), storage_writer=HuggingFaceStorageWriter(str(folder), save_distributed=True))
    if osd is not None and dist.get_rank() == 0:
        save_tree(osd["param_groups"], Path(folder), "param_groups")
    dist.barrier()


def load_sharded(folder: Path, models: dict[str, nn.Module], optimizer=None) -> None:
    """Load `save_sharded`'s folder into sharded `models` (and the optimizer) on every process.
    DCP reads each process's part by offsets, so the process count may differ from the saving run's."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

    from rlhfkit.train.checkpoint import load_tree

    root, msd, osd = _states(models, optimizer)
    dcp.load(_tensors(msd, osd), storage_reader=HuggingFaceStorageReader(str(folder)))  # in place
    if osd is None:
        set_model_state_dict(root, msd)
        return
    osd = {"state": osd["state"], "param_groups": load_tree(Path(folder), "param_groups")}
    set_state_dict(root, optimizer, model_state_dict=msd, optim_state_dict=osd)


def read_sharded(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a `save_sharded` folder, assembled full, in one process without a process
    group: `model/<model>.<param>` and `optim/<model>.<param>/<exp_avg|exp_avg_sq|step>`."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    meta = HuggingFaceStorageReader(str(folder)).read_metadata().state_dict_metadata
    state = {k: torch.empty(m.size, dtype=m.properties.dtype) for k, m in meta.items()}
    dcp.load(state, storage_reader=HuggingFaceStorageReader(str(folder)), no_dist=True)
    return state

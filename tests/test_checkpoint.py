"""Checkpoint state without pickle, atomic folders, deterministic batch order."""

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from rlhfkit.train import checkpoint
from rlhfkit.train.batches import BatchPlan
from rlhfkit.train.checkpoint import (
    COMPLETE,
    CheckpointWriter,
    latest_checkpoint,
    list_checkpoints,
    load_tree,
    rng_state,
    save_tree,
    set_rng_state,
)


def test_optimizer_state_round_trips_exactly(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, betas=(0.8, 0.9))
    for _ in range(2):
        model(torch.randn(4, 3)).sum().backward()
        opt.step()
    save_tree(opt.state_dict(), tmp_path, "optimizer")
    assert not list(tmp_path.glob("*.pt")) and not list(tmp_path.glob("*.bin"))  # no pickle files
    opt2 = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=0.5)
    opt2.load_state_dict(load_tree(tmp_path, "optimizer"))
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for k in a["state"]:
        for name in a["state"][k]:
            assert torch.equal(a["state"][k][name], b["state"][k][name])


def test_rng_state_round_trip(tmp_path):
    save_tree(rng_state(), tmp_path, "rng")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(load_tree(tmp_path, "rng"))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_checkpoint_is_atomic_and_pruned(tmp_path):
    root = tmp_path / "checkpoints"
    with CheckpointWriter(root, 1) as tmp:
        (tmp / "a.json").write_text("{}")
    with pytest.raises(RuntimeError):
        with CheckpointWriter(root, 2) as tmp:
            (tmp / "a.json").write_text("{}")
            raise RuntimeError("crash while saving")
    assert [s for s, _ in list_checkpoints(root)] == [1]  # the crashed save left nothing that looks complete
    (root / ".tmp-step-3-999").mkdir()  # a temp folder from a killed process
    assert latest_checkpoint(root).name == "step-1"
    for step in (2, 3, 4):
        with CheckpointWriter(root, step, keep=2) as tmp:
            (tmp / "a.json").write_text("{}")
    assert [s for s, _ in list_checkpoints(root)] == [3, 4]
    assert not list(root.glob(".tmp-*"))


def test_batch_order_is_a_function_of_seed_and_step():
    plan = BatchPlan(n_examples=10, batch_size=4, micro_batch_size=2, world_size=2)
    assert plan.steps_per_epoch == 2 and plan.accumulation == 1
    first = [plan.global_batch(s, seed=0) for s in range(4)]
    assert first == [plan.global_batch(s, seed=0) for s in range(4)]
    assert first[0] != plan.global_batch(0, seed=1)
    epoch0 = first[0] + first[1]
    assert len(set(epoch0)) == 8  # no example twice within an epoch
    assert plan.shard(first[0], 0) + plan.shard(first[0], 1) == first[0]
    with pytest.raises(ValueError, match="divisible"):
        BatchPlan(10, 3, 1, world_size=2)
    with pytest.raises(ValueError, match="only 2 training examples"):
        BatchPlan(2, 4, 1)


def test_only_folders_with_the_completion_marker_are_checkpoints(tmp_path):
    """The marker is written last, inside the temporary folder, before the rename: a step-N folder
    without it (half-deleted, or copied in part) is not a checkpoint."""
    root = tmp_path / "checkpoints"
    with CheckpointWriter(root, 1) as tmp:
        (tmp / "a.json").write_text("{}")
    assert (root / "step-1" / COMPLETE).is_file()
    (root / "step-7").mkdir()
    (root / "step-7" / "a.json").write_text("{}")
    assert [s for s, _ in list_checkpoints(root)] == [1]


def test_a_kill_while_pruning_never_leaves_a_half_deleted_checkpoint(tmp_path, monkeypatch):
    """Before: pruning deleted step-N in place, so a kill midway left a step-N that had lost files
    but was still listed as complete (and resume loaded it)."""
    root = tmp_path / "checkpoints"
    for step in (1, 2):
        with CheckpointWriter(root, step, keep=2) as tmp:
            (tmp / "weights.json").write_text("{}")
            (tmp / "z-trainer_state.json").write_text("{}")
    real_rmtree = shutil.rmtree

    def killed_midway(path, *a, **k):  # deletes one file, then the process dies
        next(p for p in sorted(Path(path).rglob("*")) if p.is_file()).unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        with CheckpointWriter(root, 3, keep=2) as tmp:  # prunes step-1
            (tmp / "weights.json").write_text("{}")
            (tmp / "z-trainer_state.json").write_text("{}")
    monkeypatch.setattr(checkpoint.shutil, "rmtree", real_rmtree)
    listed = list_checkpoints(root)
    assert [s for s, _ in listed] == [2, 3]
    assert all((p / "weights.json").exists() for _, p in listed)
    with CheckpointWriter(root, 4, keep=2) as tmp:  # the next save clears what the kill left
        (tmp / "weights.json").write_text("{}")
    assert sorted(p.name for p in root.iterdir()) == ["step-3", "step-4"]

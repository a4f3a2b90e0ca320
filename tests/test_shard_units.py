"""The pieces of sharded training (rlhfkit/train/shard.py) in one process: a 1-rank gloo group, so
`fully_shard` wraps for real (DTensor parameters, FSDP hooks, all-gathers of one) and everything
here is exact — the 2-process behaviour is tested in test_shard_parity / test_shard_resume."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.distributed as dist
from conftest import build_tiny_model
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from rlhfkit.config import LoRAConfig, ModelConfig
from rlhfkit.models.loading import load_policy, load_tokenizer, plain_copy, save_hf
from rlhfkit.rollout import SamplingParams, generate
from rlhfkit.train import shard


@pytest.fixture
def mesh():
    """A 1-process group of its own, torn down after the test (the suite's other tests run without one)."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


@pytest.fixture
def own_group():
    """For a sharded TrainSession in this process: the group of one it makes is torn down after."""
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def _lora_policy(folder):
    model = load_policy(ModelConfig(name_or_path=str(folder), lora=LoRAConfig(enabled=True, r=4, alpha=8)))
    torch.manual_seed(3)
    with torch.no_grad():  # B = 0 at the start would make merging a no-op: give the adapters a value
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    return model


def test_units_are_blocks_scalar_heads_and_root(tmp_path, mesh):
    lm = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "m"))
    shard.shard_model(lm, mesh, frozen=False)
    units = {n for n, m in lm.named_modules() if isinstance(m, FSDPModule)}
    assert units == {"", "transformer.h.0", "transformer.h.1"}
    assert all(isinstance(p, DTensor) for p in lm.parameters())
    # the root of a trained model keeps its gathered weights after forward (backward needs them);
    # a frozen model's root frees them like every block
    assert [getattr(m, shard._RESHARD) for m in (lm, lm.transformer.h[0])] == [False, True]
    rm = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m", num_labels=1)
    shard.shard_model(rm, mesh, frozen=True)
    units = {n for n, m in rm.named_modules() if isinstance(m, FSDPModule)}
    assert units == {"", "transformer.h.0", "transformer.h.1", "score"}  # forward_rewards calls score alone
    assert getattr(rm, shard._RESHARD) is True


def test_gathered_generates_what_the_plain_model_generates(tmp_path, mesh):
    folder = build_tiny_model(tmp_path / "m")
    tok = load_tokenizer(ModelConfig(name_or_path=str(folder)))
    model = AutoModelForCausalLM.from_pretrained(folder)
    plain = copy.deepcopy(model)
    shard.shard_model(model, mesh, frozen=False)
    prompts, params = [[5, 6, 7], [8, 9]], SamplingParams(max_new_tokens=6)
    with shard.gathered(model):
        assert not any(isinstance(p, DTensor) for p in model.parameters())  # the full weights, in place
        with shard.gathered(model):  # re-entrant: the inner one does nothing
            pass
        assert not any(isinstance(p, DTensor) for p in model.parameters())
        got = generate(model, tok, prompts, params, generator_seed=11)
    assert all(isinstance(p, DTensor) for p in model.parameters())  # sharded again
    want = generate(plain, tok, prompts, params, generator_seed=11)
    assert [s.response_ids for s in got] == [s.response_ids for s in want]
    with shard.gathered(plain):  # not sharded: nothing to do
        pass


def test_final_folder_from_shards_is_the_merged_plain_model(tmp_path, mesh):
    """A LoRA policy gathered from its shards and written through `plain_copy` gives the same folder
    as the unsharded model's `save_hf`: merged by peft's own code, the model's own class, loadable in
    plain transformers (bit-identical: the same tensors merged by the same operations)."""
    folder = build_tiny_model(tmp_path / "m")
    model = _lora_policy(folder)
    save_hf(copy.deepcopy(model), None, tmp_path / "plain")
    shard.shard_model(model, mesh, frozen=False)
    twin = plain_copy(model, shard.full_state_dict(model))
    save_hf(twin, None, tmp_path / "sharded")
    assert json.loads((tmp_path / "sharded" / "config.json").read_text())["architectures"] == ["GPT2LMHeadModel"]
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "plain").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "sharded").state_dict()
    base = AutoModelForCausalLM.from_pretrained(folder).state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not torch.equal(a["transformer.h.0.attn.c_attn.weight"], base["transformer.h.0.attn.c_attn.weight"])
    assert (tmp_path / "sharded" / "adapter" / "adapter_model.safetensors").exists()


def test_vllm_weights_of_a_sharded_lora_policy_are_the_merged_full_weights(tmp_path, mesh):
    """What `VLLMBackend.sync_weights` loads into the engine (`rollout.hf_weights`): from a sharded
    policy, the full weights gathered (plain tensors, HF names), LoRA merged: those of the same
    policy unsharded, bit for bit."""
    from rlhfkit.rollout import hf_weights

    model = _lora_policy(build_tiny_model(tmp_path / "m"))
    want = {k: v.clone() for k, v in hf_weights(copy.deepcopy(model))}
    shard.shard_model(model, mesh, frozen=False)
    got = dict(hf_weights(model))
    assert got.keys() == want.keys()
    for k, v in got.items():
        assert not isinstance(v, DTensor) and torch.equal(v, want[k]), k


def test_sharded_checkpoint_round_trip(tmp_path, mesh):
    """Weights and AdamW state after a step survive save_sharded -> load_sharded into a fresh sharded
    model exactly; read_sharded assembles the same tensors without a process group's help; tied
    weights (GPT-2's lm_head = wte) are stored once and both names come back."""
    folder = build_tiny_model(tmp_path / "m")

    def build():
        m = AutoModelForCausalLM.from_pretrained(folder)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
        shard.shard_model(m, mesh, frozen=False)
        for g in opt.param_groups:  # what ShardedAccelerator.prepare does
            g["params"] = list(m.parameters())
        return m, opt

    model, opt = build()
    ids = torch.randint(3, 30, (2, 7))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    opt.param_groups[0]["lr"] = 5e-3  # as a scheduler would
    shard.save_sharded(tmp_path / "ck", {"policy": model}, opt)
    fresh, fresh_opt = build()
    shard.load_sharded(tmp_path / "ck", {"policy": fresh}, fresh_opt)
    for (n, p), q in zip(model.named_parameters(), fresh.parameters(), strict=True):
        assert torch.equal(p.full_tensor(), q.full_tensor()), n
    assert fresh_opt.param_groups[0]["lr"] == 5e-3
    for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            a, b = (t.full_tensor() if isinstance(t, DTensor) else t for t in (opt.state[p][key], fresh_opt.state[q][key]))
            assert torch.equal(a, b), key
    read = shard.read_sharded(tmp_path / "ck")
    full = shard.full_state_dict(model)
    assert "model/policy.lm_head.weight" not in read  # tied: stored once
    for k, v in full.items():
        if k != "lm_head.weight":
            assert torch.equal(read[f"model/policy.{k}"], v), k
    assert torch.equal(read["optim/policy.transformer.wte.weight/exp_avg"],
                       opt.state[model.transformer.wte.weight]["exp_avg"].full_tensor())
    # weights alone (keep_best's best/): into a model that never stepped
    shard.save_sharded(tmp_path / "best", {"model": model})
    other, _ = build()
    shard.load_sharded(tmp_path / "best", {"model": other})
    for (n, p), q in zip(model.named_parameters(), other.parameters(), strict=True):
        assert torch.equal(p.full_tensor(), q.full_tensor()), n


def test_an_accelerate_fsdp_launch_switches_rlhfkit_sharding_on(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert shard.launcher_asks_fsdp()
    assert shard.launcher_asks_fsdp() is False  # cleared: accelerate's own FSDP path stays off
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    assert shard.launcher_asks_fsdp() is False


def test_a_sharded_checkpoint_does_not_resume_unsharded(tmp_path, tiny_model):
    """A checkpoint written sharded, resumed with train.sharding=none, is refused with one line (its
    weights are DCP shards, not HF folders), not loaded as something else. (The config check would
    catch a changed train.sharding first; this is the layout on disk, e.g. a hand-edited config.)"""
    from rlhfkit.recipes.sft import SFTConfig
    from rlhfkit.train.checkpoint import COMPLETE
    from rlhfkit.train.session import ResumeLayoutError, TrainSession

    cfg = SFTConfig(model=ModelConfig(name_or_path=str(tiny_model)))
    TrainSession(cfg, tmp_path / "run", "sft").prepare()
    ckpt = tmp_path / "run" / "checkpoints" / "step-1"
    (ckpt / shard.SHARDED_DIR).mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text(json.dumps({"step": 1}))
    (ckpt / COMPLETE).write_text("{}")
    s = TrainSession(cfg, tmp_path / "run", "sft", resume=True)
    assert not s.sharded
    with pytest.raises(ResumeLayoutError, match="checkpoint is sharded"):
        s.resume({})


def test_one_process_shards_and_resumes_exactly(tmp_path, demos, tiny_model, own_group):
    """train.sharding=fsdp in one process: a group of one, the same code path and checkpoint layout
    as N processes. A LoRA SFT run killed right after its step-3 checkpoint and resumed ends with the
    weights of the uninterrupted run, bit for bit (one process, the same operations in the same
    order; only what the sharded checkpoint holds crosses the interruption)."""
    from conftest import crash_at_save

    from rlhfkit.config import load_config
    from rlhfkit.recipes import sft

    def cfg():
        return load_config(sft.SFTConfig, None, [
            f"model.name_or_path={tiny_model}", f"data.train={demos[0]}", f"data.eval={demos[1]}", "train.batch_size=8",
            "train.micro_batch_size=4", "train.lr=1e-2", "train.max_steps=6", "log.save_every=3", "log.eval_every=3",
            "log.progress=false", "train.sharding=fsdp", "model.lora.enabled=true", "model.lora.r=4", "model.lora.alpha=8"])

    full = sft.run(cfg(), tmp_path / "full")
    with crash_at_save(3):
        sft.run(cfg(), tmp_path / "cut")
    assert (tmp_path / "cut" / "checkpoints" / "step-3" / shard.SHARDED_DIR).is_dir()
    resumed = sft.run(cfg(), tmp_path / "cut", resume=True)
    a = AutoModelForCausalLM.from_pretrained(full).state_dict()
    b = AutoModelForCausalLM.from_pretrained(resumed).state_dict()
    base = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not torch.equal(a["transformer.h.0.attn.c_attn.weight"], base["transformer.h.0.attn.c_attn.weight"])
    rows = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]


def test_keep_best_snapshot_under_sharding(tmp_path, tiny_model, own_group):
    """best/ of a sharded run holds shards; restore_best loads them back. On resume, a snapshot asked
    for before `prepare` (Watch re-saves the resumed step when it is the best) waits until the
    checkpoint's weights are loaded, so it holds them and not the freshly loaded start weights."""
    from rlhfkit.config import load_config
    from rlhfkit.recipes.sft import SFTConfig
    from rlhfkit.train.session import TrainSession

    cfg = load_config(SFTConfig, None, [f"model.name_or_path={tiny_model}", "train.sharding=fsdp"])

    def model_and_optimizer():
        m = AutoModelForCausalLM.from_pretrained(tiny_model)
        return m, torch.optim.AdamW(m.parameters(), lr=1e-2)

    s = TrainSession(cfg, tmp_path / "run", "sft")
    model, opt = model_and_optimizer()
    s.resume({"policy": model}, opt)
    model, opt = s.accelerator.prepare(model, opt)
    ids = torch.randint(3, 30, (2, 7))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    trained = {k: v.clone() for k, v in shard.full_state_dict(model).items()}
    s.save_best(1, model, None, "gold/mean", 0.5)
    s.save(1, {"policy": model}, opt)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # training went on and got worse
    assert s.restore_best(model) == {"step": 1, "metric": "gold/mean", "value": 0.5}
    for k, v in shard.full_state_dict(model).items():
        assert torch.equal(v, trained[k]), k

    s2 = TrainSession(cfg, tmp_path / "run", "sft", resume=True)
    fresh, fresh_opt = model_and_optimizer()
    assert s2.resume({"policy": fresh}, fresh_opt)[0] == 1
    s2.save_best(1, fresh, None, "gold/mean", 0.5)  # before prepare: the weights are not loaded yet
    s2.accelerator.prepare(fresh, fresh_opt)
    third, _ = model_and_optimizer()
    s2.accelerator.prepare_model(third)
    assert s2.restore_best(third)["step"] == 1
    for k, v in shard.full_state_dict(third).items():
        assert torch.equal(v, trained[k]), k

"""DPO's reference cache (ref_logps.safetensors) is reused only when nothing that changes a
reference log-prob changed: after a failed packed run on a model that leaks across packed
sequences, a rerun with data.packing=false must recompute, not reuse the leaky table."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from accelerate import PartialState
from conftest import build_tiny_model
from test_dpo_recipe import random_comparisons

from rlhfkit.config import load_config
from rlhfkit.models.loading import load_policy, load_tokenizer
from rlhfkit.recipes import dpo


@pytest.fixture
def setup(tmp_path):
    model = build_tiny_model(tmp_path / "model")
    data = tmp_path / "c.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in random_comparisons(6, seed=0)))
    return model, data, SimpleNamespace(run=SimpleNamespace(path=tmp_path), is_main=True, accelerator=PartialState())


def _cached(session, model, data, *sets):
    """The reference tables through `cached_reference_logps` as `dpo.run` calls it; returns
    (tables, how many times the reference had to be loaded: 1 = computed, 0 = reused)."""
    cfg = load_config(dpo.DPOConfig, None, [f"model.name_or_path={model}", f"data.train={data}", *sets])
    tok = load_tokenizer(cfg.model)
    pairs = dpo.encode_pairs(tok, cfg.data.train, cfg.data.pairs, cfg.data.max_length)
    loads = []

    def load_ref():
        loads.append(1)
        return load_policy(cfg.model)

    capacity = cfg.data.max_length if cfg.data.packing else None
    tables = dpo.cached_reference_logps(session, load_ref, {"train": pairs, "eval": []},
                                        dpo.reference_key(cfg, tok, str(model)), tok.pad_token_id, 8, capacity)
    return tables, len(loads)


def test_unchanged_config_reuses_the_cache(setup):
    model, data, session = setup
    first, loads = _cached(session, model, data)
    assert loads == 1 and (session.run.path / "ref_logps.safetensors").exists()
    again, loads = _cached(session, model, data)
    assert loads == 0
    assert (again["train"] == first["train"]).all()


@pytest.mark.parametrize("change", ["data.packing=false", "model.dtype=bfloat16", "data.max_length=16",
                                    "model.chat_template='{{ messages }}'"])
def test_a_change_that_moves_reference_logps_recomputes(setup, change):
    model, data, session = setup
    _cached(session, model, data)
    _, loads = _cached(session, model, data, change)
    assert loads == 1, f"{change}: the cached table was reused"
    _, loads = _cached(session, model, data, change)
    assert loads == 0  # and the new table is cached in turn


def test_a_retrained_reference_folder_recomputes(setup):
    """Same path, new weights (a re-run SFT stage): the folder's weight files changed."""
    model, data, session = setup
    _cached(session, model, data)
    build_tiny_model(model, seed=1)
    _, loads = _cached(session, model, data)
    assert loads == 1

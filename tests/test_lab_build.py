"""Lab build: layout, Hugging Face loadability, atomicity and reproducibility (tiny size)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

import rlhfkit.lab as lab
from rlhfkit.data import read_jsonl
from rlhfkit.lab import build, corpus, grammar, layout, spec


@pytest.fixture(scope="module")
def tiny_lab(tmp_path_factory) -> Path:
    return lab.build_lab(tmp_path_factory.mktemp("labs") / "lab", seed=0, size="tiny", progress=False)


@pytest.fixture
def build_calls(monkeypatch) -> list[tuple]:
    """Records each (path, seed, size) `ensure_lab` builds, and builds it for real."""
    calls, real = [], build.build_lab

    def spy(path, seed, size):
        calls.append((Path(path), seed, size))
        return real(path, seed=seed, size=size, progress=False)

    monkeypatch.setattr(build, "build_lab", spy)
    return calls


def test_layout_and_manifest(tiny_lab):
    manifest = json.loads((tiny_lab / "manifest.json").read_text())
    assert manifest["key"] == lab.lab_key()
    assert (manifest["seed"], manifest["size"]) == (0, "tiny")
    assert manifest["build_seconds"] > 0
    metrics = manifest["metrics"]
    assert set(metrics) >= {"base_perplexity", "base_samples", "sft_demonstrations"}
    assert 0.0 <= metrics["base_samples"]["well_formed_share"] <= 1.0
    assert set(metrics["base_samples"]["gold"]) >= {"mean", "std", "q25", "median", "q75"}
    for name in layout.DATA_FILES:
        assert lab.data_file(name, tiny_lab).is_file()
        assert manifest["records"][name] == len(read_jsonl(lab.data_file(name, tiny_lab)))
    assert lab.is_built(tiny_lab) and not lab.is_built(tiny_lab, "full")
    assert not list(tiny_lab.parent.glob(".*tmp*"))  # no temporary folder left behind


def test_data_records(tiny_lab):
    for row in read_jsonl(lab.data_file("pretrain_eval", tiny_lab)):
        assert set(row) == {"text"} and grammar.well_formed_fraction(row["text"]) == 1.0
    for name in ("sft_train", "sft_eval"):
        for row in read_jsonl(lab.data_file(name, tiny_lab)):
            assert set(row) == {"prompt", "response"} and row["response"].startswith(" ")
    train = [r["prompt"] for r in read_jsonl(lab.data_file("prompts_train", tiny_lab))]
    held_out = [r["prompt"] for r in read_jsonl(lab.data_file("prompts_eval", tiny_lab))]
    assert train and held_out and not set(train) & set(held_out)
    sft_eval = [r["prompt"] for r in read_jsonl(lab.data_file("sft_eval", tiny_lab))]
    sft_train = [r["prompt"] for r in read_jsonl(lab.data_file("sft_train", tiny_lab))]
    assert all(map(corpus.is_eval_prompt, sft_eval + held_out))  # held-out openings only
    assert not any(map(corpus.is_eval_prompt, sft_train + train))


def test_base_model_loads_in_plain_transformers(tiny_lab):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = lab.base_model_dir(tiny_lab)
    assert (folder / "model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.pad_token == "<|pad|>"
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    ids = tokenizer("this movie", return_tensors="pt")["input_ids"]
    out = model.generate(ids, do_sample=True, max_new_tokens=5, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[0] == 1 and torch.equal(out[:, : ids.shape[1]], ids)


def test_partial_folder_is_not_a_lab(tmp_path, monkeypatch):
    """A folder without a manifest (a crashed build, or a stray temporary folder) is
    rebuilt by ensure_lab, never used."""
    partial = tmp_path / "lab"
    (partial / "base").mkdir(parents=True)
    (partial / "base" / "config.json").write_text("{}")
    stray_tmp = tmp_path / ".lab.tmp-123-abcdef12"
    (stray_tmp / "data").mkdir(parents=True)
    assert not lab.is_built(partial) and not lab.is_built(stray_tmp)

    calls = []
    monkeypatch.setattr(build, "build_lab", lambda path, seed, size: calls.append(path) or path)
    assert lab.ensure_lab(partial, size="tiny") == partial
    assert calls == [partial]


def test_stale_version_is_rebuilt_and_current_is_reused(tiny_lab, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(build, "build_lab", lambda path, seed, size: calls.append(size) or path)
    assert lab.ensure_lab(tiny_lab, size="tiny") == tiny_lab
    assert calls == []  # cached
    lab.ensure_lab(tiny_lab, size="full")
    assert calls == ["full"]  # a tiny lab does not serve a full request

    stale = tmp_path / "stale"
    (stale / "base").mkdir(parents=True)
    (stale / "base" / "config.json").write_text("{}")
    (stale / "manifest.json").write_text(json.dumps({"key": "0" * 12, "size": "full"}))
    lab.ensure_lab(stale, size="tiny")
    assert calls == ["full", "tiny"]


def test_crashed_build_leaves_nothing(tmp_path, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("simulated crash during pretraining")

    monkeypatch.setattr(build, "pretrain", explode)
    with pytest.raises(RuntimeError):
        lab.build_lab(tmp_path / "lab", size="tiny", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_rebuild_replaces_atomically_and_reproduces_data(tiny_lab, tmp_path):
    """Same seed, same data; a second build replaces the first in one rename.
    (Other seeds giving other data is checked on the corpus in test_lab_grammar.)"""
    target = tmp_path / "lab"
    (target / "data").mkdir(parents=True)
    (target / "data" / "junk.txt").write_text("from an old build")
    lab.build_lab(target, seed=0, size="tiny", progress=False)
    assert not (target / "data" / "junk.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lab"]
    for name in layout.DATA_FILES:
        assert lab.data_file(name, target).read_text() == lab.data_file(name, tiny_lab).read_text()


def test_default_lab_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("RLHFKIT_LAB_DIR", str(tmp_path / "mine"))
    assert lab.default_lab_dir() == tmp_path / "mine"
    monkeypatch.delenv("RLHFKIT_LAB_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert lab.default_lab_dir() == tmp_path / "cache" / "rlhfkit" / f"lab-{lab.lab_key()}"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert lab.default_lab_dir() == Path.home() / ".cache" / "rlhfkit" / f"lab-{lab.lab_key()}"
    assert len(lab.lab_key()) == 12 and int(lab.lab_key(), 16) >= 0


def test_unknown_names_fail_fast(tmp_path):
    with pytest.raises(KeyError):
        lab.data_file("sft-train")  # a typo must not start a build
    with pytest.raises(ValueError):
        lab.build_lab(tmp_path / "lab", size="huge")
    with pytest.raises(ValueError):
        lab.ensure_lab(tmp_path / "lab", size="huge")


def test_concurrent_ensure_lab_builds_once(tmp_path, monkeypatch):
    """Two threads asking for the same missing lab: one builds, the other waits and reuses."""
    import threading
    import time

    target, builds = tmp_path / "lab", []

    def slow_fake_build(path, seed, size):
        builds.append(path)
        time.sleep(0.3)
        (path / "base").mkdir(parents=True)
        (path / "base" / "config.json").write_text("{}")
        (path / "manifest.json").write_text(json.dumps({"key": lab.lab_key(), "size": size}))
        return path

    monkeypatch.setattr(build, "build_lab", slow_fake_build)
    threads = [threading.Thread(target=lab.ensure_lab, args=(target, "tiny")) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert builds == [target]


def test_changed_build_config_is_rebuilt_and_unchanged_is_reused(tiny_lab, tmp_path, monkeypatch, build_calls):
    """The key covers the sizes' values: a lab built before a config change is stale, rebuilt (for
    real, under the lock) with the new config and its own seed, and then reused."""
    copy = tmp_path / "lab"
    shutil.copytree(tiny_lab, copy)
    assert lab.ensure_lab(copy, size="tiny") == copy and build_calls == []  # unchanged key: reused
    old_key = lab.lab_key()
    tiny = spec.SIZES["tiny"]
    monkeypatch.setitem(spec.SIZES, "tiny", replace(tiny, pretrain=replace(tiny.pretrain, steps=tiny.pretrain.steps + 1)))
    assert lab.lab_key() != old_key and not lab.is_built(copy)
    assert lab.ensure_lab(copy, size="tiny") == copy
    assert build_calls == [(copy, 0, "tiny")]
    manifest = lab.read_manifest(copy)
    assert manifest["key"] == lab.lab_key() and manifest["model"]["steps"] == tiny.pretrain.steps + 1
    lab.ensure_lab(copy, size="tiny")
    assert len(build_calls) == 1  # the rebuilt lab is current: reused


def test_changed_source_file_changes_the_key(tiny_lab, tmp_path, monkeypatch):
    """The key covers the bytes of every KEY_SOURCES file: one byte more in grammar.py (here in a
    copy of the package's sources) makes every lab built before stale."""
    real, sources = spec.SOURCE_DIR, tmp_path / "src"
    sources.mkdir()
    for name in spec.KEY_SOURCES:
        shutil.copy(real / name, sources / name)
    key = lab.lab_key()
    monkeypatch.setattr(spec, "SOURCE_DIR", sources)
    assert lab.lab_key() == key and lab.is_built(tiny_lab)
    for name in spec.KEY_SOURCES:
        with open(sources / name, "a") as f:
            f.write("\n")
        assert lab.lab_key() != key and not lab.is_built(tiny_lab), name
        shutil.copy(real / name, sources / name)
    assert lab.lab_key() == key


def test_stale_lab_is_rebuilt_with_its_own_seed(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(build, "build_lab", lambda path, seed, size: calls.append((seed, size)) or path)
    stale = tmp_path / "lab"
    (stale / "base").mkdir(parents=True)
    (stale / "base" / "config.json").write_text("{}")
    (stale / "manifest.json").write_text(json.dumps({"version": 1, "seed": 3, "size": "full"}))  # LAB_VERSION era
    lab.ensure_lab(stale, size="tiny")
    assert calls == [(3, "tiny")]

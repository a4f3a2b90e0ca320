"""Loading a user's model: local path vs Hub id, one-line errors at once (no Hub retries),
the Hub cache when offline, safetensors only, revision and trust_remote_code from the config."""

from __future__ import annotations

import shutil
import time

import pytest
import torch
from conftest import build_tiny_model, random_demos, write_jsonl
from huggingface_hub import constants

from rlhfkit import cli
from rlhfkit.config import ModelConfig
from rlhfkit.models import loading
from rlhfkit.models.loading import ModelLoadError, is_local_path, load_policy, load_tokenizer

# A failure must come back in well under the ~50 s of huggingface_hub's five retries; 5 s leaves
# room for a loaded 2-core machine (the failing path itself does no model work at all).
FAST_S = 5.0


@pytest.mark.parametrize("name,local", [
    ("/abs/model", True), ("./model", True), ("../model", True), ("~/model", True), ("runs/sft/final", True),
    ("model/", True), ("C:\\models\\x", True), ("C:/models/x", True), ("runs\\x", True),
    ("gpt2", False), ("org/name", False), ("runs/no-such-model", False), ("EleutherAI/pythia-410m", False),
])
def test_local_path_or_hub_id(name, local):
    assert is_local_path(name) is local


def test_an_existing_folder_is_local_even_when_it_looks_like_a_hub_id(tmp_path, monkeypatch):
    (tmp_path / "org" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert is_local_path("org/name")
    assert loading.resolve_model_path("org/name") == "org/name"


@pytest.fixture
def sft_args(tmp_path):
    data = write_jsonl(tmp_path / "demos.jsonl", random_demos(4))
    return ["sft", "--out", str(tmp_path / "run"), "--set", f"data.train={data}", "--set", "data.eval=null",
            "--set", "train.max_steps=1", "--set", "train.batch_size=4", "--set", "train.micro_batch_size=4",
            "--set", "log.progress=false"]


@pytest.fixture
def no_hub(monkeypatch):
    """The Hub endpoint is a closed local port: connecting fails at once, with no network used.
    Proxies are unset so the probe asks the endpoint itself."""
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(loading, "_REACHABLE", {})


def _fails_in_one_line(argv, capsys) -> str:
    capsys.readouterr()  # drop what the test's own setup printed
    start = time.perf_counter()
    code = cli.main(argv)
    elapsed = time.perf_counter() - start
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert elapsed < FAST_S, elapsed
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("name", ["/no/such/model", "./no-such-model", "~/no-such-model-rlhfkit", "runs/a/b", "nope/"])
def test_missing_local_folder_is_one_line_at_once_without_the_hub(name, sft_args, capsys, monkeypatch):
    monkeypatch.setattr(loading, "hub_reachable", lambda: pytest.fail("a local path must not reach for the Hub"))
    err = _fails_in_one_line([*sft_args, "--set", f"model.name_or_path={name}"], capsys)
    assert f"model '{name}'" in err and "does not exist" in err
    with pytest.raises(ModelLoadError):  # a UserError: the CLI prints it as one line
        loading.resolve_model_path(name)


@pytest.mark.parametrize("name", ["runs/no-such-model", "org/name"])
def test_hub_id_with_the_hub_unreachable_is_one_line_at_once(name, sft_args, capsys, no_hub):
    err = _fails_in_one_line([*sft_args, "--set", f"model.name_or_path={name}"], capsys)
    assert f"model '{name}'" in err and "not a local folder" in err and "unreachable" in err


def test_hub_id_with_hf_hub_offline_is_one_line_at_once(sft_args, capsys, no_hub, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(loading, "_can_connect", lambda *a: pytest.fail("offline mode must not probe the network"))
    err = _fails_in_one_line([*sft_args, "--set", "model.name_or_path=org/name"], capsys)
    assert "model 'org/name'" in err and "HF_HUB_OFFLINE" in err


def test_invalid_hub_id_and_unknown_lab_model_are_one_line(sft_args, capsys, no_hub):
    assert "not a Hub id" in _fails_in_one_line([*sft_args, "--set", "model.name_or_path=no such model"], capsys)
    assert "unknown lab model" in _fails_in_one_line([*sft_args, "--set", "model.name_or_path=lab:nope"], capsys)


def test_cached_hub_model_loads_when_the_hub_is_unreachable(tmp_path, no_hub, monkeypatch):
    """A Hub id in the local HF cache (models--org--tiny/snapshots/<commit>/) loads fast with the
    Hub down, instead of after huggingface_hub's retries."""
    from rlhfkit.models.reward import build_reward_model

    src = build_tiny_model(tmp_path / "src")
    commit = "0" * 40
    repo = tmp_path / "hub" / "models--org--tiny"
    shutil.copytree(src, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    cfg = ModelConfig(name_or_path="org/tiny")
    start = time.perf_counter()
    tok, model = load_tokenizer(cfg), load_policy(cfg)
    rm = build_reward_model(cfg, tok.pad_token_id)
    assert time.perf_counter() - start < FAST_S
    assert model.config.n_layer == 2 and rm.config.num_labels == 1


def test_pickle_weights_need_allow_pickle_weights(tmp_path, sft_args, capsys):
    """A folder with only pytorch_model.bin: refused in one line naming the switch; loaded with it."""
    folder = build_tiny_model(tmp_path / "m")
    state = load_policy(ModelConfig(name_or_path=str(folder))).state_dict()
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")  # the legacy format under test
    err = _fails_in_one_line([*sft_args, "--set", f"model.name_or_path={folder}"], capsys)
    assert "allow_pickle_weights" in err
    model = load_policy(ModelConfig(name_or_path=str(folder), allow_pickle_weights=True))
    torch.testing.assert_close(model.state_dict()["transformer.wte.weight"], state["transformer.wte.weight"])


def test_every_loader_takes_revision_trust_remote_code_and_safetensors_from_the_config(tiny_model, monkeypatch):
    """Spy on transformers' from_pretrained: the configured model is loaded with the config's
    revision and trust_remote_code (and weights with use_safetensors=True) by every loader:
    tokenizer, policy, reference, reward model and critic."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from rlhfkit.models.reward import build_reward_model
    from rlhfkit.models.value import load_value_model

    calls = []
    for cls in (AutoTokenizer, AutoModelForCausalLM, AutoModelForSequenceClassification):
        original = cls.from_pretrained

        def spy(path, *a, _original=original, _cls=cls, **kw):
            calls.append((_cls.__name__, dict(kw)))
            kw["revision"] = None  # a local folder has no revisions to resolve
            return _original(path, *a, **kw)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    cfg = ModelConfig(name_or_path=str(tiny_model), revision="v1.0", trust_remote_code=True)
    tok = load_tokenizer(cfg)
    policy = load_policy(cfg)
    loading.load_reference(cfg, policy)
    build_reward_model(cfg, tok.pad_token_id)
    load_value_model("policy", cfg)
    assert [c for c, _ in calls] == ["AutoTokenizer", "AutoModelForCausalLM", "AutoModelForCausalLM",
                                     "AutoModelForSequenceClassification", "AutoModelForSequenceClassification"]
    for name, kw in calls:
        assert kw["revision"] == "v1.0" and kw["trust_remote_code"] is True, name
        if name != "AutoTokenizer":
            assert kw["use_safetensors"] is True, name

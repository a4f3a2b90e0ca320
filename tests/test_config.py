"""Config resolution: defaults < YAML < --set; unknown keys and wrong types are clear errors."""

import pytest
import yaml

from rlhfkit.config import ConfigError, load_config, parse_override, to_yaml
from rlhfkit.recipes.sft import SFTConfig


def test_defaults_yaml_and_overrides_resolve_in_order(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 0.001\n  batch_size: 8\nmodel:\n  name_or_path: gpt2\n")
    cfg = load_config(SFTConfig, f, ["train.lr=3e-4", "data.packing=true"])
    assert cfg.train.lr == pytest.approx(3e-4)  # --set beats the file
    assert cfg.train.batch_size == 8  # file beats the default
    assert cfg.model.name_or_path == "gpt2"
    assert cfg.data.packing is True
    assert cfg.train.micro_batch_size == 16  # default untouched


def test_unknown_key_names_it_and_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"unknown config key 'train.lrr'.*did you mean 'train.lr'"):
        load_config(SFTConfig, None, ["train.lrr=0.1"])
    with pytest.raises(ConfigError, match=r"unknown config key 'trian'.*did you mean 'train'"):
        load_config(SFTConfig, None, ["trian.lr=0.1"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.batch_size=abc", r"'train.batch_size': expected int, got 'abc'"),
        ("train.batch_size=2.5", r"'train.batch_size': expected int"),
        ("train.lr=fast", r"'train.lr': expected float"),
        ("data.packing=3", r"'data.packing': expected bool"),
        ("train.schedule=exp", r"'train.schedule': expected one of 'constant', 'linear', 'cosine'"),
        ("train=3", r"'train' is a section"),
    ],
)
def test_wrong_type_names_key_and_expected_type(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(SFTConfig, None, [override])


def test_bad_yaml_file_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(SFTConfig, bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(SFTConfig, tmp_path / "nope.yaml")


def test_print_config_round_trips_and_documents_every_field(tmp_path):
    cfg = load_config(SFTConfig, None, ["train.lr=0.01"])
    text = to_yaml(cfg)
    assert "# peak learning rate" in text
    again = tmp_path / "again.yaml"
    again.write_text(text)
    assert load_config(SFTConfig, again) == cfg
    assert yaml.safe_load(text)["train"]["lr"] == 0.01


def test_parse_override_reads_values_as_yaml():
    assert parse_override("a.b=3") == ("a.b", 3)
    assert parse_override("a=1e-5") == ("a", 1e-5)
    assert parse_override("a=[1, 2]") == ("a", [1, 2])
    assert parse_override("a=null") == ("a", None)
    with pytest.raises(ConfigError):
        parse_override("novalue")


def test_optional_field_accepts_null_and_str():
    cfg = load_config(SFTConfig, None, ["data.eval=null"])
    assert cfg.data.eval is None
    cfg = load_config(SFTConfig, None, ["data.eval=x.jsonl"])
    assert cfg.data.eval == "x.jsonl"


def test_cli_print_config(capsys):
    from rlhfkit.cli import main

    assert main(["sft", "--print-config", "--set", "train.lr=0.5"]) == 0
    out = capsys.readouterr().out
    assert yaml.safe_load(out)["train"]["lr"] == 0.5


def test_cli_config_error_is_reported_not_raised(capsys):
    from rlhfkit.cli import main

    assert main(["sft", "--print-config", "--set", "train.lrr=0.5"]) == 2
    assert "did you mean 'train.lr'" in capsys.readouterr().err


def test_print_config_of_a_list_of_sections_round_trips(tmp_path, capsys):
    """`rlhfkit pipeline --print-config` printed a list of StageConfig dataclasses, which YAML
    cannot represent (RepresenterError); it prints them as mappings and reads back equal."""
    from rlhfkit.cli import main
    from rlhfkit.pipeline.demo import demo_config_path
    from rlhfkit.pipeline.stages import PipelineConfig

    assert main(["pipeline", "--print-config"]) == 0
    text = capsys.readouterr().out
    assert "# stages in order\nstages:\n- name: sft\n" in text
    again = tmp_path / "pipeline.yaml"
    again.write_text(text)
    assert load_config(PipelineConfig, again) == load_config(PipelineConfig, demo_config_path())

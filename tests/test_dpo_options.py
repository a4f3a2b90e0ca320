"""DPO-family losses declare the options they read; a config that sets any other loss option away
from its default is a one-line config error naming the option and the loss.

The expected table below is written out by hand (not read from the registry), so a registry that
declared every option for every loss, or none, fails here."""

from __future__ import annotations

import inspect

import pytest

from rlhfkit.cli import main
from rlhfkit.config import ConfigError, load_config
from rlhfkit.losses.dpo import DPO_LOSSES, REFERENCE_FREE
from rlhfkit.recipes import dpo, orpo

READS = {
    "sigmoid": {"beta", "ref_model"},
    "cdpo": {"beta", "label_smoothing", "ref_model"},
    "ipo": {"beta", "ref_model"},
    "hinge": {"beta", "ref_model"},
    "simpo": {"beta", "simpo_gamma", "ref_model"},  # ref_model: kl/mean of the sampling evaluation
    "orpo": {"orpo_lambda"},  # no reference model at all
}
# A valid value away from each option's default (defaults: beta 0.1, label_smoothing 0, simpo_gamma
# 0.5, orpo_lambda 0.1, ref_model null).
SET = {"beta": "0.2", "label_smoothing": "0.1", "simpo_gamma": "1.0", "orpo_lambda": "0.5", "ref_model": "some/reference"}
FOREIGN = [(loss, key) for loss, reads in READS.items() for key in SET if key not in reads]


def _cfg(cls, *overrides: str):
    return load_config(cls, None, overrides)


def test_the_registry_declares_what_each_loss_reads():
    assert set(dpo.OBJECTIVES) == set(READS)
    assert {k: set(v.options) for k, v in dpo.OBJECTIVES.items()} == READS
    assert set(dpo.LOSS_OPTIONS) == set(SET)
    assert REFERENCE_FREE == {"simpo"}


@pytest.mark.parametrize("name", sorted(DPO_LOSSES))
def test_each_loss_function_takes_exactly_its_declared_options(name):
    """No `**_` swallowing: the keyword-only parameters are the declared options (plus the token
    counts for a length-normalised loss), so passing anything else is a TypeError."""
    loss = DPO_LOSSES[name]
    params = inspect.signature(loss.fn).parameters.values()
    assert not any(p.kind is p.VAR_KEYWORD for p in params)
    keyword = {p.name for p in params if p.kind is p.KEYWORD_ONLY}
    assert keyword == set(loss.options) | ({"chosen_lengths", "rejected_lengths"} if loss.lengths else set())


@pytest.mark.parametrize("loss, key", FOREIGN)
def test_a_foreign_option_is_a_config_error(tmp_path, loss, key):
    cfg = _cfg(dpo.DPOConfig, f"loss_type={loss}", f"{key}={SET[key]}")
    with pytest.raises(ConfigError, match=rf"'{key}' is set .* loss_type '{loss}' does not use it"):
        dpo.run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # rejected before the run folder is touched


@pytest.mark.parametrize("key", [k for k in SET if k not in READS["orpo"]])
def test_orpo_defaults_reject_dpo_options(key):
    with pytest.raises(ConfigError, match=rf"'{key}' is set .* loss_type 'orpo'"):
        dpo.check_options(_cfg(orpo.ORPOConfig, f"{key}={SET[key]}"))


@pytest.mark.parametrize("loss", sorted(READS))
def test_defaults_and_own_options_are_accepted(loss):
    dpo.check_options(_cfg(dpo.DPOConfig, f"loss_type={loss}"))
    dpo.check_options(_cfg(dpo.DPOConfig, f"loss_type={loss}", *(f"{k}={SET[k]}" for k in READS[loss])))
    # Set explicitly to its default, a foreign option is not "set": only a changed value counts.
    dpo.check_options(_cfg(dpo.DPOConfig, f"loss_type={loss}", "simpo_gamma=0.5", "label_smoothing=0.0"))


def test_orpo_verb_with_a_dpo_loss_reads_beta():
    dpo.check_options(_cfg(orpo.ORPOConfig, "loss_type=sigmoid", "beta=0.2"))
    dpo.check_options(_cfg(orpo.ORPOConfig))


@pytest.mark.parametrize("verb, sets, words", [
    ("dpo", ["loss_type=ipo", "simpo_gamma=0.3"], ("'simpo_gamma'", "'ipo'")),
    ("orpo", ["beta=0.2"], ("'beta'", "'orpo'")),
])
def test_cli_says_it_in_one_line(tmp_path, capsys, verb, sets, words):
    out = tmp_path / "run"
    rc = main([verb, "--out", str(out), *(x for s in sets for x in ("--set", s))])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    line = err.rstrip("\n").split("\n")[-1]
    assert line.startswith(f"rlhfkit {verb}: error: ") and all(w in line for w in words), line
    assert not out.exists()


@pytest.mark.parametrize("verb", ["dpo", "orpo"])
def test_print_config_explains_every_field_and_every_loss(capsys, verb):
    assert main([verb, "--print-config"]) == 0
    lines = capsys.readouterr().out.split("\n")
    fields = [i for i, x in enumerate(lines) if x and not x.startswith(("#", " ")) and ":" in x]
    assert {lines[i].split(":")[0] for i in fields} >= {"loss_type", *SET}
    assert all(lines[i - 1].startswith("# ") for i in fields)  # each top-level field has its help above it
    help_line = lines[next(i for i in fields if lines[i].startswith("loss_type:")) - 1]
    assert all(name in help_line for name in READS)

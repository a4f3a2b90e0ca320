"""`rlhfkit --threads N` / $RLHFKIT_THREADS set torch's CPU threads before any verb runs."""

from __future__ import annotations

import os

import torch

from rlhfkit import cli


def test_threads_flag_and_env(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("RLHFKIT_THREADS", raising=False)
    try:
        assert cli.build_parser().parse_args(["--threads", "3", "lab", "build"]).threads == 3
        monkeypatch.setenv("RLHFKIT_THREADS", "2")
        assert cli.build_parser().parse_args(["lab", "build"]).threads == 2
        monkeypatch.delenv("RLHFKIT_THREADS")
        assert cli.build_parser().parse_args(["lab", "build"]).threads is None
        monkeypatch.setattr(cli, "_dispatch", lambda args: 0)  # no verb runs; only the thread setting
        assert cli.main(["--threads", "2", "lab", "build"]) == 0
        assert torch.get_num_threads() == 2
        assert os.environ["RLHFKIT_THREADS"] == "2"  # so a pipeline YAML's `threads:` does not override it
    finally:
        torch.set_num_threads(before)


def test_the_demo_pins_one_thread():
    from rlhfkit.config import load_config
    from rlhfkit.pipeline.demo import demo_config_path
    from rlhfkit.pipeline.stages import PipelineConfig

    assert load_config(PipelineConfig, demo_config_path()).threads == 1

"""The documented path works as written (issue 20): README's "A short tour" and the TUTORIAL's
"stages by hand" run line by line, in order, on the lab, so the docs cannot drift from the code.

How a line runs is in tests/doc_commands.py: in a fresh folder (the tour's "repository root",
holding a link to the repo's configs/), `rlhfkit` lines through `rlhfkit.cli.main` with tiny sizes
(every TINY field capped there; the rule is stated once, in that module). Two kinds of line run as
processes, as a user runs them:
- `rlhfkit label`: on a free port (`--port` added); once it answers, two annotators judge every
  item they are given through its HTTP API (what the page does), then Ctrl-C (SIGINT) stops it;
- `accelerate launch`: with a free `--main_process_port` added; a sitecustomize on PYTHONPATH
  records the RANK and WORLD_SIZE of every process it starts (the launcher itself has none).
Each line's outputs are then checked (`check`), and nothing may be written outside runs/.
The fast tests check the tour's shape, the TUTORIAL's YAML and field names, and the fixes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import build_tiny_model, free_port, write_jsonl
from doc_commands import (
    REPO,
    Line,
    Ran,
    bash_block,
    commands,
    last_json,
    run_rlhfkit,
    tiny,
    verb_of,
)

from rlhfkit.cli import main
from rlhfkit.data import read_jsonl
from rlhfkit.verbs import VERBS

README, TUTORIAL = REPO / "README.md", REPO / "docs" / "TUTORIAL.md"


def tour() -> list[Line]:
    return commands(bash_block(README, "## A short tour"))


def by_hand() -> list[Line]:
    return commands(bash_block(TUTORIAL, "## 2. The stages by hand, on the lab"))


def out_of(line: Line) -> str | None:
    """Where a line writes: its --out (or the verb's default), its `> FILE`, or None."""
    if line.stdout_to:
        return line.stdout_to
    args = line.argv[line.argv.index("rlhfkit.cli") + 1:] if line.argv[0] == "accelerate" else line.argv[1:]
    verb = VERBS.get(args[verb_of(args)]) if args else None
    if verb is None or verb.kind == "tool" or "--print-config" in args:
        return None
    return args[args.index("--out") + 1] if "--out" in args else verb.out or None


# ----------------------------------------------------------------------------- fast: the tour's shape


def test_every_tour_output_is_its_own_under_runs():
    """README's tour writes only under runs/ (gitignored), one folder or file per line (a --resume
    line continues its own run), and every verb that makes a model or data appears in it."""
    seen: dict[str, str] = {}
    for line in tour():
        out = out_of(line)
        if out is None or "--resume" in line.argv:
            continue
        assert out.startswith("runs/"), f"`{line.text}` writes {out}, outside runs/"
        assert out not in seen, f"`{line.text}` and `{seen[out]}` both write {out}"
        seen[out] = line.text
    assert "runs/" in (REPO / ".gitignore").read_text().split()
    named = {line.argv[1 + verb_of(line.argv[1:])] for line in tour() if line.argv[0] == "rlhfkit"}
    missing = [v.name for v in VERBS.values() if v.kind in ("train", "data") and v.name not in named]
    assert not missing, f"README's tour does not show: {missing}"


def test_tiny_rule_caps_flags_sets_nested_configs_and_pipeline_stages(tmp_path, monkeypatch):
    """The rewrite is what doc_commands says: a short flag is rewritten in place, other fields are
    appended as --set, nested verb configs (iterate's) are capped, a pipeline's stages get their
    recipe's caps in `config:`, and --print-config lines are untouched."""
    monkeypatch.chdir(tmp_path)
    args = tiny(["best-of-n", "--n", "16", "--limit", "100", "--out", "x"])
    assert args[:5] == ["best-of-n", "--n", "16", "--limit", "8"] and "sampling.max_new_tokens=32" in args
    args = tiny(["reward", "--ensemble", "4", "--out", "x"])
    assert args[args.index("--ensemble") + 1] == "2" and "train.max_steps=2" in args
    assert "ppo.train.max_steps=2" in tiny(["iterate", "--out", "x"])
    stages = yaml.safe_load(next(a for a in tiny(["pipeline", "--out", "x"]) if a.startswith("stages="))[len("stages="):])
    by_name = {s["name"]: s["config"] for s in stages}
    assert by_name["compare"]["limit"] == 8 and by_name["ppo_beta0"]["train"]["max_steps"] == 2
    assert by_name["ppo_beta0"]["ppo"]["kl_coef"] == 0.0 and by_name["ppo"]["train"]["lr"] == 3e-5  # kept, as floats
    assert tiny(["sft", "--print-config"]) == ["sft", "--print-config"]


# ----------------------------------------------------------------------------- fast: the fixes


def _tiny_rm(tmp_path: Path) -> Path:
    model = build_tiny_model(tmp_path / "m")
    rows = [{"prompt": "the movie", "chosen": " was great .", "rejected": " was dull ."}] * 8
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    assert main(["reward", "--set", f"model.name_or_path={model}", "--set", f"data.train={data}",
                 "--set", f"data.eval={data}", "--set", "train.max_steps=1", "--set", "train.batch_size=4",
                 "--set", "log.save_every=0", "--set", "normalize.source=eval_data",
                 "--out", str(tmp_path / "rm")]) == 0
    return tmp_path / "rm" / "final"


def test_score_reads_the_samples_file_that_sample_writes(tmp_path, capsys):
    """`rlhfkit score --data samples.jsonl` on `rlhfkit sample`'s {prompt, responses} records (it
    raised a TypeError: Samples records were not prompts) scores each response as the same
    prompt/response does in a comparison file: same inputs, same batch, so equal floats."""
    rm = _tiny_rm(tmp_path)
    samples = write_jsonl(tmp_path / "s.jsonl", [{"prompt": "the plot", "responses": [" was fun .", " was bad ."],
                                                  "finished": [True, True]}])
    pairs = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "the plot", "responses": [" was fun .", " was bad ."],
                                                "ranking": [0, 1]}])
    for src, dst in ((samples, "s_out.jsonl"), (pairs, "c_out.jsonl")):
        assert main(["score", "--rm", str(rm), "--data", str(src), "--out", str(tmp_path / dst)]) == 0
    (s,), (c,) = read_jsonl(tmp_path / "s_out.jsonl"), read_jsonl(tmp_path / "c_out.jsonl")
    assert len(s["rewards"]) == 2 and s["rewards"] == c["rewards"]


def test_eval_result_line_names_the_file_it_wrote(tmp_path, capsys):
    """`rlhfkit eval --out F` ends with {"verb": "eval", "out": F}, not the metrics dict as a
    string; without --out nothing is written and "out" is null."""
    model = build_tiny_model(tmp_path / "m")
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "the movie"}])
    args = ["eval", "--model", str(model), "--prompts", str(prompts), "--set", "text=null", "--gold", "none",
            "--max-new-tokens", "4"]
    assert main([*args, "--out", str(tmp_path / "e.json")]) == 0
    assert last_json(capsys.readouterr().out) == {"verb": "eval", "out": str(tmp_path / "e.json")}
    assert "metrics" in json.loads((tmp_path / "e.json").read_text())
    assert main(args) == 0
    assert last_json(capsys.readouterr().out) == {"verb": "eval", "out": None}


# ----------------------------------------------------------------------------- fast: the TUTORIAL


def test_tutorial_pipeline_yaml_is_a_valid_config(tmp_path):
    """The ~1B pipeline YAML of TUTORIAL section 3 loads, and each stage's `config:` holds only
    fields of its recipe (the paths it names are the reader's own, so nothing is run)."""
    from rlhfkit.config import load_config
    from rlhfkit.pipeline.stages import RECIPES, PipelineConfig
    from rlhfkit.verbs import config_class

    text = TUTORIAL.read_text()
    at = text.index("### The whole pipeline on your model, from one YAML")
    start = text.index("```yaml\n", at) + len("```yaml\n")
    path = tmp_path / "p.yaml"
    path.write_text(text[start:text.index("```", start)])
    cfg = load_config(PipelineConfig, path)
    for stage in cfg.stages:
        if stage.kind in RECIPES:
            load_config(config_class(VERBS[stage.kind]), None, (), base=stage.config)


def test_tutorial_field_names_exist():
    """Every `field` the TUTORIAL's typical-values table names is a field of its stage's config
    ("all" = sft, reward, dpo, ppo), so a renamed field cannot leave the table behind."""
    from rlhfkit.config import load_config, to_dict
    from rlhfkit.verbs import config_class

    def keys(tree: dict, prefix: str = "") -> set[str]:
        out = set()
        for k, v in tree.items():
            out.add(prefix + k)
            if isinstance(v, dict):
                out |= keys(v, f"{prefix}{k}.")
        return out

    text = TUTORIAL.read_text()
    table = text[text.index("### The fields that matter most"):text.index("### Scaling out")]
    checked = 0
    for row in re.findall(r"^\| (\w+) \| (.+?) \|", table, flags=re.M):
        stage, fields = row
        if stage == "stage":
            continue
        for verb in ("sft", "reward", "dpo", "ppo") if stage == "all" else (stage,):
            known = keys(to_dict(load_config(config_class(VERBS[verb]))))
            for name in re.findall(r"`([\w.]+)`", fields):
                assert name in known, f"TUTORIAL names `{name}` for {verb}; its config has no such field"
                checked += 1
    assert checked >= 15


# ----------------------------------------------------------------------------- slow: running them


def _wait_for_port(proc: subprocess.Popen, port: int, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"label exited {proc.returncode}: {proc.communicate()[1][-2000:]}"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError("the labelling server did not start")


def _annotate(port: int, thumbs: bool) -> int:
    """Alice, then Bob, judge every item the server gives them (rank: longest response first;
    thumbs: up when the response ends with a full stop). Returns the judgements made."""
    base = f"http://127.0.0.1:{port}"

    def call(path: str, body: dict | None = None, csrf: str | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **({"X-CSRF-Token": csrf} if csrf else {})}
        with urllib.request.urlopen(urllib.request.Request(base + path, data=data, headers=headers), timeout=30) as r:
            return json.loads(r.read())

    csrf = call("/api/session")["csrf"]
    made = 0
    for who in ("alice", "bob"):
        while (view := call("/api/next", {"annotator": who}, csrf))["item"] is not None:
            if thumbs:
                verdict = {"label": view["response"].rstrip().endswith(".")}
            else:
                order = sorted(view["responses"], key=lambda r: (-len(r["text"]), r["index"]))
                verdict = {"ranking": [r["index"] for r in order]}
            call("/api/judge", {"annotator": who, "item": view["item"], **verdict}, csrf)
            made += 1
    return made


def run_label(line: Line) -> Ran:
    port = free_port()
    argv = [sys.executable, "-m", "rlhfkit.cli", *line.argv[1:], "--port", str(port)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_port(proc, port)
        made = _annotate(port, thumbs="thumbs" in line.argv)
        proc.send_signal(signal.SIGINT)  # Ctrl-C: every judgement is already on disk
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, f"`{line.text}` exited {proc.returncode} on Ctrl-C: {err[-2000:]}"
    return Ran(line, argv, out, err, time.perf_counter() - t0, {"judgements": made})


def run_accelerate(line: Line, probe: Path) -> Ran:
    """`accelerate launch ... -m rlhfkit.cli ARGS` with ARGS made tiny and a free main port."""
    at = line.argv.index("rlhfkit.cli") + 1
    launch = line.argv[1:at]  # "launch", its options, "-m", "rlhfkit.cli"
    argv = [str(Path(sys.executable).parent / "accelerate"), launch[0], "--main_process_port", str(free_port()),
            *launch[1:], *tiny(line.argv[at:])]
    probe.mkdir(exist_ok=True)
    (probe / "sitecustomize.py").write_text(
        "import os\n"
        "if 'RANK' in os.environ and 'TOUR_PROBE' in os.environ:\n"
        "    with open(os.path.join(os.environ['TOUR_PROBE'], 'rank-' + os.environ['RANK']), 'w') as f:\n"
        "        f.write(os.environ.get('WORLD_SIZE', ''))\n")
    env = {**os.environ, "TOUR_PROBE": str(probe), "RLHFKIT_PROGRESS": "0",
           "PYTHONPATH": os.pathsep.join(p for p in (str(probe), os.environ.get("PYTHONPATH")) if p)}
    t0 = time.perf_counter()
    res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"`{line.text}` exited {res.returncode}: {res.stderr[-3000:]}"
    ranks = {p.name: p.read_text() for p in probe.glob("rank-*")}
    return Ran(line, argv, res.stdout, res.stderr, time.perf_counter() - t0, {"ranks": ranks})


def check(ran: Ran) -> None:
    """What the line promises to have written (or said)."""
    line = ran.line
    out = out_of(line)
    args = line.argv[1:]
    verb = VERBS[args[verb_of(args)]] if line.argv[0] == "rlhfkit" else VERBS["sft"]
    if line.stdout_to:  # --print-config > FILE: a config that loads back
        from rlhfkit.config import load_config
        from rlhfkit.verbs import config_class

        load_config(config_class(verb), line.stdout_to)
    elif "--resume" in args:
        assert "already complete" in ran.stdout, ran.stdout[-500:]
    elif verb.name == "label":
        assert ran.notes["judgements"] > 0 and len(read_jsonl(out)) == ran.notes["judgements"]
    elif verb.name == "agreement":
        assert "items" in ran.stdout, ran.stdout
    elif verb.name == "report":
        assert (Path(args[-1]) / "report.html").is_file()
    elif verb.name == "lab":
        assert "lab" in ran.stdout
    elif verb.run_folder:
        assert (Path(out) / "final").is_dir() and (Path(out) / "config.yaml").is_file(), f"`{line.text}`: no {out}/final"
    elif verb.kind == "pipeline":
        assert (Path(out) / "report.html").is_file() and (Path(out) / "summary.json").is_file()
    elif out:  # a data verb: its file, or its folder with files in it
        path = Path(out)
        assert any(path.iterdir()) if path.is_dir() else path.stat().st_size > 0, f"`{line.text}`: {out} is empty"
        assert last_json(ran.stdout)["out"] is not None
    else:  # eval without --out: its metrics are printed
        assert "response/length" in ran.stdout


def run_all(lines: list[Line], probe: Path) -> list[Ran]:
    done = []
    for line in lines:
        if line.argv[:1] == ["source"]:
            continue
        if line.argv[0] == "accelerate":
            ran = run_accelerate(line, probe)
        elif line.argv[:2] == ["rlhfkit", "label"]:
            ran = run_label(line)
        else:
            assert line.argv[0] == "rlhfkit", f"no rule to run `{line.text}`"
            ran = run_rlhfkit(line)
        check(ran)
        done.append(ran)
    print("\n".join(f"{r.seconds:6.1f} s  {r.line.text}" for r in done))
    return done


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh "repository root": the repo's configs/ linked in, the tour's threads setting restored."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "configs").symlink_to(REPO / "configs")
    monkeypatch.chdir(root)
    monkeypatch.delenv("RLHFKIT_THREADS", raising=False)
    monkeypatch.setenv("RLHFKIT_PROGRESS", "0")
    return root


@pytest.mark.slow
def test_readme_tour_runs_as_written(workdir, tmp_path):
    ran = {r.line.text: r for r in run_all(tour(), tmp_path / "probe")}
    # Issue 20, point by point, on what the tour wrote:
    # --resume on a finished run with no checkpoint says so and leaves the run as it was.
    resume = next(r for t, r in ran.items() if "--resume" in t)
    assert "sft" in resume.argv and not (workdir / "runs/sft/checkpoints").exists()  # 2 steps < log.save_every
    assert len(read_jsonl(workdir / "runs/sft/metrics.jsonl")) == 2
    # score reads what sample wrote: one reward per response.
    for row in read_jsonl(workdir / "runs/scored.jsonl"):
        assert len(row["rewards"]) == len(row["responses"])
    # judge with the default constitution writes comparisons (or fails), never "wrote 0".
    assert read_jsonl(workdir / "runs/judge/comparisons.jsonl")
    # the accelerate line started two processes that trained one run.
    (acc,) = [r for r in ran.values() if r.line.argv[0] == "accelerate"]
    assert acc.notes["ranks"] == {"rank-0": "2", "rank-1": "2"}, acc.notes
    # agreement compared two annotators on the overlapping items.
    agreement = next(r for t, r in ran.items() if "agreement" in t)
    assert "by 2 annotators (alice, bob)" in agreement.stdout, agreement.stdout
    assert re.search(r"items judged by 2\+ annotators: [1-9]", agreement.stdout), agreement.stdout
    # nothing outside runs/ (and the configs/ link this test made).
    assert sorted(p.name for p in workdir.iterdir()) == ["configs", "runs"]


@pytest.mark.slow
def test_tutorial_stages_by_hand_run_as_written(workdir, tmp_path):
    run_all(by_hand(), tmp_path / "probe")
    assert (workdir / "runs/ppo/report.html").is_file()
    assert sorted(p.name for p in workdir.iterdir()) == ["configs", "runs"]

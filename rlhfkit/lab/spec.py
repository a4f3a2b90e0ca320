"""What determines a lab: its build config (`SIZES`) and the code that builds it, hashed into one key.

Why a hash, not a hand-bumped version number: a cached lab is reused by every command and test,
so a lab built by older code (other grammar, other sampling, other model shape) silently made
tests pass or fail for reasons no diff shows. The key changes whenever anything the build reads
changes, so a stale lab is rebuilt instead of reused.

What feeds the key (`lab_key`):
- the bytes of `KEY_SOURCES`, the lab modules the build and its artefacts depend on: `build`
  (steps, data files, manifest), `spec` (the sizes below), `pretrain` (model shape, training loop),
  `tokenizer` (BPE), `corpus`, `grammar`, `lexicon` (the documents), `measure` and `gold` (the
  manifest's certificate), `layout` (file layout);
- every size's `LabSize` / `PretrainConfig` values, also when they are changed at run time.
Not fed: `__init__` (re-exports only) and `cai_corpus` (the CAI assistant is trained on demand on
top of a lab and keyed on its own, `cai_corpus.assistant_key`: editing it retrains the assistant
in about two minutes, not the whole lab). Package versions are recorded in the manifest, not
keyed: a torch upgrade changes float rounding, not the lab's meaning.

Size and seed are recorded in the manifest beside the key rather than in it: a full lab serves a
tiny request (`layout.is_built`), and the seed is the user's choice of world, kept when a stale lab
is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from rlhfkit.lab.pretrain import PretrainConfig

SOURCE_DIR = Path(__file__).parent
KEY_SOURCES = ("build.py", "corpus.py", "gold.py", "grammar.py", "layout.py", "lexicon.py", "measure.py",
               "pretrain.py", "spec.py", "tokenizer.py")
KEY_HEX = 12  # 48 bits: an accidental collision between two code versions is not a concern


@dataclass(frozen=True)
class LabSize:
    """How much of everything a lab of one size holds."""

    pretrain: PretrainConfig  # model shape and steps (steps * batch_size reviews)
    tokenizer_docs: int  # reviews the BPE is trained on
    pretrain_eval: int  # held-out reviews for perplexity
    sft_train: int  # demonstrations
    sft_eval: int
    prompt_draws: int  # review openings drawn; their distinct values are split train/eval
    samples: int  # base-model samples measured at build time


SIZES: dict[str, LabSize] = {
    "full": LabSize(
        pretrain=PretrainConfig(),
        tokenizer_docs=5000,
        pretrain_eval=500,
        sft_train=2000,
        sft_eval=200,
        prompt_draws=20000,
        samples=500,
    ),
    "tiny": LabSize(
        pretrain=PretrainConfig(
            n_layer=2, n_embd=64, n_head=2, steps=40, batch_size=16, warmup_steps=5
        ),
        tokenizer_docs=500,
        pretrain_eval=50,
        sft_train=64,
        sft_eval=16,
        prompt_draws=1000,
        samples=16,
    ),
}


def digest(*parts: bytes | str) -> str:
    """First KEY_HEX hex digits of the SHA-256 of `parts`, each length-prefixed so that no two
    different part lists hash the same bytes."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()[:KEY_HEX]


def lab_key() -> str:
    """The key of a lab built by this code with the current SIZES (see the module docstring)."""
    sources = [part for name in KEY_SOURCES for part in (name, (SOURCE_DIR / name).read_bytes())]
    sizes = json.dumps({name: asdict(size) for name, size in SIZES.items()}, sort_keys=True)
    return digest(*sources, sizes)

"""The built-in lab: a seeded toy world of movie reviews, a tiny base LM and a gold judge.

It is the default model and data of every command and the test bed that shows an
alignment method works, because gold (the "true" human preference) can be measured.
`ensure_lab()` builds it once (about two minutes on CPU) into `default_lab_dir()`, and again
whenever the code or config that builds it changes (`lab_key()`).
"""

from rlhfkit.lab.build import base_model_dir, build_lab, data_file, ensure_lab
from rlhfkit.lab.gold import gold_components, gold_score
from rlhfkit.lab.layout import default_lab_dir, is_built, read_manifest
from rlhfkit.lab.spec import lab_key

__all__ = [
    "base_model_dir",
    "build_lab",
    "data_file",
    "default_lab_dir",
    "ensure_lab",
    "gold_components",
    "gold_score",
    "is_built",
    "lab_key",
    "read_manifest",
]

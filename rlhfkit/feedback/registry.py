"""Annotators by name, so collection code (`recipes/compare.py`) never names a concrete one.

    annotator = build_annotator("simulated", {"temperature": 0.5, "seed": 0})
    judgement = annotator.rank(prompt, responses)   # Judgement(ranking, scores, soft_label)

An entry maps a name to "module:factory"; the factory is called with the options as keyword
arguments and returns an object with `.name` and `.rank(prompt, responses) -> Judgement`
(`feedback.base.Annotator`). Modules are imported only when their annotator is built, so an
entry can name a module that a later feature adds ("judge", "human") and register it here or
with `register_annotator` without touching the collection recipe. A name not in the registry
but shaped like "package.module:factory" or "path/to/file.py:factory" is imported as such
(`user_code`: never implicitly from the current folder). That runs its code: name only code you trust.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rlhfkit.config import ConfigError
from rlhfkit.user_code import is_code_spec, load_object

if TYPE_CHECKING:
    from rlhfkit.feedback.base import Annotator, ThumbsAnnotator

ANNOTATORS: dict[str, str | Callable[..., Annotator]] = {
    "simulated": "rlhfkit.feedback.simulated:SimulatedAnnotator",
    "judge": "rlhfkit.feedback.judge:build_judge",
    "human": "rlhfkit.feedback.label_server:build_human",
}

# Thumbs (unpaired feedback) annotators: `.label(prompt, completion) -> Thumbs` (`base.ThumbsAnnotator`),
# built with kind="thumbs"; a job writing feedback records names one here.
THUMBS_ANNOTATORS: dict[str, str | Callable[..., ThumbsAnnotator]] = {
    "simulated": "rlhfkit.feedback.simulated:SimulatedThumbs",
}

_KINDS = {  # kind -> (table, method every annotator of the kind has, what it means)
    "rank": (ANNOTATORS, "rank", "annotators need .name and .rank(prompt, responses)"),
    "thumbs": (THUMBS_ANNOTATORS, "label", "thumbs annotators need .name and .label(prompt, completion)"),
}


def register_annotator(name: str, factory: str | Callable[..., Annotator], kind: str = "rank") -> None:
    """Add (or replace) an annotator factory under `name` (kind "rank" or "thumbs")."""
    _KINDS[kind][0][name] = factory


def build_annotator(name: str, options: dict[str, Any] | None = None, kind: str = "rank") -> Annotator:
    """The annotator registered as `name` (or a "module:factory" spec), built with `options`;
    kind "thumbs" builds a thumbs annotator (`ThumbsAnnotator`) from THUMBS_ANNOTATORS."""
    table, method, need = _KINDS[kind]
    factory = table.get(name)
    if factory is None:
        if not is_code_spec(name):
            raise ConfigError(f"unknown annotator {name!r}; expected one of {', '.join(sorted(table))}, "
                              "'module:factory' or 'path/to/file.py:factory'")
        factory = name
    if isinstance(factory, str):
        factory = load_object(factory, "annotator")
    try:
        annotator = factory(**(options or {}))
    except TypeError as e:
        raise ConfigError(f"annotator {name!r}: bad options {options}: {e}") from None
    for attr in ("name", method):
        if not hasattr(annotator, attr):
            raise ConfigError(f"annotator {name!r} has no `{attr}`; {need}")
    return annotator

"""A constitution: principles plus the prompt templates of Constitutional AI (Bai et al. 2022).

One YAML file holds everything both CAI stages need, so the critique/revision loop
(`recipes/cai.py`) and the AI judge (`feedback/judge.py`) read the same principles:

    conversation          how a (prompt, response) pair is shown to the model
    critique / revision   request templates ({request} = the sampled principle's text), stop string
    principles            [{name, critique, revision}], one sampled per round
    few_shot              worked examples placed before the live conversation
    judge                 multiple-choice template with (A)/(B) and the judge's principles

`load_constitution("default")` reads the documented default set shipped beside this file;
`"lab"` is the lab's short-format constitution (`lab/cai_corpus.py`, which also writes the
matching pretraining documents); anything else is a YAML path. Templates are validated on load:
an unknown {field} or an unbalanced brace fails here, not halfway through a labelling run.
"""

from __future__ import annotations

import random
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rlhfkit.feedback.fit import Prompt

DEFAULT_PATH = Path(__file__).with_name("constitution.yaml")

# Fields each template may use (see constitution.yaml).
_FIELDS = {
    "conversation": {"prompt", "response"},
    "request": {"prompt", "response", "request"},
    "judge": {"prompt", "principle", "response_a", "response_b", "conversation"},
    "judge_conversation": {"prompt"},
}


class ConstitutionError(ValueError):
    """A constitution file that cannot be used (missing key, bad template field)."""


@dataclass(frozen=True)
class Principle:
    name: str
    critique: str  # the critique request
    revision: str  # the matching revision request


@dataclass(frozen=True)
class Step:
    """One sampled part of the loop: the request appended before sampling, and where to stop."""

    request: str
    stop: str | None
    max_new_tokens: int
    strip: bool = True  # strip surrounding whitespace from the sample (false: keep a leading space
    # when the request ends with the prompt and the sample continues it, completion-style)
    no_flaw: tuple[str, ...] = ()  # critique only: answers that mean "nothing to revise" (e.g. the lab's "none .")


@dataclass(frozen=True)
class Example:
    """A worked critique -> revision example for the few-shot block."""

    prompt: str
    response: str
    critique_request: str
    critique: str
    revision_request: str
    revision: str


@dataclass(frozen=True)
class JudgeSpec:
    template: str
    conversation: str
    principles: tuple[str, ...]


@dataclass(frozen=True)
class Constitution:
    name: str
    conversation: str
    critique: Step
    revision: Step
    separator: str
    principles: tuple[Principle, ...]
    few_shot: tuple[Example, ...]
    judge: JudgeSpec

    # ------------------------------------------------------------------ rendering
    # The *_prompt forms keep the response apart from the template (`fit.Prompt`), so a context
    # that outgrows the model can shorten it and never the request or the principle.
    def show_prompt(self, prompt: str, response: str) -> Prompt:
        """The conversation as the model sees it."""
        return Prompt.fill(self.conversation, {"response"}, prompt=prompt, response=response)

    def request_prompt(self, step: Step, request: str, prompt: str, response: str) -> Prompt:
        """`step`'s request template (critique or revision) for one principle's `request` text."""
        return Prompt.fill(step.request, {"response"}, request=request, prompt=prompt, response=response)

    def show(self, prompt: str, response: str) -> str:
        return self.show_prompt(prompt, response).render()

    def critique_request(self, principle: Principle, prompt: str, response: str) -> str:
        return self.request_prompt(self.critique, principle.critique, prompt, response).render()

    def revision_request(self, principle: Principle, prompt: str, response: str) -> str:
        return self.request_prompt(self.revision, principle.revision, prompt, response).render()

    def examples(self, n: int | None = None) -> list[str]:
        """The first `n` worked examples (all when None or negative), each ending with the separator."""
        out = []
        for ex in self.few_shot[: len(self.few_shot) if n is None or n < 0 else n]:
            p = Principle("example", ex.critique_request, ex.revision_request)
            out.append(self.show(ex.prompt, ex.response) + self.critique_request(p, ex.prompt, ex.response)
                       + " " + ex.critique.strip() + self.revision_request(p, ex.prompt, ex.response)
                       + " " + ex.revision.strip() + self.separator)
        return out

    def examples_block(self, n: int | None = None) -> str:
        return "".join(self.examples(n))

    def judge_prompt(self, principle: str, prompt: str, response_a: str, response_b: str) -> str:
        conversation = self.judge.conversation.format(prompt=prompt)
        return self.judge.template.format(conversation=conversation, principle=principle, prompt=prompt,
                                          response_a=response_a, response_b=response_b)

    def sample_principle(self, rng: random.Random) -> Principle:
        return self.principles[rng.randrange(len(self.principles))]


# ---------------------------------------------------------------------- loading


def load_constitution(spec: str | Path | Mapping[str, Any] | None = "default") -> Constitution:
    """"default" (the shipped set), "lab" (the lab's format), a YAML path, or a parsed mapping."""
    if spec is None or spec == "default":
        return _build(_read(DEFAULT_PATH), str(DEFAULT_PATH))
    if isinstance(spec, Mapping):
        return _build(spec, "<mapping>")
    if spec == "lab":
        from rlhfkit.lab.cai_corpus import lab_constitution

        return _build(lab_constitution(), "lab")
    return _build(_read(Path(spec)), str(spec))


def load_judge_principles(spec: str | Path | None) -> tuple[str, ...]:
    """Judge principles from a constitution ("default", "lab", YAML) or a .txt file, one a line."""
    if spec is not None and str(spec).endswith(".txt"):
        path = Path(spec)
        if not path.is_file():
            raise ConstitutionError(f"principles file not found: {path}")
        lines = tuple(ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#"))
        if not lines:
            raise ConstitutionError(f"{path}: no principles (one a line; # starts a comment)")
        return lines
    return load_constitution(spec or "default").judge.principles


def _read(path: Path) -> Mapping[str, Any]:
    if not path.is_file():
        raise ConstitutionError(f"constitution file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConstitutionError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, Mapping):
        raise ConstitutionError(f"{path}: the top level must be a mapping")
    return data


def _get(data: Mapping[str, Any], key: str, where: str, kind: type = str) -> Any:
    if key not in data:
        raise ConstitutionError(f"{where}: missing '{key}'")
    value = data[key]
    if not isinstance(value, kind):
        raise ConstitutionError(f"{where}: '{key}' must be a {kind.__name__}, got {type(value).__name__}")
    return value


def _check_template(text: str, allowed: set[str], where: str) -> str:
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
    except ValueError as e:
        raise ConstitutionError(f"{where}: {e} (write literal braces as {{{{ and }}}})") from None
    unknown = fields - allowed
    if unknown or any(f == "" or not f.isidentifier() for f in fields):
        raise ConstitutionError(f"{where}: unknown template field(s) {sorted(unknown or fields)}; "
                                f"allowed: {sorted(allowed)}")
    return text


def _step(data: Mapping[str, Any], key: str, where: str) -> Step:
    d = _get(data, key, where, Mapping)
    stop = d.get("stop")
    if stop is not None and (not isinstance(stop, str) or not stop):
        raise ConstitutionError(f"{where}: {key}.stop must be a non-empty string or null")
    no_flaw = d.get("no_flaw") or []
    if key != "critique" and no_flaw:
        raise ConstitutionError(f"{where}: {key}.no_flaw: only the critique step has no-flaw answers")
    return Step(_check_template(_get(d, "request", f"{where}: {key}"), _FIELDS["request"], f"{where}: {key}.request"),
                stop, int(d.get("max_new_tokens", 128)), bool(d.get("strip", True)),
                _strings(no_flaw, f"{where}: {key}.no_flaw") if no_flaw else ())


def _strings(items: Sequence[Any], where: str) -> tuple[str, ...]:
    if not items or not all(isinstance(s, str) and s.strip() for s in items):
        raise ConstitutionError(f"{where}: expected a non-empty list of non-empty strings")
    return tuple(items)


def _build(data: Mapping[str, Any], where: str) -> Constitution:
    principles = []
    for i, p in enumerate(_get(data, "principles", where, list)):
        if not isinstance(p, Mapping):
            raise ConstitutionError(f"{where}: principles[{i}] must be a mapping with critique and revision")
        principles.append(Principle(str(p.get("name", f"principle-{i}")), _get(p, "critique", f"{where}: principles[{i}]"),
                                    _get(p, "revision", f"{where}: principles[{i}]")))
    if not principles:
        raise ConstitutionError(f"{where}: 'principles' is empty")
    examples = []
    for i, ex in enumerate(data.get("few_shot") or []):
        w = f"{where}: few_shot[{i}]"
        examples.append(Example(*(_get(ex, k, w) for k in ("prompt", "response", "critique_request", "critique",
                                                           "revision_request", "revision"))))
    judge = _get(data, "judge", where, Mapping)
    return Constitution(
        name=str(data.get("name", where)),
        conversation=_check_template(_get(data, "conversation", where), _FIELDS["conversation"], f"{where}: conversation"),
        critique=_step(data, "critique", where),
        revision=_step(data, "revision", where),
        separator=str(data.get("separator", "\n\n")),
        principles=tuple(principles),
        few_shot=tuple(examples),
        judge=JudgeSpec(
            template=_check_template(_get(judge, "template", f"{where}: judge"), _FIELDS["judge"], f"{where}: judge.template"),
            conversation=_check_template(str(judge.get("conversation", "{prompt}")), _FIELDS["judge_conversation"],
                                         f"{where}: judge.conversation"),
            principles=_strings(_get(judge, "principles", f"{where}: judge", list), f"{where}: judge.principles"),
        ),
    )

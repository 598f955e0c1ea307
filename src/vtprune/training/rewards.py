"""Rewards for GlimpsePrune+ (``vtprune train plus``): one number in [0, 1] per sampled completion.

Each reward is ``fn(completion, record) -> float``; ``record`` is the training sample (a
:class:`vtprune.data.dataset.Record` or anything with ``answers``, ``type``, ``boxes``, ``extra``). The official recipe
picks the reward per dataset entry; here :func:`reward_for` does the same from the record's ``reward`` key (an extra
JSONL key), else from its task type (``--type-reward TYPE=NAME``), else from ``--reward``.

- ``exact``: normalised exact match (:func:`vtprune.eval.metrics.exact_match`).
- ``vqa``: VQA accuracy, ``min(1, #matching answers / 3)`` (:func:`vtprune.eval.metrics.vqa_accuracy`).
- ``anls``: ANLS with threshold 0.5 (:func:`vtprune.eval.metrics.anls`).
- ``nls``: partial credit by edit distance, ``1 - Levenshtein / longer length`` on normalised strings (ANLS without
  its 0.5 cut-off, :func:`nls`): a two-character answer with one character wrong scores 0.5, where exact match and
  ANLS give 0, so short answers read nearly right (a table's "57" for "58") still separate a group's completions.
- ``numeric``: 1 when the first number in the completion lies within ``rel_tol`` (relative, default 1%) or
  ``abs_tol`` of an answer's number, else 0.
- ``choice``: single choice; the completion's option letter (``"B"``, ``"(B)"``, ``"B. cat"``, ``"Answer: B"``)
  against the answer's letter, or the whole text against an answer that is not a letter.
- ``iou``: the IoU of the first ``[x0, y0, x1, y1]`` in the completion with the record's first box (0 without a
  parsable box: the format part of the official box reward).
- ``judge``: an LLM judge over an OpenAI-compatible ``/chat/completions`` endpoint (:class:`JudgeClient`), the
  official prompt's "score: x" protocol: unparsable replies score 0, scores are clipped to [0, 1].
"""

from __future__ import annotations

import json
import re
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vtprune.errors import ConfigError, VtpruneError
from vtprune.eval.metrics import anls, exact_match, normalize, vqa_accuracy

Reward = Callable[[str, Any], float]

_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?|[-+]?\.\d+")
_BOX = re.compile(r"\[\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*\]")
_LETTER = re.compile(r"^\s*(?:answer\s*[:：]?\s*)?\(?([A-Za-z])\)?(?:[.):,\s]|$)", re.IGNORECASE)
_SCORE = re.compile(r"score\s*[:：]\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)


class JudgeError(VtpruneError):
    """The judge endpoint did not answer in time, or answered something that is not a chat completion."""


def first_number(text: str) -> float | None:
    """The first number written in ``text`` (thousands commas allowed; number words up to ten), or None."""
    m = _NUMBER.search(text) or _NUMBER.search(normalize(text))
    if m is None:
        return None
    try:
        return float(m.group(0).replace(",", ""))
    except ValueError:
        return None


def numeric_match(completion: str, answers: list[str], rel_tol: float = 0.01, abs_tol: float = 1e-6) -> float:
    """1.0 when the completion's first number is within ``max(rel_tol * |answer|, abs_tol)`` of an answer's."""
    p = first_number(completion)
    if p is None:
        return 0.0
    for a in answers:
        t = first_number(a)
        if t is not None and abs(p - t) <= max(rel_tol * abs(t), abs_tol):
            return 1.0
    return 0.0


def choice_letter(text: str) -> str | None:
    """The option letter a completion picks (``B``, ``(b)``, ``B. cat``, ``Answer: B``), upper-case, or None."""
    m = _LETTER.match(text)
    return m.group(1).upper() if m else None


def single_choice(completion: str, answers: list[str]) -> float:
    """1.0 when the completion picks the answer's option letter (or, for a non-letter answer, matches it exactly)."""
    got = choice_letter(completion)
    for a in answers:
        want = choice_letter(a) if len(a.strip().strip("()")) == 1 else None
        if want is not None and got == want:
            return 1.0
        if want is None and exact_match(completion, [a]):
            return 1.0
    return 0.0


def nls(prediction: str, answers: list[str]) -> float:
    """Normalised Levenshtein similarity: max over answers of ``1 - distance / longer length`` on
    :func:`~vtprune.eval.metrics.normalize`d strings (ANLS with no cut-off; 1.0 exactly when exact match is 1)."""
    return anls(normalize(prediction), [normalize(a) for a in answers], threshold=1.0)


def box_iou(a: list[float], b: list[float]) -> float:
    """Intersection over union of two ``[x0, y0, x1, y1]`` boxes (0 for empty or disjoint boxes)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def box_reward(completion: str, boxes: list[list[float]]) -> float:
    """IoU of the first box written in the completion with the first target box; 0 without either."""
    m = _BOX.search(completion)
    if m is None or not boxes:
        return 0.0
    try:
        got = [float(v) for v in m.groups()]
    except ValueError:
        return 0.0
    return box_iou(got, [float(v) for v in boxes[0]])


# --- the LLM judge ------------------------------------------------------------------------------------------------
JUDGE_PROMPT = (
    "You are grading an answer to a question about an image. Compare the model's answer with the standard answer "
    "and give a score between 0 and 1: the closer to the standard answer, the higher.\n"
    "Question: {question}\nStandard answer: {answer}\nModel answer: {completion}\n"
    "Reply with one line of the form 'score: x'."
)


def parse_score(text: str) -> float:
    """The judge's ``score: x``, clipped to [0, 1]; 0.0 when there is none (the official rule)."""
    m = _SCORE.search(text)
    return min(1.0, max(0.0, float(m.group(1)))) if m else 0.0


@dataclass
class JudgeClient:
    """A judge over an OpenAI-compatible chat endpoint (vLLM, llama.cpp server, OpenAI).

    ``base_url`` is the API root (``http://host:port/v1``); requests go to ``{base_url}/chat/completions``. The
    sampling follows the official judge (temperature 0.7, top-p 0.8, 512 tokens, seed 42). A request that takes
    longer than ``timeout`` seconds is retried ``retries`` times, then raises :class:`JudgeError`, as does a reply
    that is not a chat completion; a completion without ``score: x`` scores 0.
    """

    base_url: str
    model: str = "judge"
    timeout: float = 30.0
    retries: int = 1
    api_key: str | None = None
    temperature: float = 0.7
    top_p: float = 0.8
    max_tokens: int = 512
    seed: int = 42

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"--judge-url must be an http(s) URL, got {self.base_url!r}")
        if self.timeout <= 0 or self.retries < 0:
            raise ConfigError("judge timeout must be > 0 and retries >= 0")

    def complete(self, prompt: str) -> str:
        """The judge's reply text to one user message."""
        body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": prompt}],
                           "temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens,
                           "seed": self.seed}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        url = self.base_url.rstrip("/") + "/chat/completions"
        last: Exception | None = None
        for _ in range(self.retries + 1):
            req = urllib.request.Request(url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as r:
                    raw = r.read()
                break
            except (TimeoutError, socket.timeout) as e:
                last = e
            except urllib.error.HTTPError as e:
                raise JudgeError(f"judge at {url} answered HTTP {e.code}") from None
            except urllib.error.URLError as e:
                if isinstance(e.reason, (TimeoutError, socket.timeout)):
                    last = e
                    continue
                raise JudgeError(f"cannot reach the judge at {url}: {e.reason}") from None
        else:
            raise JudgeError(f"judge at {url} did not answer within {self.timeout:g} s "
                             f"({self.retries + 1} tries): {last}")
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise JudgeError(f"judge at {url} sent a reply that is not a chat completion: {raw[:120]!r}") from None
        if not isinstance(content, str):
            raise JudgeError(f"judge at {url} sent a non-text message content: {content!r:.120}")
        return content

    def score(self, question: str, answer: str, completion: str) -> float:
        return parse_score(self.complete(JUDGE_PROMPT.format(question=question, answer=answer, completion=completion)))

    def __call__(self, completion: str, record: Any) -> float:
        return self.score(record.question, record.answers[0], completion)


# --- the registry -------------------------------------------------------------------------------------------------
REWARDS: dict[str, Reward] = {
    "exact": lambda c, r: exact_match(c, r.answers),
    "vqa": lambda c, r: vqa_accuracy(c, r.answers),
    "anls": lambda c, r: anls(c, r.answers),
    "nls": lambda c, r: nls(c, r.answers),
    "numeric": lambda c, r: numeric_match(c, r.answers),
    "choice": lambda c, r: single_choice(c, r.answers),
    "iou": lambda c, r: box_reward(c, list(getattr(r, "boxes", []) or [])),
}
NAMES = (*REWARDS, "judge")


def reward_for(record: Any, default: str, judge: JudgeClient | None = None,
               by_type: dict[str, str] | None = None) -> Reward:
    """The reward of one record: its ``reward`` key (a JSONL extra) if it has one, else ``by_type[record.type]``
    if its task type is there, else ``default``."""
    fallback = (by_type or {}).get(getattr(record, "type", None) or "", default)
    name = (getattr(record, "extra", None) or {}).get("reward", fallback)
    return get_reward(str(name), judge)


def parse_type_rewards(items: list[str]) -> dict[str, str]:
    """``["document=nls", "attribute=exact"]`` -> ``{"document": "nls", ...}``; a bad item raises ConfigError."""
    out: dict[str, str] = {}
    for item in items:
        kind, sep, name = item.partition("=")
        if not sep or not kind.strip() or name.strip() not in NAMES:
            raise ConfigError(f"--type-reward takes TYPE=NAME with NAME one of {', '.join(NAMES)}, got {item!r}")
        out[kind.strip()] = name.strip()
    return out


def get_reward(name: str, judge: JudgeClient | None = None) -> Reward:
    """A reward by name (:data:`NAMES`); ``judge`` needs a :class:`JudgeClient`."""
    if name == "judge":
        if judge is None:
            raise ConfigError("reward 'judge' needs --judge-url (an OpenAI-compatible endpoint)")
        return judge
    if name not in REWARDS:
        raise ConfigError(f"unknown reward {name!r}; available: {', '.join(NAMES)}")
    return REWARDS[name]

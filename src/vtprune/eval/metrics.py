"""Answer metrics: normalized exact match, VQA accuracy and ANLS.

- Exact match: the normalized prediction equals any normalized answer.
- VQA accuracy (Antol et al., 2015): ``min(1, #answers matching / 3)``, averaged over the 10 leave-one-out subsets
  when there are 10 answers (the official protocol); with fewer answers the plain formula.
- ANLS (Biten et al., 2019, ST-VQA/DocVQA): ``max over answers of 1 - NL`` if ``NL < 0.5`` else 0, where NL is the
  Levenshtein distance over the longer length, on lower-cased, whitespace-trimmed strings.
"""

from __future__ import annotations

import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation})
_NUMBERS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}


def normalize(text: str) -> str:
    """Lower-case, drop punctuation and articles, map number words to digits, squeeze spaces."""
    t = text.lower().translate(_PUNCT)
    t = _ARTICLES.sub(" ", t)
    return " ".join(_NUMBERS.get(w, w) for w in t.split())


def exact_match(prediction: str, answers: list[str]) -> float:
    p = normalize(prediction)
    return float(any(p == normalize(a) for a in answers))


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    p = normalize(prediction)
    norm = [normalize(a) for a in answers]
    if len(norm) < 10:
        return min(1.0, sum(a == p for a in norm) / 3.0) if len(norm) >= 3 else float(p in norm)
    accs = []
    for i in range(len(norm)):
        others = norm[:i] + norm[i + 1 :]
        accs.append(min(1.0, sum(a == p for a in others) / 3.0))
    return sum(accs) / len(accs)


def _levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def anls(prediction: str, answers: list[str], threshold: float = 0.5) -> float:
    p = " ".join(prediction.lower().split())
    best = 0.0
    for a in answers:
        a = " ".join(a.lower().split())
        n = max(len(a), len(p))
        nl = _levenshtein(p, a) / n if n else 0.0
        best = max(best, 1.0 - nl if nl < threshold else 0.0)
    return best

"""Chat templates: where a checkpoint keeps its own, the family fallbacks shipped in ``chat_templates/``, rendering.

A prompt is what the checkpoint's template renders for HF's messages format, as
``processor.apply_chat_template(messages, add_generation_prompt=True)`` does; the adapter then expands the visual
placeholders and tokenizes the whole string in one call, as the processor does. Templates are looked up as HF's
processor finds them: the processor-level files first (``processor_config.json``'s ``chat_template``,
``chat_template.json``, ``chat_template.jinja``), then the tokenizer's; a checkpoint with neither gets its family's
documented fallback (see ``chat_templates/SOURCES.md``).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from vtprune.errors import InputError

TEMPLATE_DIR = Path(__file__).resolve().parent / "chat_templates"


@cache
def shipped_template(name: str) -> str:
    """The text of ``templates/<name>.jinja`` (a real checkpoint's template or a family fallback)."""
    return (TEMPLATE_DIR / f"{name}.jinja").read_text()


def checkpoint_template(path: Path, tokenizer: Any) -> str | None:
    """The chat template HF's processor would use for the checkpoint folder ``path``, or ``None`` if it has none."""
    proc = path / "processor_config.json"
    if proc.is_file():
        tpl = json.loads(proc.read_text()).get("chat_template")
        if tpl:
            return str(tpl)
    if (path / "chat_template.json").is_file():
        tpl = json.loads((path / "chat_template.json").read_text()).get("chat_template")
        if tpl:
            return str(tpl)
    if (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text()
    return tokenizer_template(tokenizer)


def tokenizer_template(tokenizer: Any) -> str | None:
    """The tokenizer's own template (a single string; a named-template dict gives its ``default``)."""
    tpl = getattr(tokenizer, "chat_template", None)
    if isinstance(tpl, dict):
        tpl = tpl.get("default")
    return str(tpl) if tpl else None


def render(tokenizer: Any, template: str, messages: list[dict[str, Any]], *, generation_prompt: bool = True) -> str:
    """The prompt text ``template`` renders for ``messages`` (HF's renderer, with the tokenizer's special tokens)."""
    from jinja2 import TemplateError

    try:
        text = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                             add_generation_prompt=generation_prompt)
    except TemplateError as e:
        raise InputError(f"the chat template rejected the conversation: {e}") from None
    return str(text)


def expand(text: str, placeholder: str, counts: list[int], what: str) -> str:
    """Replace the i-th ``placeholder`` in ``text`` by ``counts[i]`` copies of it, as HF's processors do (see
    :func:`replace_each`)."""
    return replace_each(text, placeholder, [placeholder * n for n in counts], what)


def replace_each(text: str, placeholder: str, replacements: list[str], what: str) -> str:
    """Replace the i-th ``placeholder`` in ``text`` by ``replacements[i]``.

    Raises :class:`InputError` when the template placed a different number of placeholders than there are items
    (e.g. a question that contains the placeholder's text, or a template without a slot for ``what``).
    """
    found = text.count(placeholder)
    if found != len(replacements):
        raise InputError(f"the prompt holds {found} {what} placeholder(s) ({placeholder}) for {len(replacements)} "
                         f"{what}(s)")
    parts = text.split(placeholder)
    out = [parts[0]]
    for r, rest in zip(replacements, parts[1:]):
        out += [r, rest]
    return "".join(out)

"""``vtprune bench``: the efficiency harness (issue 5). Placeholder until the harness lands."""

from __future__ import annotations

from vtprune.errors import VtpruneError


def bench() -> None:
    """Efficiency A/B of a method against the unpruned model at realistic shapes (not available yet)."""
    raise VtpruneError("'vtprune bench' is not available yet: it will time ViT, prefill, decode, memory and KV cache")

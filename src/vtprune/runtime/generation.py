"""Decoding with the checkpoint's own generation settings, through transformers' generation machinery.

The settings are a :class:`transformers.GenerationConfig` resolved as ``model.generate`` resolves them: the caller's
overrides, then the checkpoint's ``generation_config.json`` (``model.generation_config``), then transformers'
defaults (``_prepare_generation_config``). Each step's scores come from the logits processors ``generate`` itself
builds from that config (``_get_logits_processor``: repetition penalty, no-repeat n-grams, min-new-tokens, bad
words, temperature / top-k / top-p / min-p / typical warpers, ...), then argmax or one multinomial draw, as in
``generate``'s sampling loop. The loop itself is ours, because the cache is the pruned one and positions continue
from the unpruned prompt (:func:`decode`); with nothing pruned it is token for token ``model.generate``.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessorList

from vtprune.adapters.base import Adapter
from vtprune.errors import ConfigError, check_int, check_real
from vtprune.runtime.executor import PrefillState

DEFAULT_MAX_NEW_TOKENS = 32
"""Used when neither the caller nor the checkpoint sets ``max_new_tokens`` (transformers' own fallback, a total
``max_length`` of 20, would leave no room after an image's tokens)."""


def generation_config(model: Any, **overrides: Any) -> GenerationConfig:
    """The effective decoding settings for ``model``: ``overrides`` (``None`` values ignored) over the checkpoint's
    generation config over transformers' defaults.

    ``temperature=0`` means greedy (``do_sample=False``), as lmms-eval and vtprune always read it. Any
    :class:`GenerationConfig` field may be given; beam search (``num_beams > 1``) is not supported. Raises
    :class:`ConfigError` naming the setting for an unknown name or an out-of-range value.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    probe = GenerationConfig()
    unknown = [k for k in given if not hasattr(probe, k)]
    if unknown:
        raise ConfigError(f"unknown decoding setting(s): {', '.join(sorted(unknown))}")
    if "temperature" in given:
        check_real("temperature", given["temperature"], 0)
    if "max_new_tokens" in given:
        check_int("max_new_tokens", given["max_new_tokens"], 1)
    if given.get("temperature") == 0:
        given.pop("temperature")
        given["do_sample"] = False
    if int(given.get("num_beams", 1)) != 1:
        raise ConfigError(f"num_beams={given['num_beams']}: beam search is not supported")
    if "max_new_tokens" in given and int(given["max_new_tokens"]) < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {given['max_new_tokens']}")
    cfg, _ = model._prepare_generation_config(None, **given)
    if int(cfg.num_beams or 1) != 1:
        raise ConfigError(f"the checkpoint's generation config asks for beam search (num_beams={cfg.num_beams}); "
                          "pass num_beams=1")
    if cfg.max_new_tokens is None:
        cfg.max_new_tokens = DEFAULT_MAX_NEW_TOKENS
    for name, ok in (("top_p", lambda v: 0 < v <= 1), ("min_p", lambda v: 0 <= v <= 1), ("top_k", lambda v: v >= 0),
                     ("repetition_penalty", lambda v: v > 0), ("no_repeat_ngram_size", lambda v: v >= 0)):
        v = getattr(cfg, name, None)
        if v is not None and not ok(v):
            raise ConfigError(f"{name} out of range: {v}")
    logits_processors(model, cfg, torch.zeros(1, 1, dtype=torch.long))  # out-of-range values fail here, by name
    return cfg


def logits_processors(model: Any, cfg: GenerationConfig, prompt_ids: torch.Tensor) -> LogitsProcessorList:
    """The processors ``model.generate`` applies for ``cfg`` to a prompt ``prompt_ids`` ``[B, L]``."""
    try:
        return model._get_logits_processor(generation_config=cfg, input_ids_seq_length=prompt_ids.shape[1],
                                           encoder_input_ids=prompt_ids, prefix_allowed_tokens_fn=None,
                                           logits_processor=LogitsProcessorList(), device=prompt_ids.device,
                                           model_kwargs={})
    except ValueError as e:  # transformers names the setting: "`temperature` (=-1.0) has to be a strictly positive"
        raise ConfigError(f"decoding setting out of range: {e}") from None


def _eos(cfg: GenerationConfig) -> list[int]:
    eos = cfg.eos_token_id
    if eos is None:
        return []
    return [int(e) for e in (eos.tolist() if isinstance(eos, torch.Tensor) else eos if isinstance(eos, (list, tuple))
                             else [eos])]


@torch.no_grad()
def decode(adapter: Adapter, state: PrefillState, generation: GenerationConfig, prompt_ids: torch.Tensor | None = None,
           *, seed: int = 0, row_seeds: list[int] | None = None) -> torch.Tensor:
    """Generate up to ``generation.max_new_tokens`` tokens from ``state``; returns ``[B, T]`` (finished rows padded
    with the config's pad token, else its first end token, as ``generate`` pads them).

    ``prompt_ids`` ``[B, L]``: the unpruned prompt, left padded, which the logits processors read as ``generate``'s
    do (a repetition penalty sees the prompt's tokens). Each step feeds the stock model its token with the pruned
    cache, the compacted mask and explicit positions continuing from the unpruned prompt. Sampling draws from
    torch's global generator seeded with ``seed`` inside :func:`torch.random.fork_rng` (the caller's random state
    is left as it was), so a keep-all run equals ``torch.manual_seed(seed); model.generate(...)``. An empty end-token
    list never stops early (the efficiency harness times a fixed number of steps).

    ``row_seeds``: with sampling, one random stream per row seeded so (instead of the global one): a row's sample
    then does not depend on which other rows share its batch (RL rollouts sharded over processes draw what one
    process would); ``generate`` has no such mode.
    """
    dev = adapter.device
    B = state.logits.shape[0]
    gens = None
    if row_seeds is not None and generation.do_sample:
        if len(row_seeds) != B:
            raise ConfigError(f"row_seeds has {len(row_seeds)} seeds for {B} rows")
        gens = [torch.Generator().manual_seed(int(s)) for s in row_seeds]
    ids = prompt_ids.to(dev) if prompt_ids is not None else torch.zeros(B, 0, dtype=torch.long, device=dev)
    processors = logits_processors(adapter.model, generation, ids)
    eos_list = _eos(generation)
    eos = torch.tensor(eos_list, device=dev, dtype=torch.long)
    pad = generation.pad_token_id
    pad = int(pad) if pad is not None else (eos_list[0] if eos_list else adapter.pad_token_id)
    mask, pos, logits = state.attention_mask.to(dev), state.positions[..., -1:].to(dev), state.logits.to(dev)
    finished = torch.zeros(B, dtype=torch.bool, device=dev)
    steps = int(generation.max_new_tokens)
    out = []
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        for step in range(steps):
            scores = processors(ids, logits.float())
            if gens is not None:
                probs = torch.softmax(scores, dim=-1).cpu()
                nxt = torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, gens)]).to(dev)
            elif generation.do_sample:
                nxt = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
            else:
                nxt = scores.argmax(-1)
            nxt = torch.where(finished, torch.full_like(nxt, pad), nxt)
            out.append(nxt)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            finished |= torch.isin(nxt, eos)
            if bool(finished.all()) or step == steps - 1:
                break
            mask = torch.cat([mask, mask.new_ones(B, 1)], dim=1)
            pos = pos + 1
            o = adapter.model(
                input_ids=nxt[:, None],
                attention_mask=mask,
                position_ids=adapter.forward_position_ids(pos),
                past_key_values=state.cache,
                use_cache=True,
                logits_to_keep=1,
            )
            logits = o.logits[:, -1]
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    state.timings["decode"] = time.perf_counter() - t0
    state.timings["decode_steps"] = float(len(out))
    return torch.stack(out, dim=1) if out else torch.zeros(B, 0, dtype=torch.long, device=dev)

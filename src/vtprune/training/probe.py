"""Dense per-token supervision of a from-scratch vision tower: what the renderer drew under each visual token.

A VLM trained from scratch on one-token answers gets one label per image, too sparse for its ViT to learn to read
glyphs in a CPU budget. The testbed knows every object it drew, so the zoo recipe adds a linear *probe* on the
visual tokens the LLM receives (the projector's output, ``hidden_states[0]`` at visual positions) and trains the
tower to make them linearly tell, per token: the colour and kind of the object or table cell under the token's
centre, its content (glyph, table key or value), and whether the object's centre falls in this token (for
counting). The probe is thrown away after training; the shipped model is the stock HF class and nothing else.

Targets come from the scene fields of testbed records (image ``objects`` and ``rows``, video ``tracks``); records
without them (user data) get no probe loss. A video token covers a temporal patch of 2 frames, and what changes in a
video (a colour, a tile shown for one frame) often changes inside a patch: its colour, kind and content are labelled
for each of the patch's two frames (the ``*_b`` heads; an image's two frames are one image, so both sets agree).
Labelling only the first frame taught the tower to ignore the second (a glyph shown in it was labelled "none").
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from vtprune.testbed.tasks.image import DOC_KEYS, DOC_WORDS
from vtprune.testbed.tasks.render import COLORS, GLYPHS, KINDS

logger = logging.getLogger(__name__)
IGNORE = -100
COLOR_CLASSES = ("none", *COLORS)
KIND_CLASSES = ("none", *KINDS, "table key", "table value", "tile")
CONTENT_CLASSES = ("none", *[g.lower() for g in GLYPHS], *DOC_KEYS, *[str(n) for n in range(10, 100)], *DOC_WORDS)
HEADS: dict[str, int] = {"color": len(COLOR_CLASSES), "kind": len(KIND_CLASSES), "content": len(CONTENT_CLASSES),
                         "centre": 2, "color_b": len(COLOR_CLASSES), "kind_b": len(KIND_CLASSES),
                         "content_b": len(CONTENT_CLASSES)}
"""The probe's heads, one target column each: a token's first frame (colour, kind, content, centre), then its
temporal patch's second frame (colour, kind, content)."""
NT = len(HEADS)
_KIND = {k: i for i, k in enumerate(KIND_CLASSES)}
_COLOR = {c: i for i, c in enumerate(COLOR_CLASSES)}
_CONTENT = {c: i for i, c in enumerate(CONTENT_CLASSES)}


def has_scene(extra: dict[str, Any]) -> bool:
    return "objects" in extra or "tracks" in extra


class TokenGrid:
    """Where the visual tokens of one image sit in its pixels: ``hw`` ``[N, 2]`` (row, column) on a ``grid`` of
    (rows, columns) tokens over an image of ``image_size`` (width, height); a token covers ``width/columns x
    height/rows`` pixels (so a processor's squash, e.g. LLaVA's fixed 336 px, is accounted for)."""

    def __init__(self, image_size: tuple[int, int], hw: torch.Tensor, grid: tuple[int, int]) -> None:
        w, h = image_size
        self.hw, (self.gh, self.gw) = hw, grid
        self.sx, self.sy = w / self.gw, h / self.gh
        self.cy = (hw[:, 0].double() + 0.5) * self.sy
        self.cx = (hw[:, 1].double() + 0.5) * self.sx

    def inside(self, box: Any) -> torch.Tensor:
        """``[N]`` bool: tokens whose centre lies in ``box`` (x0, y0, x1, y1; x1, y1 exclusive)."""
        return (self.cx >= box[0]) & (self.cx < box[2]) & (self.cy >= box[1]) & (self.cy < box[3])

    def centre(self, box: Any) -> torch.Tensor:
        """``[N]`` bool: the one token holding the centre of ``box``, whatever the box's size and alignment."""
        r = min(int((box[1] + box[3]) / 2 / self.sy), self.gh - 1)
        c = min(int((box[0] + box[2]) / 2 / self.sx), self.gw - 1)
        return (self.hw[:, 0] == r) & (self.hw[:, 1] == c)


def token_targets(extra: dict[str, Any], image_size: tuple[int, int], hw: torch.Tensor,
                  grid: tuple[int, int]) -> torch.Tensor:
    """Targets ``[N, NT]`` for ``N`` visual tokens of one image (see :data:`HEADS`; the second frame's columns
    repeat the first's). Arguments as :func:`frame_targets`."""
    t = frame_targets(extra, image_size, hw, grid)
    return torch.cat([t, t[:, :3]], dim=1)


def content_any(targets: torch.Tensor) -> torch.Tensor:
    """``[...]`` the content a token shows in either frame of its patch (the first frame's where both have one)."""
    a, b = targets[..., 2], targets[..., 6]
    return torch.where(a > 0, a, b)


def frame_targets(extra: dict[str, Any], image_size: tuple[int, int], hw: torch.Tensor,
                  grid: tuple[int, int]) -> torch.Tensor:
    """Targets ``[N, 4]`` (colour, kind, content, centre) for ``N`` visual tokens of one frame or image.

    Args:
        extra: the record's scene fields: ``objects`` = ``[[kind, colour, glyph|None, box], ...]`` and ``rows`` =
            ``[[key, value, key_box, value_box], ...]`` in image pixels.
        image_size: (width, height) of the image the boxes refer to.
        hw: ``[N, 2]`` (row, column) of each token on the token grid.
        grid: (rows, columns) of the token grid (see :class:`TokenGrid`).
    """
    g = TokenGrid(image_size, hw, grid)
    out = torch.zeros(hw.shape[0], 4, dtype=torch.long)
    for key, value, kbox, vbox in extra.get("rows") or []:
        for box, kind, content in ((kbox, "table key", key), (vbox, "table value", value)):
            m = g.inside(box)
            out[m, 1] = _KIND[kind]
            out[m, 2] = _CONTENT.get(content, 0)
    for kind, color, glyph, box in extra.get("objects") or []:
        m = g.inside(box)
        out[m, 0] = _COLOR.get(color, 0)
        out[m, 1] = _KIND[kind]
        out[m, 2] = _CONTENT[glyph.lower()] if glyph else 0
        out[g.centre(box), 3] = 1  # counting: one mark per object
    return out


def video_token_targets(extra: dict[str, Any], frame_size: tuple[int, int], thw: torch.Tensor,
                        grid: tuple[int, int, int], num_frames: int) -> torch.Tensor:
    """Targets ``[N, NT]`` for the tokens of one video whose ``tracks`` are ``[[kind, colours[T], glyph, boxes[T]]]``:
    the first frame of each token's temporal patch in the first four columns, its second frame in the last three.

    ``thw`` is ``[N, 3]`` (temporal patch, row, column); ``num_frames`` is how many frames the model was given
    (resampled from the track length with the loader's own :func:`~vtprune.data.video.sample_indices`), in
    patches of ``num_frames // grid[0]`` (an odd count's last patch repeats its frame, as the adapter pads it).
    """
    from vtprune.data.video import sample_indices

    tracks = extra["tracks"]
    total = len(tracks[0][3])
    frames = sample_indices(total, num_frames)  # every frame when num_frames == total
    per = max(1, num_frames // grid[0])

    def at(f: int, hw: torch.Tensor) -> torch.Tensor:
        objs = [[kind, colors[f], glyph, boxes[f]] for kind, colors, glyph, boxes in tracks if boxes[f] is not None]
        return frame_targets({"objects": objs}, frame_size, hw, grid[1:])

    out = torch.zeros(thw.shape[0], NT, dtype=torch.long)
    for t in range(grid[0]):
        m = thw[:, 0] == t
        first = min(t * per, len(frames) - 1)
        out[m, :4] = at(frames[first], thw[m, 1:])
        out[m, 4:] = at(frames[min(first + per - 1, len(frames) - 1)], thw[m, 1:])[:, :3]
    return out


def batch_targets(extras: list[dict[str, Any]], samples: list[Any], visual_mask: torch.Tensor,
                  coords: list[torch.Tensor], grids: list[list[tuple[int, int, int]]]) -> torch.Tensor | None:
    """Targets ``[B, L, NT]`` over a left-padded batch: -100 except on the visual tokens of scene-bearing samples.

    ``extras`` are the records' extra fields (``Record.extra``), one per sample."""
    if not any(has_scene(e) for e in extras):
        return None
    B, L = visual_mask.shape
    out = torch.full((B, L, NT), IGNORE, dtype=torch.long)
    for b, (extra, s) in enumerate(zip(extras, samples)):
        pos = visual_mask[b].nonzero().squeeze(1)
        if "objects" in extra and len(s.images) == 1 and s.video is None:
            _, gh, gw = grids[b][0]
            out[b, pos] = token_targets(extra, s.images[0].size, coords[b][:, 2:4], (gh, gw))
        elif "tracks" in extra and not s.images and s.video is not None and extra["tracks"]:
            out[b, pos] = video_token_targets(extra, s.video[0].size, coords[b][:, 1:4], grids[b][0], len(s.video))
    return out


def content_token_ids(tokenizer: Any) -> torch.Tensor:
    """``[C]``: the vocabulary id of each content class's first token (:data:`IGNORE` for ``none``).

    Glyphs are one token each (``k``); table words and numbers give their first piece (``47`` -> ``4``). The zoo
    recipe's readout loss (:class:`~vtprune.training.zoo.ZooRecipe`) uses it as the target of the LM head read at
    a visual token, so what the tower saw there is written in the same vocabulary the answers use."""
    ids = [IGNORE] + [tokenizer.encode(c, add_special_tokens=False)[0] for c in CONTENT_CLASSES[1:]]
    return torch.tensor(ids, dtype=torch.long)


class TokenProbe(torch.nn.Module):
    """One linear map from the LLM width to every head's logits."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(hidden, sum(HEADS.values()))

    def loss(self, visual_states: torch.Tensor, targets: torch.Tensor, none_weight: float = 0.1) -> torch.Tensor:
        """Mean over heads of a class-balanced cross-entropy; ``visual_states`` ``[N, D]``, ``targets`` ``[N, NT]``.

        Most tokens are background (class ``none``); a plain token mean would let the easy background drown the
        few tokens that hold a glyph. Per head, the loss is the mean over tokens with a real target plus
        ``none_weight`` x the mean over background tokens.
        """
        logits = self.proj(visual_states.float())
        losses, start = [], 0
        for j, n in enumerate(HEADS.values()):
            ce = torch.nn.functional.cross_entropy(logits[:, start:start + n], targets[:, j], reduction="none")
            real = targets[:, j] > 0
            part = ce[real].mean() if bool(real.any()) else ce.sum() * 0.0
            if bool((~real).any()):
                part = part + none_weight * ce[~real].mean()
            losses.append(part)
            start += n
        return torch.stack(losses).mean()

    @torch.no_grad()
    def accuracy(self, visual_states: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Per-head accuracy on the tokens whose target is not ``none`` (the informative ones)."""
        logits = self.proj(visual_states.float())
        acc, start = {}, 0
        for j, (name, n) in enumerate(HEADS.items()):
            t = targets[:, j]
            m = t > 0
            acc[name] = float((logits[m, start:start + n].argmax(-1) == t[m]).float().mean()) if m.any() else float("nan")
            start += n
        return acc


def vision_warmup(adapter: Any, probe: TokenProbe, *, steps: int, batch_size: int = 32, lr: float = 2e-3,
                  seed: int = 0, log_every: int = 20, sides: tuple[int, int] = (224, 224)) -> list[dict[str, float]]:
    """Pre-train the vision side (tower + projector, not the LLM) with the probe on reading scenes.

    Reading scenes (:func:`~vtprune.testbed.tasks.image.make_reading_scene`, 224 px, ~13 glyphs each) carry about
    ten times more glyphs per pixel than the task images: the from-scratch tower learns to read in minutes here,
    where on task images it stays at chance for the whole budget. Only the visual features the LLM would receive
    are computed (the adapter's own ``embed``; no decoder layer runs). Scene sides are multiples of 28 px in
    ``sides``: 224 px for Qwen (cost grows with the side), 224..336 for a fixed-resolution tower like LLaVA's 224 px
    (same cost; the glyph scale then varies, 0.67..1, towards the 0.5..1 of task images after the squash).
    Returns the log (step, loss, per-head accuracy, glyph accuracy) every ``log_every`` steps.
    """
    import random

    from vtprune.adapters.base import Sample
    from vtprune.testbed.tasks.image import make_reading_scene, random_side

    model = adapter.model
    text = {id(p) for p in adapter.text_model.parameters()} | {id(p) for p in adapter.lm_head.parameters()}
    params = [p for p in model.parameters() if id(p) not in text and p.requires_grad] + list(probe.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / max(1, steps // 20)))
    model.train()
    log: list[dict[str, float]] = []
    glyphs = slice(1, 1 + len(GLYPHS))
    for step in range(steps):
        scenes = []
        for i in range(batch_size):
            key = f"reading:{seed}:{step * batch_size + i}"
            r = random.Random(key + ":size")
            scenes.append(make_reading_scene(key, (random_side(r, *sides), random_side(r, *sides))))
        samples = [Sample("", [s.image]) for s in scenes]
        enc = adapter.encode(samples)
        states = adapter.embed(enc).embeds
        t = batch_targets([s.scene() for s in scenes], samples, enc.visual_mask, enc.coords, enc.grids)
        t, m = t.to(states.device), enc.visual_mask.to(states.device)  # the model's device (CUDA where there is one)
        loss = probe.loss(states[m], t[m])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps - 1:
            with torch.no_grad():
                acc = probe.accuracy(states[m], t[m])
                tm = t[m]
                sel = (tm[:, 2] >= glyphs.start) & (tm[:, 2] < glyphs.stop)
                start = HEADS["color"] + HEADS["kind"]
                pred = probe.proj(states[m][sel].float())[:, start:start + HEADS["content"]].argmax(-1)
                acc["glyph"] = float((pred == tm[sel, 2]).float().mean()) if bool(sel.any()) else float("nan")
            log.append({"step": step, "loss": round(loss.item(), 4), **{k: round(v, 4) for k, v in acc.items()}})
            logger.info("vision warm-up %s", log[-1])
    return log

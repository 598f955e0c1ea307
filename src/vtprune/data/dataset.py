"""The JSONL dataset format and its loaders.

One sample a line::

    {"id": "...", "image": "path" | ["path", ...], "video": "path", "question": "...", "answers": ["..."],
     "type": "optional task type", "boxes": [[x0, y0, x1, y1], ...], "frames": [evidence frame indices],
     "fps": the video file's frame rate (optional: places a resampled video on Qwen2.5-VL's time axis)}

Relative paths resolve against the JSONL file's folder. ``testbed:<name>`` names a generated set
(:mod:`vtprune.testbed.sets`). Every user-facing failure is an :class:`~vtprune.errors.InputError`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence
from typing import Any

from PIL import Image

from vtprune.errors import InputError, check_real
from vtprune.data.video import FramePicker

_KNOWN = {"id", "image", "video", "question", "answers", "type", "boxes", "frames", "fps"}


@dataclass
class Sample:
    """One question about zero or more images, or about one video (a list of frames), as a chat turn.

    The prompt is what the checkpoint's chat template renders for :meth:`messages` (HF's messages format): by default
    one user turn holding the images, then the video, then the question, exactly as the model card's
    ``apply_chat_template`` example builds it. ``system`` and ``history`` add a system turn and earlier turns;
    :meth:`from_messages` takes a whole HF conversation.
    """

    question: str
    images: list[Image.Image] = field(default_factory=list)
    """Every image of the conversation, in the order their placeholders appear (``history`` first, then the
    question's turn), as HF's processor takes them."""
    video: list[Image.Image] | None = None
    """Frames of one video, in order (families that take video: Qwen2/2.5/3-VL, Qwen3.5, Molmo2)."""
    fps: float | None = None
    """Frames per second of ``video`` as given (after any resampling). Qwen2.5-VL places video tokens on an absolute
    time axis: ``second_per_grid_ts = temporal_patch_size / fps``, as HF's processor computes it. ``None`` is HF's
    default of one second per temporal patch (2 fps). Qwen2-VL has no time axis and ignores it."""
    system: str | None = None
    """A system turn. ``None`` leaves the template's default (Qwen2-VL/2.5-VL: "You are a helpful assistant.")."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """Earlier turns in HF's messages format (``{"role": "user"|"assistant", "content": str | [parts]}``); an
    ``{"type": "image"}`` / ``{"type": "video"}`` part places the next of ``images`` / the ``video`` there."""
    turn: list[dict[str, Any]] | None = None
    """The question's own turn as HF content parts, when its layout is not images-video-question (set by
    :meth:`from_messages`); ``question`` then holds its text."""

    def __post_init__(self) -> None:
        if not isinstance(self.question, str):
            raise InputError(f"question must be a string, got {type(self.question).__name__}")
        if not isinstance(self.images, (list, tuple)) or not all(isinstance(im, Image.Image) for im in self.images):
            raise InputError(f"images must be a list of PIL images, got {_kinds(self.images)}")
        if self.video is not None and (not isinstance(self.video, (list, tuple))
                                       or not all(isinstance(f, Image.Image) for f in self.video)):
            raise InputError(f"video must be a list of PIL images (its frames) or None, got {_kinds(self.video)}")
        if self.fps is not None:
            check_real("fps", self.fps, 0, None, lo_open=True, error=InputError)
        for i, m in enumerate(self.history):
            if not isinstance(m, dict) or m.get("role") not in ("user", "assistant", "system"):
                raise InputError(f"history[{i}] must be a message dict with role user, assistant or system")

    def messages(self) -> list[dict[str, Any]]:
        """The conversation in HF's messages format, visual parts as ``{"type": "image"|"video"}`` placeholders."""
        msgs: list[dict[str, Any]] = []
        if self.system is not None:
            msgs.append({"role": "system", "content": [{"type": "text", "text": self.system}]})
        msgs += [dict(m, content=_parts(m.get("content", ""))) for m in self.history]
        if self.turn is not None:
            content = [dict(p) for p in self.turn]
        else:
            placed = sum(1 for m in msgs for p in m["content"] if p.get("type") == "image")
            video_placed = any(p.get("type") == "video" for m in msgs for p in m["content"])
            content = [{"type": "image"} for _ in self.images[placed:]]
            if self.video is not None and not video_placed:
                content.append({"type": "video"})
            content.append({"type": "text", "text": self.question})
        msgs.append({"role": "user", "content": content})
        return msgs

    @classmethod
    def from_messages(cls, messages: Sequence[dict[str, Any]], *, fps: float | None = None) -> Sample:
        """A sample from an HF conversation whose last message is the user's turn to answer.

        Visual parts carry their data as HF's processors take it: ``{"type": "image", "image": PIL.Image}`` and
        ``{"type": "video", "video": [PIL.Image, ...]}`` (one video per conversation). A leading ``system`` message
        becomes :attr:`system`; the rest before the last turn becomes :attr:`history`.
        """
        if not messages or not isinstance(messages[-1], dict) or messages[-1].get("role") != "user":
            raise InputError("messages: the last message must be the user's turn")
        images: list[Image.Image] = []
        video: list[Image.Image] | None = None

        def strip(i: int, content: Any) -> list[dict[str, Any]]:
            nonlocal video
            out = []
            for p in _parts(content):
                kind = p.get("type")
                if kind == "image":
                    im = p.get("image")
                    if not isinstance(im, Image.Image):
                        raise InputError(f"messages[{i}]: an image part needs a PIL image under 'image'")
                    images.append(im)
                    out.append({"type": "image"})
                elif kind == "video":
                    frames = p.get("video")
                    if video is not None or not isinstance(frames, (list, tuple)) or not frames:
                        raise InputError(f"messages[{i}]: one video per conversation, given as a list of frames")
                    video = list(frames)
                    out.append({"type": "video"})
                elif kind == "text":
                    out.append({"type": "text", "text": str(p.get("text", ""))})
                else:
                    raise InputError(f"messages[{i}]: unknown content type {kind!r}")
            return out

        system = None
        start = 0
        if messages[0].get("role") == "system" and len(messages) > 1:
            parts = strip(0, messages[0].get("content", ""))
            if any(p["type"] != "text" for p in parts):
                raise InputError("messages[0]: a system message holds text only")
            system, start = "".join(p["text"] for p in parts), 1
        history = []
        for i in range(start, len(messages) - 1):
            m = messages[i]
            if not isinstance(m, dict) or m.get("role") not in ("user", "assistant", "system"):
                raise InputError(f"messages[{i}] must be a message dict with role user, assistant or system")
            history.append({"role": m["role"], "content": strip(i, m.get("content", ""))})
        turn = strip(len(messages) - 1, messages[-1].get("content", ""))
        question = "".join(p["text"] for p in turn if p["type"] == "text")
        default = [p for p in turn if p["type"] == "image"] + [p for p in turn if p["type"] == "video"]
        default += [{"type": "text", "text": question}]
        return cls(question, images, video, fps, system, history, None if turn == default else turn)


def _parts(content: Any) -> list[dict[str, Any]]:
    """HF message content as a list of parts (a plain string is one text part)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, (list, tuple)) or not all(isinstance(p, dict) for p in content):
        raise InputError("message content must be a string or a list of {'type': ...} parts")
    return [dict(p) for p in content]


def _kinds(value: Any) -> str:
    """What a value holds, for an error message: ``list of str``, ``NoneType``, ``Image``."""
    if isinstance(value, (list, tuple)):
        inner = sorted({type(v).__name__ for v in value})
        return f"{type(value).__name__} of {', '.join(inner)}" if inner else f"an empty {type(value).__name__}"
    return type(value).__name__


@dataclass
class Record:
    """One dataset line with its paths resolved; unknown keys are kept in ``extra``."""

    id: str
    question: str
    answers: list[str]
    images: list[Path] = field(default_factory=list)
    video: Path | None = None
    type: str | None = None
    boxes: list[list[float]] = field(default_factory=list)  # evidence boxes, [x0, y0, x1, y1] pixels
    frames: list[int] = field(default_factory=list)  # video: evidence frame of each box
    fps: float | None = None  # video: the file's frame rate
    extra: dict[str, Any] = field(default_factory=dict)


def from_visual_cot(obj: dict[str, Any]) -> dict[str, Any]:
    """A line of the official GlimpsePrune training JSONL (Visual-CoT layout: ``question``, ``answer``, ``image``,
    ``dataset``, ``bboxs`` in pixels) in our format: ``answers = [answer]``, ``boxes = bboxs``, and the image at
    ``cot/<dataset>/<image>`` under the JSONL's folder, where the official trainer reads it from its image root.
    Lines already in our format (with ``answers``) pass unchanged."""
    if "answers" in obj or "answer" not in obj:
        return obj
    out = {k: v for k, v in obj.items() if k not in ("answer", "bboxs", "bbox")}
    out["answers"] = [obj["answer"]]
    boxes = obj.get("bboxs", obj.get("bbox"))
    if isinstance(boxes, list) and len(boxes) == 4 and all(isinstance(v, (int, float)) for v in boxes):
        boxes = [boxes]  # one box written flat
    if boxes is not None:
        out["boxes"] = boxes
    image, dataset = obj.get("image"), obj.get("dataset")
    if isinstance(image, str) and isinstance(dataset, str) and not Path(image).is_absolute():
        out["image"] = f"cot/{dataset}/{image}"
    if "id" not in out and "question_id" in obj:
        out["id"] = str(obj["question_id"])
    return out


def parse_record(obj: Any, root: Path, where: str) -> Record:
    """One JSONL line's object as a :class:`Record` (paths resolved against ``root``; ``where`` names the line in
    errors); raises :class:`InputError`."""
    def bad(msg: str) -> InputError:
        return InputError(f"{where}: {msg}")

    if not isinstance(obj, dict):
        raise bad("expected a JSON object")
    obj = from_visual_cot(obj)
    q = obj.get("question")
    if not isinstance(q, str) or not q.strip():
        raise bad("missing 'question'")
    answers = obj.get("answers")
    if isinstance(answers, str):
        answers = [answers]
    if not isinstance(answers, list) or not answers or not all(isinstance(a, (str, int, float)) for a in answers):
        raise bad("missing 'answers' (a non-empty list of strings)")
    image = obj.get("image", [])
    image = [image] if isinstance(image, str) else image
    if not isinstance(image, list) or not all(isinstance(p, str) for p in image):
        raise bad("'image' must be a path or a list of paths")
    video = obj.get("video")
    if video is not None and not isinstance(video, str):
        raise bad("'video' must be a path")
    boxes = obj.get("boxes") or []
    if not isinstance(boxes, list) or not all(
        isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) for v in b) for b in boxes
    ):
        raise bad("'boxes' must be a list of [x0, y0, x1, y1]")
    frames = obj.get("frames") or []
    if not isinstance(frames, list) or not all(isinstance(f, int) for f in frames):
        raise bad("'frames' must be a list of frame indices")
    fps = obj.get("fps")
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps < math.inf):
        raise bad("'fps' must be a finite number > 0")
    return Record(
        id=str(obj.get("id", where)),
        question=q,
        answers=[str(a) for a in answers],
        images=[root / p for p in image],  # an absolute p stays absolute
        video=root / video if video is not None else None,
        type=obj.get("type"),
        boxes=[[float(v) for v in b] for b in boxes],
        frames=frames,
        fps=float(fps) if fps is not None else None,
        extra={k: v for k, v in obj.items() if k not in _KNOWN},
    )


def read_jsonl(path: str | Path) -> list[Record]:
    """Read and validate a JSONL dataset; an unusable line raises ``InputError("<file>:<line>: ...")``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read dataset {path}: {e}") from None
    records: list[Record] = []
    seen: set[str] = set()
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{i}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{where}: bad JSON ({e.msg})") from None
        rec = parse_record(obj, path.parent, where)
        if rec.id in seen:
            raise InputError(f"{where}: duplicate id {rec.id!r}")
        seen.add(rec.id)
        records.append(rec)
    if not records:
        raise InputError(f"dataset {path} holds no samples (it is empty or blank)")
    return records


def load_image(path: str | Path) -> Image.Image:
    """Open an image file as RGB; ``InputError("cannot read image <path>: ...")`` if missing or corrupt.

    A truncated file fails even where PIL's process-wide ``ImageFile.LOAD_TRUNCATED_IMAGES`` is on (lmms-eval turns
    it on when imported): PIL would otherwise fill the missing part grey, a silent wrong input."""
    from PIL import ImageFile

    lenient = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(path) as im:
            im.load()  # decode now, so a truncated file fails here
            return im.convert("RGB")
    except (OSError, ValueError, SyntaxError) as e:  # PIL raises these for missing, unknown and broken files
        reason = e.strerror if isinstance(e, FileNotFoundError) and e.strerror else str(e)
        raise InputError(f"cannot read image {path}: {reason}") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = lenient


def load_video(path: str | Path, num_frames: int | None = None) -> list[Image.Image]:
    """Decode a video (.mp4 or any FFmpeg format, or .npz) to RGB frames, ``num_frames`` uniformly spaced if given."""
    return _load_frames(path, num_frames)[0]


def load_clip(path: str | Path, num_frames: int | None = None, fps: float | None = None,
              pick: FramePicker | None = None) -> tuple[list[Image.Image], float | None]:
    """A video's frames, ``num_frames`` uniformly spaced if given (else those ``pick`` chooses from the file's frame
    count and rate, e.g. a family's video processor sampling, :meth:`Adapter.video_frame_indices`; else all), and
    their rate: ``fps`` (the file's) times the share of frames kept, so the frames span the clip's duration on
    Qwen2.5-VL's time axis; ``None`` without ``fps``. Only the sampled frames are kept in memory while decoding."""
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps < math.inf):
        raise InputError(f"fps must be a finite number > 0, got {fps!r}")
    frames, total = _load_frames(path, num_frames, pick, fps)
    return frames, (fps * len(frames) / total if fps is not None else None)


def _load_frames(path: str | Path, num_frames: int | None, pick: FramePicker | None = None,
                 fps: float | None = None) -> tuple[list[Image.Image], int]:
    """The sampled frames as RGB images and the file's frame count (errors are :class:`InputError`)."""
    import zipfile

    import av

    from vtprune.data.video import read_frames

    if num_frames is not None and (isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1):
        raise InputError(f"num_frames must be an integer >= 1, got {num_frames!r}")
    try:
        frames, total = read_frames(path, num_frames, pick, fps)
    except (OSError, ValueError, KeyError, EOFError, IndexError, zipfile.BadZipFile, av.FFmpegError) as e:
        reason = e.strerror if isinstance(e, FileNotFoundError) and e.strerror else str(e)
        raise InputError(f"cannot read video {path}: {reason}") from None
    if len(frames) == 0:
        raise InputError(f"cannot read video {path}: no frames")
    return [Image.fromarray(f) for f in frames], total


def resolve_data(spec: str | Path) -> Path:
    """``testbed:NAME`` -> its cached JSONL (rendered on first use); a JSONL file or a folder with one -> Path."""
    s = str(spec)
    if s.startswith("testbed:"):
        from vtprune.testbed.sets import ensure_set

        return ensure_set(s.removeprefix("testbed:"))
    p = Path(s).expanduser()
    if p.is_dir() and (p / "data.jsonl").is_file():
        return p / "data.jsonl"
    if not p.is_file():
        raise InputError(f"no such dataset: {s} (a JSONL file, a folder holding data.jsonl, or testbed:<name>)")
    return p


def sample_for_record(rec: Any, num_frames: int | None = None, pick: FramePicker | None = None) -> Sample:
    """Load a dataset record's image(s)/video into a :class:`Sample` (errors are :class:`InputError`).

    ``num_frames`` resamples videos uniformly to that many frames (test-time scaling uses more than training);
    without it ``pick`` chooses them (:func:`load_clip`). A
    record's ``fps`` (the file's frame rate) gives the resampled frames' rate, ``fps * kept / total``: Qwen2.5-VL's
    time axis then spans the clip's real duration whatever the frame count."""
    paths = getattr(rec, "images", None) or getattr(rec, "image", None) or []
    images = [load_image(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    video, fps = None, None
    if getattr(rec, "video", None):
        video, fps = load_clip(rec.video, num_frames, getattr(rec, "fps", None), pick)
    return Sample(rec.question, images, video, fps)

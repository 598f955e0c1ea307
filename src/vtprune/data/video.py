"""Video files as uint8 frame arrays ``[T, H, W, 3]`` (RGB), with PyAV.

Writing uses H.264 in its RGB flavour (``libx264rgb``, ``crf 0``): lossless, so decoded frames equal the rendered
ones bit for bit, and small for mostly static scenes (inter-frame coding). Some desktop players cannot show RGB
H.264; every FFmpeg-based reader (PyAV, ffmpeg, decord) can. ``.npz`` files (key ``frames``) are read too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def sample_indices(total: int, num: int) -> list[int]:
    """``num`` frame indices spread uniformly over ``total`` frames (centre of each of ``num`` equal segments)."""
    if total < 1 or num < 1:
        raise ValueError(f"cannot sample {num} of {total} frames")
    return [min(total - 1, int((i + 0.5) * total / num)) for i in range(num)]


def write_video(path: str | Path, frames: np.ndarray, fps: int = 8) -> None:
    """Write ``frames`` [T, H, W, 3] uint8 to ``path`` (.mp4: lossless H.264 RGB; .npz: compressed array)."""
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    path = Path(path)
    if path.suffix == ".npz":
        np.savez_compressed(path, frames=frames)
        return
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264rgb", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "rgb24"
        stream.options = {"crf": "0", "preset": "ultrafast"}
        stream.thread_count = 1  # deterministic output, polite on shared CPUs
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(stream.encode())


def read_video(path: str | Path, num_frames: int | None = None) -> np.ndarray:
    """Decode ``path`` to ``[T, H, W, 3]`` uint8 RGB; with ``num_frames``, keep that many uniformly spaced frames.

    Raises whatever PyAV / numpy raise on a missing or corrupt file (``OSError``, ``ValueError``, ``av.FFmpegError``).
    """
    return read_frames(path, num_frames)[0]


FramePicker = Callable[[int, "float | None"], "list[int] | None"]
"""``pick(total, fps) -> indices | None``: which of a file's ``total`` frames (at ``fps`` frames per second, None
when unknown) to keep, in order; None keeps them all (a family's video processor's frame sampling)."""


def read_frames(path: str | Path, num_frames: int | None = None, pick: FramePicker | None = None,
                fps: float | None = None) -> tuple[np.ndarray, int]:
    """:func:`read_video` and the file's frame count. With ``num_frames``, only the sampled frames are converted
    and kept (the rest are decoded and dropped), so memory does not grow with the clip's length; a file whose
    header gives no frame count is decoded twice, once to count. Without ``num_frames``, ``pick`` chooses the frames
    from the count and the rate (``fps``, else the file's own). A file without a video stream, or frames that are
    not uint8 ``[T, H, W, 3]``, raise ``ValueError``."""

    def wanted(total: int, rate: float | None) -> list[int] | None:
        if num_frames is not None:
            return sample_indices(total, num_frames) if total else []
        return pick(total, fps or rate) if pick is not None and total else None

    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path) as z:
            if "frames" not in z:
                raise ValueError(f"no 'frames' array in the .npz (has {', '.join(z.files) or 'nothing'})")
            frames = z["frames"]
        _check_frames(frames)
        want = wanted(len(frames), None)
        return (frames if want is None else frames[want]), len(frames)
    import av

    with av.open(str(path)) as src:
        if not src.streams.video:
            raise ValueError("no video stream")
        stream = src.streams.video[0]
        total, rate = stream.frames, float(stream.average_rate) if stream.average_rate else None
        if num_frames is None and pick is None:
            frames = [f.to_ndarray(format="rgb24") for f in src.decode(video=0)]
            return _stack(frames), len(frames)
        if total <= 0:  # not in the header: count by decoding (frames are dropped as they come)
            total = sum(1 for _ in src.decode(video=0))
        else:
            picked, seen = _pick(src, wanted(total, rate))
            if picked is not None:
                return _stack(picked), total
            total = seen  # the header overstated the stream: sample the frames it really holds
    with av.open(str(path)) as src:
        picked, _ = _pick(src, wanted(total, rate))
        return _stack(picked or []), total


def _pick(src: Any, want: list[int] | None) -> tuple[list[np.ndarray] | None, int]:
    """Decode ``src``'s video stream up to the last of the ``want`` indices (all frames: None), converting only
    those. Returns the frames (``None`` if the stream ends first) and the frames decoded."""
    if want is not None and not want:
        return [], 0
    keep = None if want is None else set(want)
    picked: dict[int, np.ndarray] = {}
    seen = 0
    for f in src.decode(video=0):
        if keep is None or seen in keep:
            picked[seen] = f.to_ndarray(format="rgb24")
        seen += 1
        if want is not None and seen > want[-1]:
            return [picked[i] for i in want], seen
    return (list(picked.values()), seen) if want is None else (None, seen)


def _stack(frames: list[np.ndarray]) -> np.ndarray:
    return np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8)


def _check_frames(frames: np.ndarray) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected [T, H, W, 3] frames, got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames, got {frames.dtype}")

"""Video files as uint8 frame arrays ``[T, H, W, 3]`` (RGB), with PyAV.

Writing uses H.264 in its RGB flavour (``libx264rgb``, ``crf 0``): lossless, so decoded frames equal the rendered
ones bit for bit, and small for mostly static scenes (inter-frame coding). Some desktop players cannot show RGB
H.264; every FFmpeg-based reader (PyAV, ffmpeg, decord) can. ``.npz`` files (key ``frames``) are read too.
"""

from __future__ import annotations

from pathlib import Path

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
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path) as z:
            frames = z["frames"]
    else:
        import av

        with av.open(str(path)) as src:
            frames = np.stack([f.to_ndarray(format="rgb24") for f in src.decode(video=0)])
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected [T, H, W, 3] frames, got shape {frames.shape}")
    if num_frames is not None:
        frames = frames[sample_indices(len(frames), num_frames)]
    return frames

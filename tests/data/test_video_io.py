"""Video files: lossless mp4 and npz round trips, uniform frame sampling, clear errors on bad files."""

from __future__ import annotations

import numpy as np
import pytest

from vtprune.data.dataset import load_clip, load_video
from vtprune.data.video import read_video, sample_indices, write_video
from vtprune.errors import InputError
from vtprune.testbed.tasks import make_video_sample


@pytest.mark.parametrize("suffix", [".mp4", ".npz"])
def test_round_trip_is_exact(tmp_path, suffix):
    frames = make_video_sample("motion", 0).frames  # [16, 224, 224, 3]
    noisy = frames.copy()
    noisy[3] = np.random.default_rng(0).integers(0, 256, noisy[3].shape, dtype=np.uint8)  # worst case for a codec
    path = tmp_path / f"v{suffix}"
    write_video(path, noisy)
    back = read_video(path)
    assert back.shape == noisy.shape and back.dtype == np.uint8
    assert np.array_equal(back, noisy)
    pil = load_video(path, num_frames=4)
    assert len(pil) == 4 and pil[0].mode == "RGB" and pil[0].size == (224, 224)
    assert np.array_equal(np.asarray(pil[1]), noisy[sample_indices(16, 4)[1]])


def test_sample_indices():
    assert sample_indices(16, 16) == list(range(16))
    assert sample_indices(16, 4) == [2, 6, 10, 14]
    assert sample_indices(3, 6) == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError):
        sample_indices(0, 2)


def test_load_video_errors(tmp_path):
    with pytest.raises(InputError, match=r"cannot read video .*missing\.mp4"):
        load_video(tmp_path / "missing.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(InputError, match="cannot read video"):
        load_video(tmp_path / "junk.mp4")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04broken")
    with pytest.raises(InputError, match="cannot read video"):
        load_video(tmp_path / "junk.npz")
    with pytest.raises(InputError, match="num_frames"):
        load_video(tmp_path / "junk.mp4", num_frames=0)
    with pytest.raises(ValueError):
        write_video(tmp_path / "x.mp4", np.zeros((2, 8, 8), np.uint8))


def test_load_clip_gives_the_sampled_frames_rate(tmp_path):
    """A resampled clip keeps its duration: 4 of 16 frames at 8 fps are 2 fps (what Qwen2.5-VL's time axis reads)."""
    from vtprune.data.dataset import sample_for_record
    from vtprune.data.dataset import Record

    frames = make_video_sample("motion", 0).frames
    write_video(tmp_path / "v.mp4", frames)
    clip, fps = load_clip(tmp_path / "v.mp4", 4, 8.0)
    assert len(clip) == 4 and fps == 2.0 and np.array_equal(np.asarray(clip[1]), frames[sample_indices(16, 4)[1]])
    assert load_clip(tmp_path / "v.mp4", None, 8.0)[1] == 8.0 and load_clip(tmp_path / "v.mp4", 4)[1] is None
    s = sample_for_record(Record("a", "q", ["x"], video=tmp_path / "v.mp4", fps=24.0), num_frames=8)
    assert len(s.video) == 8 and s.fps == 12.0
    assert sample_for_record(Record("a", "q", ["x"], video=tmp_path / "v.mp4"), num_frames=8).fps is None
    with pytest.raises(InputError, match="num_frames"):
        load_clip(tmp_path / "v.mp4", 0)
    with pytest.raises(InputError, match="fps must be a finite number > 0, got -1"):
        load_clip(tmp_path / "v.mp4", 4, -1)


def _audio_only_mp4(path) -> None:
    import av

    with av.open(str(path), "w") as out:
        s = out.add_stream("aac", rate=8000)
        s.layout = "mono"
        for i in range(3):
            fr = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            fr.sample_rate, fr.pts = 8000, i * 1024
            for pk in s.encode(fr):
                out.mux(pk)
        for pk in s.encode():
            out.mux(pk)


def test_files_without_usable_frames_are_input_errors(tmp_path):
    """An audio-only mp4 (IndexError inside PyAV before), float frames in an .npz (TypeError in PIL before), an .npz
    without a ``frames`` array, and an empty one: each one ``InputError`` naming the file and the reason."""
    _audio_only_mp4(tmp_path / "audio.mp4")
    np.savez(tmp_path / "float.npz", frames=np.zeros((4, 8, 8, 3)))
    np.savez(tmp_path / "other.npz", pixels=np.zeros((4, 8, 8, 3), np.uint8))
    np.savez(tmp_path / "empty.npz", frames=np.zeros((0, 8, 8, 3), np.uint8))
    for name, reason in [("audio.mp4", "no video stream"), ("float.npz", "uint8"), ("other.npz", "'frames'"),
                         ("empty.npz", "no frames")]:
        for n in (None, 4):
            with pytest.raises(InputError, match=f"cannot read video .*{name}: .*{reason}"):
                load_clip(tmp_path / name, n)


@pytest.mark.parametrize("fps", [float("inf"), float("nan"), 0, "2", True])
def test_load_clip_rejects_non_finite_or_non_numeric_fps(tmp_path, fps):
    write_video(tmp_path / "v.mp4", make_video_sample("motion", 0).frames[:4])
    with pytest.raises(InputError, match="fps must be a finite number > 0"):
        load_clip(tmp_path / "v.mp4", 2, fps)


def test_sampled_decode_equals_full_decode_and_reports_the_file_length(tmp_path):
    """Decoding only the sampled frames (memory flat in the clip's length; BENCHMARKS.md #24) picks the very frames
    a full decode followed by sampling picks, for fewer, as many and more frames than the file holds."""
    from vtprune.data.video import read_frames

    frames = make_video_sample("motion", 0).frames  # 16 frames
    write_video(tmp_path / "v.mp4", frames)
    for n in (1, 3, 4, 16, 20):
        got, total = read_frames(tmp_path / "v.mp4", n)
        assert total == 16 and np.array_equal(got, frames[sample_indices(16, n)])

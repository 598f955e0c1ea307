"""Video as HF sizes it (#23 item 3): frames are resized with the family's video processor settings, read in
``AutoVideoProcessor``'s order (processor_config.json's ``video_processor``, video_preprocessor_config.json, then
preprocessor_config.json), not with the image budget. HF's video processors need torchvision (absent here), so the
sizing rule is compared where it can be: transformers' own ``smart_resize`` functions, and the grid / token counts
the real checkpoints' files imply (tests/data/hf, sources in SOURCES.md)."""

from __future__ import annotations

import ast
import inspect
import json
import math
from pathlib import Path

import pytest

import vtprune
from tests.conftest import make_image
from vtprune.adapters import get_adapter
from vtprune.adapters.qwen3_vl import clip_smart_resize
from vtprune.hub import video_processor_config

HF = Path(__file__).resolve().parent.parent / "data" / "hf"
QWEN25 = json.loads((HF / "Qwen2.5-VL-7B-Instruct" / "preprocessor_config.json").read_text())
QWEN3_VIDEO = json.loads((HF / "Qwen3-VL-8B-Instruct" / "video_preprocessor_config.json").read_text())
QWEN3_IMAGE = json.loads((HF / "Qwen3-VL-8B-Instruct" / "preprocessor_config.json").read_text())


def hf_smart_resize_2():
    """transformers' Qwen2-VL ``smart_resize`` (the video processor calls the same rule per frame)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    return smart_resize


def hf_smart_resize_3():
    """transformers' Qwen3-VL video ``smart_resize``, read from its module's source: importing that module needs
    torchvision."""
    import transformers.models.qwen3_vl as pkg

    src = (Path(pkg.__file__).parent / "video_processing_qwen3_vl.py").read_text()
    fn = next(n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef) and n.name == "smart_resize")
    scope = {"math": math}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), "video_processing_qwen3_vl.py", "exec"), scope)
    return scope["smart_resize"]


def adapter_with(vlm, config):
    return get_adapter(vlm.model, vlm.tokenizer, vlm.image_processor, video_config=config)


def test_checkpoint_files_are_read_in_hfs_order(tmp_path):
    assert video_processor_config(tmp_path) is None
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(QWEN25))
    assert video_processor_config(tmp_path) == QWEN25  # no video file: the image one, as AutoVideoProcessor
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps({"size": {"shortest_edge": 1}}))
    assert video_processor_config(tmp_path) == {"size": {"shortest_edge": 1}}
    (tmp_path / "processor_config.json").write_text(json.dumps({"video_processor": {"fps": 1}}))
    assert video_processor_config(tmp_path) == {"fps": 1}  # the nested v5 layout comes first


def test_a_loaded_folder_carries_its_video_settings(tmp_path, vlms):
    vlm = vlms["qwen2_5_vl"]
    vlm.model.save_pretrained(tmp_path)
    vlm.tokenizer.save_pretrained(tmp_path)
    vlm.image_processor.save_pretrained(tmp_path)
    video = {"size": {"shortest_edge": 56 * 56, "longest_edge": 112 * 112}}
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps(video))
    loaded = vtprune.load(str(tmp_path))
    assert loaded.adapter.video_settings()["size"] == video["size"]
    batch = loaded.adapter.encode([vtprune.Sample("q", video=[make_image(448, 224, i) for i in range(2)])])
    # 448x224 -> the video budget (at most 112*112 pixels a frame): smart_resize gives 56x140 -> 4x10 patches
    assert hf_smart_resize_2()(224, 448, factor=28, min_pixels=56 * 56, max_pixels=112 * 112) == (56, 140)
    assert batch.model_inputs["video_grid_thw"].tolist() == [[1, 4, 10]]


def test_qwen25_real_checkpoint_sizes_video_with_its_preprocessor_limits(vlms):
    """Qwen2.5-VL-7B-Instruct ships no video file: HF's video processor reads min/max pixels 3136 / 12845056 from
    preprocessor_config.json (``Qwen2VLVideoProcessor.__init__`` maps them onto ``size``), so a 1280x720 clip of 4
    frames is sized 728x1288: 2 temporal patches of 52 x 92 patches, 1196 video tokens each, 2392 in all."""
    a = adapter_with(vlms["qwen2_5_vl"], QWEN25)
    assert a.video_settings()["size"] == {"shortest_edge": 3136, "longest_edge": 12845056}
    assert a.video_frame_size(4, 720, 1280) == hf_smart_resize_2()(720, 1280, 28, 3136, 12845056) == (728, 1288)
    frames = [make_image(1280, 720, i) for i in range(4)]
    batch = a.encode([vtprune.Sample("what moved?", video=frames)])
    assert batch.model_inputs["video_grid_thw"].tolist() == [[2, 52, 92]]
    assert int(a.video_mask(batch).sum()) == 2 * 52 * 92 // 4 == 2392


def test_a_video_budget_apart_from_the_image_one_is_followed(vlms):
    """With Qwen2-VL's own video defaults (size 128*28*28 .. 768*28*28 pixels a frame) a 1280x720 frame shrinks to
    560x1008, where the image settings would keep 728x1288: frames follow the video budget."""
    a = adapter_with(vlms["qwen2_vl"], {"size": {"shortest_edge": 128 * 28 * 28, "longest_edge": 28 * 28 * 768}})
    assert a.video_frame_size(4, 720, 1280) == hf_smart_resize_2()(720, 1280, 28, 100352, 602112) == (560, 1008)
    batch = a.encode([vtprune.Sample("q", video=[make_image(1280, 720, i) for i in range(4)])])
    assert batch.model_inputs["video_grid_thw"].tolist() == [[2, 40, 72]]
    # a config without any size takes the family's video processor defaults, not the image processor's
    assert adapter_with(vlms["qwen2_vl"], {}).video_settings()["size"] == {"shortest_edge": 100352,
                                                                            "longest_edge": 602112}


def test_cap_pixels_per_frame_bounds_the_clip(vlms):
    """``cap_pixels_per_frame``: each frame gets at most its share of 90% of ``max_video_tokens`` tokens' pixels
    (``Qwen2VLVideoProcessor.resize``): 100 tokens, 4 frames -> 35280 pixels a frame -> 140x224."""
    a = adapter_with(vlms["qwen2_5_vl"], {**QWEN25, "cap_pixels_per_frame": True, "max_video_tokens": 100})
    assert a.video_frame_size(4, 720, 1280) == hf_smart_resize_2()(720, 1280, 28, 3136, 35280) == (140, 224)


def test_a_model_built_in_memory_sizes_video_with_its_image_settings(vlms):
    """No checkpoint folder: the image processor's settings, as its saved preprocessor_config.json would give
    them to HF (what random: and the zoo's folders do; their recorded video pixels stand, test_templates)."""
    a = vlms["qwen2_5_vl"].adapter
    assert a.video_config is None and a.video_settings()["size"] == vlms["qwen2_5_vl"].image_processor.to_dict()["size"]


@pytest.mark.parametrize("t, h, w", [(2, 720, 1280), (4, 720, 1280), (3, 480, 640), (16, 1080, 1920), (8, 20, 600),
                                     (64, 224, 224), (5, 100, 3000), (768, 720, 1280)])
@pytest.mark.parametrize("lo, hi", [(4096, 25165824), (65536, 16777216), (128 * 32 * 32, 32 * 32 * 768)])
def test_qwen3_clip_rule_equals_transformers(t, h, w, lo, hi):
    want = hf_smart_resize_3()(t, h, w, temporal_factor=2, factor=32, min_pixels=lo, max_pixels=hi)
    assert clip_smart_resize(t, h, w, temporal_factor=2, factor=32, min_pixels=lo, max_pixels=hi) == want


def test_qwen3_real_checkpoint_video_budget_covers_the_clip(vlms):
    """Qwen3-VL-8B-Instruct's video file: 4096 .. 25165824 pixels for the whole clip. 16 frames of 1920x1080 are
    over it, so each frame shrinks to 928x1664 (the budget shared by the frames); without the video file HF falls
    back to the image file's 65536 .. 16777216."""
    q3 = vlms["qwen3_vl"]
    a = adapter_with(q3, QWEN3_VIDEO)
    assert a.video_settings()["size"] == {"shortest_edge": 4096, "longest_edge": 25165824}
    assert a.video_frame_size(16, 1080, 1920) == hf_smart_resize_3()(16, 1080, 1920, 2, 32, 4096, 25165824)
    assert a.video_frame_size(16, 1080, 1920) == (928, 1664)
    # Qwen3VLVideoProcessor takes size alone: min/max pixel keys leave its defaults
    assert adapter_with(q3, {"min_pixels": 1, "max_pixels": 2}).video_settings()["size"] == {
        "shortest_edge": 128 * 32 * 32, "longest_edge": 32 * 32 * 768}
    fallback = adapter_with(q3, QWEN3_IMAGE)
    assert fallback.video_frame_size(16, 1080, 1920) == hf_smart_resize_3()(16, 1080, 1920, 2, 32, 65536, 16777216)
    batch = a.encode([vtprune.Sample("q", video=[make_image(640, 360, i) for i in range(4)])])
    rh, rw = hf_smart_resize_3()(4, 360, 640, 2, 32, 4096, 25165824)
    assert batch.model_inputs["video_grid_thw"].tolist() == [[2, rh // 16, rw // 16]]
    # every temporal patch is its own item with its timestamp: 2 x (rh/32 * rw/32) video tokens
    assert int(a.video_mask(batch).sum()) == 2 * (rh // 32) * (rw // 32)


def test_frames_of_different_sizes_are_refused(vlms):
    with pytest.raises(vtprune.InputError, match="same size"):
        vlms["qwen2_5_vl"].adapter.encode([vtprune.Sample("q", video=[make_image(56, 56, 0), make_image(84, 56, 1)])])


def hf_sample_frames(family: str):
    """transformers' ``sample_frames`` of the family's video processor, read from its module's source (the module
    needs torchvision), as a function of (processor settings, metadata, ...)."""
    import numpy as np
    import torch
    import transformers.models as models
    from transformers.utils import logging
    from transformers.video_utils import VideoMetadata

    mod, cls = {"qwen2_vl": ("qwen2_vl/video_processing_qwen2_vl.py", "Qwen2VLVideoProcessor"),
                "qwen3_vl": ("qwen3_vl/video_processing_qwen3_vl.py", "Qwen3VLVideoProcessor")}[family]
    tree = ast.parse((Path(models.__file__).parent / mod).read_text())
    klass = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls)
    fn = next(n for n in klass.body if isinstance(n, ast.FunctionDef) and n.name == "sample_frames")
    scope = {"math": math, "np": np, "torch": torch, "VideoMetadata": VideoMetadata,
             "logger": logging.get_logger("test")}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), mod, "exec"), scope)
    return scope["sample_frames"]


@pytest.mark.parametrize("total, fps", [(40, 10.0), (300, 30.0), (7, 25.0), (3, 2.0), (2000, 24.0), (90, None)])
def test_qwen3_samples_frames_as_hf(vlms, total, fps):
    """Qwen3-VL's video processor samples 2 frames a second by default (the real checkpoint's file says so too);
    a file of unknown rate counts as 24 fps."""
    from types import SimpleNamespace

    from transformers.video_utils import VideoMetadata

    hf = hf_sample_frames("qwen3_vl")
    proc = SimpleNamespace(fps=2, min_frames=4, max_frames=768)
    want = hf(proc, VideoMetadata(total_num_frames=total, fps=fps)).tolist()
    for config in (QWEN3_VIDEO, QWEN3_IMAGE):
        assert adapter_with(vlms["qwen3_vl"], config).video_frame_indices(total, fps) == want


@pytest.mark.parametrize("total, fps", [(40, 10.0), (300, 30.0), (9, 3.0), (2000, 24.0)])
def test_qwen2_samples_frames_only_when_its_settings_ask(vlms, total, fps):
    """Qwen2/2.5-VL's video processor keeps every frame by default (Qwen2.5-VL-7B's files set nothing); with
    ``do_sample_frames`` and an ``fps`` it samples as HF's ``sample_frames``."""
    from types import SimpleNamespace

    from transformers.video_utils import VideoMetadata

    a = adapter_with(vlms["qwen2_5_vl"], QWEN25)
    assert a.video_frame_indices(total, fps) is None
    hf = hf_sample_frames("qwen2_vl")
    proc = SimpleNamespace(num_frames=None, fps=2, temporal_patch_size=2, min_frames=4, max_frames=768)
    want = hf(proc, VideoMetadata(total_num_frames=total, fps=fps)).tolist()
    sampled = adapter_with(vlms["qwen2_5_vl"], {**QWEN25, "do_sample_frames": True, "fps": 2})
    assert sampled.video_frame_indices(total, fps) == want
    with pytest.raises(vtprune.InputError, match="frame rate is unknown"):
        sampled.video_frame_indices(total, None)


def test_a_video_file_is_read_at_the_sampled_frames(tmp_path, vlms):
    """A file without a frame count from the user or the model's processing default: the family's sampling picks
    the frames (here Qwen3-VL's 2 fps of a 12-frame 4 fps clip: 6 frames, 0, 2, 4, 7, 9, 11)."""
    import numpy as np

    from vtprune.data.dataset import load_clip
    from vtprune.data.video import read_video, write_video

    clip = np.stack([np.full((32, 32, 3), 20 * i, np.uint8) for i in range(12)])
    write_video(tmp_path / "v.mp4", clip, fps=4)
    a = adapter_with(vlms["qwen3_vl"], QWEN3_VIDEO)
    assert a.video_frame_indices(12, 4.0) == [0, 2, 4, 7, 9, 11]
    frames, _ = load_clip(tmp_path / "v.mp4", None, None, a.video_frame_indices)
    every = read_video(tmp_path / "v.mp4")
    assert [np.asarray(f).tolist() for f in frames] == [every[i].tolist() for i in [0, 2, 4, 7, 9, 11]]
    assert len(load_clip(tmp_path / "v.mp4", 3, None, a.video_frame_indices)[0]) == 3  # a frame count wins
    assert len(load_clip(tmp_path / "v.mp4")[0]) == 12  # no picker: every frame

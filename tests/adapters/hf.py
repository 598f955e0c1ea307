"""HF's own processors for the tiny models, built as the checkpoints' documentation uses them (the reference of
the prompt and generation tests)."""

from __future__ import annotations

from typing import Any


def qwen_processor(vlm: Any, monkeypatch: Any, video_processor: Any = None) -> Any:
    """HF's Qwen2/2.5/3-VL processor (Qwen3.5's is Qwen3-VL's) built from parts: its video processor needs
    torchvision, so the constructor is let through with none or a stand-in (ENV.md); text and images go through HF's
    own code."""
    import transformers
    from transformers.processing_utils import ProcessorMixin

    check = ProcessorMixin.check_argument_for_proper_class
    monkeypatch.setattr(ProcessorMixin, "check_argument_for_proper_class", lambda self, name, arg: (
        None if arg is None or name == "video_processor" else check(self, name, arg)))
    cls = {"qwen2_5_vl": transformers.Qwen2_5_VLProcessor, "qwen2_vl": transformers.Qwen2VLProcessor,
           "qwen3_vl": transformers.Qwen3VLProcessor, "qwen3_5": transformers.Qwen3VLProcessor}  # as AutoProcessor maps
    return cls[vlm.model.config.model_type](image_processor=vlm.image_processor, tokenizer=vlm.tokenizer,
                                            video_processor=video_processor, chat_template=vlm.adapter.template)


def molmo2_processor(vlm: Any, monkeypatch: Any) -> Any:
    """HF's ``Molmo2Processor`` built from parts: its image and video processors need torchvision, so vtprune's
    ``Molmo2Processing`` (HF's own preprocessing code, torch resize) stands in, given the loading hooks HF's processor
    calls (identity here: the inputs are PIL images already) and the metadata its video path reads (no fps: HF's
    ``max_fps`` default)."""
    import transformers
    from transformers.image_processing_utils import BatchFeature
    from transformers.processing_utils import ProcessorMixin
    from transformers.video_utils import VideoMetadata

    class Images(type(vlm.image_processor)):
        def fetch_images(self, images: Any) -> Any:
            return images

        def __call__(self, images: Any = None, **_: Any) -> Any:
            return super().__call__(images=images)

    class Videos(type(vlm.image_processor)):
        def fetch_videos(self, videos: Any, **_: Any) -> Any:
            return videos

        def __call__(self, videos: Any = None, **_: Any) -> Any:
            out = super().__call__(videos=videos)
            return BatchFeature(dict(out, video_metadata=[VideoMetadata(total_num_frames=len(v)) for v in videos]))

    p = vlm.image_processor
    kw = dict(size=p.size, patch_size=p.patch_size, pooling_size=p.pooling_size,
              video_pooling_size=p.video_pooling_size, max_crops=p.max_crops, overlap_margins=p.overlap_margins)
    monkeypatch.setattr(ProcessorMixin, "check_argument_for_proper_class", lambda self, name, arg: None)
    return transformers.Molmo2Processor(image_processor=Images(**kw), video_processor=Videos(**kw),
                                        tokenizer=vlm.tokenizer, chat_template=vlm.adapter.template)


def llava_onevision_processor(vlm: Any, monkeypatch: Any) -> Any:
    """HF's ``LlavaOnevisionProcessor`` built from parts: the PIL image processor the model uses, no video processor
    (it needs torchvision); token counts from the model's config as the real checkpoint's processor_config sets them."""
    import transformers
    from transformers.processing_utils import ProcessorMixin

    check = ProcessorMixin.check_argument_for_proper_class
    monkeypatch.setattr(ProcessorMixin, "check_argument_for_proper_class", lambda self, name, arg: (
        None if arg is None or name == "video_processor" else check(self, name, arg)))
    cfg = vlm.model.config
    side = int(cfg.vision_config.image_size) // int(cfg.vision_config.patch_size)
    return transformers.LlavaOnevisionProcessor(
        image_processor=vlm.image_processor, tokenizer=vlm.tokenizer, video_processor=None,
        num_image_tokens=side * side, vision_feature_select_strategy=cfg.vision_feature_select_strategy,
        chat_template=vlm.adapter.template, image_token="<image>", video_token="<video>",
        vision_aspect_ratio=cfg.vision_aspect_ratio)


def internvl_processor(vlm: Any, monkeypatch: Any) -> Any:
    """HF's ``InternVLProcessor`` built from parts: the PIL GOT-OCR2 image processor with ``crop_to_patches`` on (as
    InternVL3-hf's preprocessor_config.json sets it), no video processor (it needs torchvision); the random tokenizer
    names its image tokens as InternVL3-hf's does (``start_image_token`` ...), their ids are looked up here (a real
    tokenizer derives them from its ``extra_special_tokens``)."""
    import copy

    import transformers
    from transformers.processing_utils import ProcessorMixin

    monkeypatch.setattr(ProcessorMixin, "check_argument_for_proper_class", lambda self, name, arg: None)
    tok = copy.deepcopy(vlm.tokenizer)
    for name in ("start_image_token", "end_image_token", "context_image_token"):  # named by the family spec
        setattr(tok, name + "_id", tok.convert_tokens_to_ids(getattr(tok, name)))
    images = copy.deepcopy(vlm.image_processor)
    images.crop_to_patches = True
    return transformers.InternVLProcessor(image_processor=images, tokenizer=tok, video_processor=None,
                                          image_seq_length=vlm.adapter.tile_side ** 2,
                                          chat_template=vlm.adapter.template)


def processor_images(vlm: Any, images: list[Any]) -> Any:
    """A sample's images as HF's processor takes one sample's: LLaVA-OneVision's groups them per sample (several
    images in one sample get base views only), the others take the flat list."""
    if not images:
        return None
    return [list(images)] if vlm.model.config.model_type == "llava_onevision" else list(images)


def hf_processor(vlm: Any, monkeypatch: Any) -> Any:
    import transformers

    if vlm.model.config.model_type == "molmo2":
        return molmo2_processor(vlm, monkeypatch)
    if vlm.model.config.model_type == "llava_onevision":
        return llava_onevision_processor(vlm, monkeypatch)
    if vlm.model.config.model_type == "internvl":
        return internvl_processor(vlm, monkeypatch)

    if vlm.model.config.model_type == "llava":
        return transformers.LlavaProcessor(image_processor=vlm.image_processor, tokenizer=vlm.tokenizer,
                                           chat_template=vlm.adapter.template, patch_size=14,
                                           vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                           image_token="<image>")
    return qwen_processor(vlm, monkeypatch)

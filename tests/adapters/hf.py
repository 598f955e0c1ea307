"""HF's own processors for the tiny models, built as the checkpoints' documentation uses them (the reference of
the prompt and generation tests)."""

from __future__ import annotations

from typing import Any


def qwen_processor(vlm: Any, monkeypatch: Any, video_processor: Any = None) -> Any:
    """HF's Qwen2/2.5-VL processor built from parts: its video processor needs torchvision, so the constructor is
    let through with none or a stand-in (ENV.md); text and images go through HF's own code."""
    import transformers
    from transformers.processing_utils import ProcessorMixin

    check = ProcessorMixin.check_argument_for_proper_class
    monkeypatch.setattr(ProcessorMixin, "check_argument_for_proper_class", lambda self, name, arg: (
        None if arg is None or name == "video_processor" else check(self, name, arg)))
    cls = {"qwen2_5_vl": transformers.Qwen2_5_VLProcessor, "qwen2_vl": transformers.Qwen2VLProcessor,
           "qwen3_vl": transformers.Qwen3VLProcessor}
    return cls[vlm.model.config.model_type](image_processor=vlm.image_processor, tokenizer=vlm.tokenizer,
                                            video_processor=video_processor, chat_template=vlm.adapter.template)


def hf_processor(vlm: Any, monkeypatch: Any) -> Any:
    import transformers

    if vlm.model.config.model_type == "llava":
        return transformers.LlavaProcessor(image_processor=vlm.image_processor, tokenizer=vlm.tokenizer,
                                           chat_template=vlm.adapter.template, patch_size=14,
                                           vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                           image_token="<image>")
    return qwen_processor(vlm, monkeypatch)

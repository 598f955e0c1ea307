"""The public API checks its arguments: each wrong type or value raises a VtpruneError subclass naming the argument
(never an AttributeError, a bare TypeError/AssertionError, or a silent coercion such as layer=1.7 -> 1)."""

from __future__ import annotations

import math

import pytest

import vtprune
from tests.conftest import make_image
from vtprune import ConfigError, InputError, ModelLoadError, Sample, UnknownMethodError, VtpruneError, load, pruner
from vtprune.methods.registry import _METHODS

IMG = make_image(56, 56)


@pytest.mark.parametrize("call, error, needle", [
    (lambda: load(None), ModelLoadError, "name"),
    (lambda: load(123), ModelLoadError, "name"),
    (lambda: load(""), ModelLoadError, "name"),
    (lambda: load("random:qwen2_5_vl", device="cuda:7"), ConfigError, "device 'cuda:7'"),
    (lambda: load("random:qwen2_5_vl", device="nonsense"), ConfigError, "device 'nonsense'"),
    (lambda: load("random:qwen2_5_vl", lora=5), ConfigError, "lora"),
    (lambda: load("random:qwen2_5_vl", vit_attention=None), ConfigError, "vit_attention"),
    (lambda: pruner(None), UnknownMethodError, "method name"),
    (lambda: pruner(42), UnknownMethodError, "method name"),
    (lambda: pruner("random", keep=0.5, layer="x"), ConfigError, "layer"),
    (lambda: pruner("random", keep=0.5, layer=1.7), ConfigError, "layer"),
    (lambda: pruner("random", keep=0.5, seed="x"), ConfigError, "seed"),
    (lambda: pruner("random", keep=math.nan), ConfigError, "keep"),
    (lambda: pruner("random", keep=True), ConfigError, "keep"),
    (lambda: pruner("random", keep="0.5"), ConfigError, "keep"),
    (lambda: pruner("pdrop", keep=0.5, fractions=[0.2, math.nan]), ConfigError, "fractions"),
    (lambda: pruner("dart", keep=0.5, pivots=2.5), ConfigError, "pivots"),
    (lambda: pruner("visionzip", keep=0.5, per_frame="yes"), ConfigError, "per_frame"),
    (lambda: pruner("vispruner", keep=0.5, important_ratio=math.inf), ConfigError, "important_ratio"),
    (lambda: Sample(None), InputError, "question"),
    (lambda: Sample("q", images=None), InputError, "images"),
    (lambda: Sample("q", images=IMG), InputError, "images"),
    (lambda: Sample("q", images=["a.png"]), InputError, "images"),
    (lambda: Sample("q", video="clip.mp4"), InputError, "video"),
    (lambda: Sample("q", video=[IMG], fps="2"), InputError, "fps"),
    (lambda: Sample("q", video=[IMG], fps=math.inf), InputError, "fps"),
    (lambda: Sample("q", video=[IMG], fps=-1), InputError, "fps"),
])
def test_wrong_arguments_raise_typed_errors_naming_them(call, error, needle):
    with pytest.raises(error, match=needle):
        call()


def test_every_method_class_checks_its_settings():
    """Each registered method class refuses a wrong type and a non-finite number in its own settings."""
    import dataclasses

    for name, cls in sorted(_METHODS.items()):
        with pytest.raises(ConfigError, match="keep"):
            cls(keep=math.nan)
        with pytest.raises(ConfigError, match="keep"):
            cls(keep="all")
        for f in dataclasses.fields(cls):
            if f.name in ("keep", "layer") or not f.init or f.default is dataclasses.MISSING:
                continue
            if isinstance(f.default, bool):
                bad = "yes"
            elif isinstance(f.default, (int, float)):
                bad = math.nan if isinstance(f.default, float) else "x"
            else:
                continue
            with pytest.raises(ConfigError, match=f.name):
                cls(keep=0.5, **{f.name: bad})


@pytest.fixture(scope="module")
def qwen() -> vtprune.VLM:
    return load("random:qwen2_5_vl")


@pytest.mark.parametrize("kwargs, needle", [
    (dict(samples=Sample("q", [IMG])), "one Sample"),
    (dict(samples=None), "samples"),
    (dict(samples=["q"]), "samples"),
    (dict(method=42), "method"),
    (dict(method="nosuch"), "unknown method"),
    (dict(temperature=math.nan), "temperature"),
    (dict(temperature=-1), "temperature"),
    (dict(top_p=0), "top_p"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_new_tokens=2.5), "max_new_tokens"),
    (dict(seed="x"), "seed"),
])
def test_generate_checks_its_arguments(qwen, kwargs, needle):
    kwargs = {"samples": [Sample("q", [IMG])], **kwargs}
    with pytest.raises(VtpruneError, match=needle):
        qwen.generate(kwargs.pop("samples"), **kwargs)


def test_an_image_the_processor_refuses_is_an_input_error(qwen):
    with pytest.raises(InputError, match="aspect ratio"):
        qwen.generate([Sample("q", [make_image(5000, 20)])], max_new_tokens=1)

"""The family seam: one spec per family, registered once, and capabilities a family lacks refused with a reason."""

from __future__ import annotations

import pytest

import vtprune
from tests.conftest import make_image
from vtprune.adapters import family_spec, family_specs, supported_families
from vtprune.adapters.spec import FamilySpec, register_family
from vtprune.bench.shapes import get_shape, shapes
from vtprune.errors import ModelLoadError, UnsupportedModelError


def test_every_adapter_family_has_a_spec_and_the_reverse():
    assert {s.name for s in family_specs()} == set(supported_families())


def test_every_shape_belongs_to_its_family():
    for spec in family_specs():
        for s in spec.shapes:
            assert s.family == spec.name and get_shape(s.name) is s
    assert len(shapes()) == sum(len(s.shapes) for s in family_specs())


def test_unknown_family_lists_the_known_ones():
    with pytest.raises(ModelLoadError, match="qwen3_vl"):
        vtprune.load("random:nope")


def test_a_family_registers_once():
    with pytest.raises(ValueError, match="twice"):
        register_family(FamilySpec("llava", "X", family_spec("llava").random_config, lambda: None))


def test_vit_site_on_a_family_without_it_is_refused(vlms):
    vlm = vlms["llava"]
    assert not vlm.adapter.supports_vit_site
    with pytest.raises(UnsupportedModelError, match="not supported by this family"):
        vlm.adapter.vision_plan(None, None)
    with pytest.raises(UnsupportedModelError, match="not supported by this family"):
        vlm.generate([vtprune.Sample("q", [make_image(56, 56)])], vtprune.pruner("stts", keep=0.5))


@pytest.mark.parametrize("name, params", [("qwen3_vl-4b", 4.44e9), ("llava_onevision-7b", 8.03e9),
                                          ("internvl-3-8b", 7.94e9)])
def test_new_family_shapes_have_the_model_cards_parameter_count(name, params):
    import torch

    from vtprune.adapters.spec import family_tokenizer
    from vtprune.bench.shapes import hf_config

    s = get_shape(name)
    with torch.device("meta"):
        model = family_spec(s.family).model_cls()(hf_config(s, family_tokenizer(s.family), s.layers, s.vit_layers))
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(params, rel=0.01)


def test_family_names_stay_inside_adapters():
    """Family knowledge lives in ``adapters/``: outside it, at most three files name a family (the package's doc
    example, the shipped zoo defaults in ``hub.py``, the official GlimpsePrune format's own ``model_type`` strings).
    The same search as ``grep -rln "qwen\\|llava\\|internvl\\|molmo" src/vtprune --include=*.py | grep -v adapters``."""
    import re
    from pathlib import Path

    src = Path(vtprune.__file__).resolve().parent
    names = {"qwen", "llava", "internvl", "molmo"} | {s.name for s in family_specs()}
    pattern = re.compile("|".join(sorted(map(re.escape, names))))
    found = sorted(str(p.relative_to(src)) for p in src.rglob("*.py")
                   if "adapters" not in p.relative_to(src).parts and pattern.search(p.read_text()))
    assert len(found) <= 3, found
    assert set(found) <= {"__init__.py", "hub.py", "methods/glimpse/official.py"}, found


def test_a_family_newer_than_the_installed_transformers_is_refused_in_one_line(monkeypatch, vlms):
    import transformers

    from vtprune.adapters import get_adapter

    assert family_spec("molmo2").min_transformers == "5.23"
    vlm = vlms.get("molmo2")
    monkeypatch.setattr(transformers, "__version__", "5.17.0")
    with pytest.raises(UnsupportedModelError, match=r"the molmo2 family needs transformers >= 5.23 \(installed: 5.17.0\)"):
        vtprune.load("random:molmo2")
    if vlm is not None:  # a checkpoint of the family met on an old transformers: refused at the adapter
        with pytest.raises(UnsupportedModelError, match="needs transformers >= 5.23"):
            get_adapter(vlm.model, vlm.tokenizer, vlm.image_processor)
    assert family_spec("qwen3_vl").available()  # no minimum beyond the package's floor

"""STTS learning: the LM loss reaches the scorer through the bias block, save/load keeps only the scorer, a short
``train_stts`` run, and composition with an LLM-side method."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import vtprune
from tests.methods.stts.helpers import load_small, stts_with_scorer, video
from vtprune.methods import Compose
from vtprune.methods.stts import STTS, STTSConfig
from vtprune.runtime.executor import prefill
from vtprune.training.stts import stts_loss, train_stts
from vtprune.training.supervised import encode_with_answers


@pytest.fixture(scope="module")
def vlm() -> vtprune.VLM:
    return load_small()


def _batch(vlm):
    samples = [vtprune.Sample("what moves?", video=video(6, 112, 84, 1)),
               vtprune.Sample("which side?", video=video(4, 84, 84, 2))]
    return encode_with_answers(vlm.adapter, samples, ["the bar", "left"])


def _scorer_grad(vlm, **settings) -> tuple[float, dict]:
    m = STTS(keep=0.5, **settings)
    m.init_scorer(STTSConfig.for_vision_config(vlm.model.config.vision_config))
    loss, parts = stts_loss(vlm.adapter, m, _batch(vlm))
    loss.backward()
    grads = [p.grad for p in m.scorer.parameters()]
    vlm.model.zero_grad(set_to_none=True)
    return sum(float(g.abs().sum()) for g in grads if g is not None), parts


def test_lm_loss_reaches_the_scorer_through_the_bias_block(vlm):
    g_lm, parts = _scorer_grad(vlm, temporal_weight=0.0)  # the LM loss alone
    assert g_lm > 0 and parts["temporal_loss"] == 0 and parts["visual_kept"] == pytest.approx(0.5)
    g_none, _ = _scorer_grad(vlm, temporal_weight=0.0, bias=False)  # no bias block: no path from the LM loss
    assert g_none == 0
    g_tmp, parts = _scorer_grad(vlm, bias=False)  # the temporal loss alone
    assert g_tmp > 0 and parts["temporal_loss"] > 0


def test_save_load_round_trip_saves_only_the_scorer(vlm, tmp_path):
    m = STTS(keep=0.4, block=1, seed=3)
    m.init_scorer(STTSConfig.for_vision_config(vlm.model.config.vision_config))
    m.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "vtprune_config.json"]
    state = load_file(str(tmp_path / "model.safetensors"))
    assert set(state) == {"scorer." + k for k in m.scorer.state_dict()}
    assert sum(v.numel() for v in state.values()) < sum(p.numel() for p in vlm.model.parameters()) / 10
    cfg = json.loads((tmp_path / "vtprune_config.json").read_text())
    assert cfg["method"] == "stts" and cfg["settings"]["block"] == 1 and cfg["vtprune_version"] == vtprune.__version__
    loaded = STTS.from_pretrained(tmp_path)
    assert loaded.to_dict() == {**m.to_dict(), "weights": str(tmp_path)}
    for a, b in zip(m.scorer.state_dict().values(), loaded.scorer.state_dict().values()):
        assert torch.equal(a, b)
    batch = vlm.adapter.encode([vtprune.Sample("q", video=video(8, 112, 84, 9))])
    assert prefill(vlm.adapter, batch, m).kept_visual[0].tolist() == prefill(vlm.adapter, batch, loaded).kept_visual[0].tolist()
    assert STTS.from_pretrained(tmp_path, keep=0.25).keep == 0.25
    with pytest.raises(vtprune.ConfigError):
        STTS.from_pretrained(tmp_path, layer=2)
    with pytest.raises(vtprune.ModelLoadError):
        STTS.from_pretrained(tmp_path / "nope")


def test_compose_stts_in_the_vit_then_random_after_layer_k(vlm):
    batch = vlm.adapter.encode([vtprune.Sample("what moves?", video=video(8, 112, 84, 4))])  # 48 units
    stts = stts_with_scorer(vlm, keep=0.5)
    both = vtprune.pruner("stts", keep=0.5, then=vtprune.pruner("random", keep=0.25, layer=2, seed=1))
    assert both == Compose([vtprune.pruner("stts", keep=0.5), vtprune.pruner("random", keep=0.25, layer=2, seed=1)])
    both = Compose([stts, vtprune.pruner("random", keep=0.25, layer=2, seed=1)])
    assert [s.site for s in both.stages(4)] == ["vit", "llm"]
    first = prefill(vlm.adapter, batch, stts)
    st = prefill(vlm.adapter, batch, both)
    assert first.kept_tokens == [24] and st.kept_tokens == [12]
    assert set(st.kept_visual[0].tolist()) <= set(first.kept_visual[0].tolist())
    n_text = int((~batch.visual_mask[0]).sum())
    lengths = [layer.keys.shape[2] for layer in st.cache.layers]
    assert lengths == [n_text + 12] * 4  # layers <= K are cut too: decoding never sees dropped tokens
    assert st.token_layers[0] == 24 * 3 + 12 * 1
    with pytest.raises(vtprune.ConfigError, match="both prune"):
        Compose([vtprune.pruner("random", keep=0.5, layer=1), vtprune.pruner("uniform", keep=0.5, layer=1)]).stages(4)


def test_train_stts_end_to_end(tmp_path, monkeypatch):
    rows = [(vtprune.Sample("what moves?", video=video(4, 84, 56, s)), ["bar"]) for s in range(2)]
    meta = train_stts(model="random:qwen2_5_vl", out=tmp_path, rows=rows, steps=2, batch_size=2, lr=1e-3,
                      tune="lora")
    assert meta["steps"] == 2 and meta["visual_kept"] == pytest.approx(0.5) and meta["temporal_loss_first"] > 0
    assert {"model.safetensors", "vtprune_config.json", "lora"} <= {p.name for p in tmp_path.iterdir()}
    m = STTS.from_pretrained(tmp_path)
    assert m.keep == 0.5 and m.scorer is not None
    from vtprune.training.stts import apply_lora

    vlm = load_small()
    apply_lora(vlm, tmp_path)
    assert type(vlm.adapter.layers[0].self_attn.q_proj) is torch.nn.Linear  # merged: stock modules again
    assert vlm.generate([rows[0][0]], m, max_new_tokens=2)[0].kept_tokens == 6
    # vtprune.load(..., lora=) merges the same adapter at load time (what `eval/ask/compare --lora` use)
    merged = vtprune.load("random:qwen2_5_vl", lora=tmp_path)
    plain = vtprune.load("random:qwen2_5_vl")
    q = "model.language_model.layers.0.self_attn.q_proj.weight"
    weights = [dict(v.model.named_parameters())[q] for v in (vlm, merged, plain)]
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[1], weights[2])
    # eval and compare run on the merged model and record the adapter; a prediction file from the adapted model
    # does not resume as the plain one's
    from PIL import Image

    from vtprune.eval.compare import run_compare
    from vtprune.eval.runner import run_eval

    Image.new("RGB", (56, 56), "red").save(tmp_path / "a.png")
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "a", "image": "a.png", "question": "colour?", "answers": ["red"]}) + "\n")
    preds = tmp_path / "p.jsonl"
    report = run_eval(model="random:qwen2_5_vl", data=str(data), lora=str(tmp_path), predictions=preds,
                      max_new_tokens=2)
    assert report["lora"] == str(tmp_path) and report["n"] == 1
    with pytest.raises(vtprune.ConfigError):
        run_eval(model="random:qwen2_5_vl", data=str(data), predictions=preds, max_new_tokens=2)
    summary = run_compare(model="random:qwen2_5_vl", data=str(data), methods=["random"], keeps=[0.5],
                          out=tmp_path / "cmp", lora=str(tmp_path), max_new_tokens=2)
    assert summary["lora"] == str(tmp_path) and [r["method"] for r in summary["rows"]] == ["none", "random"]
    # shipped to the zoo, the adapter travels with the scorer in half precision and merges by zoo name
    from vtprune import hub

    monkeypatch.setattr(hub, "ZOO_DIR", tmp_path / "zoo")
    hub.ship_model(tmp_path, "stts-tiny")
    assert json.loads((tmp_path / "zoo/stts-tiny/lora/adapter_config.json").read_text())["base_model_name_or_path"] \
        == "random:qwen2_5_vl"  # the model's name, not a path on the training machine
    shipped = load_file(str(tmp_path / "zoo/stts-tiny/lora/adapter_model.safetensors"))
    assert shipped and all(v.dtype == torch.float16 for v in shipped.values())
    from_zoo = vtprune.load("random:qwen2_5_vl", lora="zoo:stts-tiny")
    torch.testing.assert_close(dict(from_zoo.model.named_parameters())[q], weights[1], rtol=1e-3, atol=1e-4)


def test_lora_errors_and_unpaired_warning(tmp_path, caplog, capsys):
    from vtprune.cli import main
    from vtprune.methods.factory import warn_unpaired_tuning

    with pytest.raises(vtprune.ModelLoadError, match="no LoRA adapter"):
        vtprune.load("random:qwen2_5_vl", lora=tmp_path)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "a", "question": "q?", "answers": ["x"]}) + "\n")
    assert main(["eval", "--model", "random:qwen2_5_vl", "--data", str(data), "--lora", str(tmp_path / "nope")]) == 2
    assert "no LoRA adapter" in capsys.readouterr().err
    (tmp_path / "lora").mkdir()
    with caplog.at_level("WARNING"):
        warn_unpaired_tuning(str(tmp_path), None)
    assert "--lora" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        warn_unpaired_tuning(str(tmp_path), str(tmp_path))
        warn_unpaired_tuning("zoo:stts-synth-qwen2_5_vl", "zoo:stts-synth-qwen2_5_vl")
        warn_unpaired_tuning("zoo:no-such-entry", None)  # a bad name is for the loader to report
    assert caplog.text == ""
    with caplog.at_level("WARNING"):
        warn_unpaired_tuning("zoo:stts-synth-qwen2_5_vl", None)  # the shipped scorer was trained with its adapter
    assert "--lora zoo:stts-synth-qwen2_5_vl" in caplog.text


def test_warns_when_a_pruner_runs_on_another_base_model(tmp_path, caplog):
    from vtprune.methods.factory import warn_unpaired_tuning

    (tmp_path / "train_meta.json").write_text(json.dumps({"model": str(tmp_path / "base")}))
    with caplog.at_level("WARNING"):
        warn_unpaired_tuning(str(tmp_path), None, str(tmp_path / "base") + "/")  # the same directory, spelt apart
        warn_unpaired_tuning(str(tmp_path), None)  # no model to compare with
        warn_unpaired_tuning("zoo:stts-synth-qwen2_5_vl", "zoo:stts-synth-qwen2_5_vl", "zoo:synth-video-qwen2_5_vl")
        warn_unpaired_tuning("zoo:glimpse-synth-qwen2_5_vl", None, "zoo:synth-qwen2_5_vl")
    assert caplog.text == ""
    with caplog.at_level("WARNING"):
        warn_unpaired_tuning("zoo:stts-synth-qwen2_5_vl", "zoo:stts-synth-qwen2_5_vl", "zoo:synth-qwen2_5_vl")
    assert "trained on zoo:synth-video-qwen2_5_vl, not on zoo:synth-qwen2_5_vl" in caplog.text
    caplog.clear()
    (tmp_path / "train_meta.json").write_text("{not json")
    with caplog.at_level("WARNING"):
        warn_unpaired_tuning(str(tmp_path), None, "random:qwen2_5_vl")  # an unreadable record is not an error here
    assert caplog.text == ""


def test_cli_rejects_bad_settings(capsys, tmp_path):
    from vtprune.cli import main

    assert main(["train", "stts", "--out", str(tmp_path), "--model", "random:qwen2_5_vl", "--tune", "bogus"]) == 2
    assert "--tune must be one of" in capsys.readouterr().err
    assert main(["train", "stts", "--out", str(tmp_path), "--model", "random:qwen2_5_vl", "--temporal-loss", "l1"]) == 2
    assert "--temporal-loss must be one of" in capsys.readouterr().err
    for bad in ["0.2", "0.7,0.3", "0,0.5", "0.3,x"]:
        assert main(["train", "stts", "--out", str(tmp_path), "--model", "random:qwen2_5_vl", "--keep-range", bad]) == 2
        assert "--keep-range" in capsys.readouterr().err


def test_train_stts_with_a_keep_range_draws_each_step_and_saves_the_default(tmp_path):
    rows = [(vtprune.Sample("what moves?", video=video(8, 84, 56, s)), ["bar"]) for s in range(2)]
    meta = train_stts(model="random:qwen2_5_vl", out=tmp_path, rows=rows, steps=6, batch_size=2, lr=1e-3,
                      keep=0.5, keep_range=(0.2, 0.8), seed=1)
    assert meta["keep_range"] == (0.2, 0.8) and STTS.from_pretrained(tmp_path).keep == 0.5
    # the kept share varies from step to step (one fixed keep gives one share)
    assert meta["visual_kept_min"] < meta["visual_kept_max"]
    fixed = train_stts(model="random:qwen2_5_vl", out=tmp_path / "f", rows=rows, steps=3, batch_size=2, keep=0.5,
                       temporal_loss="bce")
    assert fixed["visual_kept_min"] == fixed["visual_kept_max"] == pytest.approx(0.5)
    assert fixed["temporal_loss"] == "bce" and STTS.from_pretrained(tmp_path / "f").temporal_loss == "bce"
    assert 0.0 <= fixed["saturated_last"] <= 1.0 and meta["temporal_loss"] == "mse"


def test_train_stts_full_saves_a_loadable_base_model(tmp_path, caplog):
    """``--tune full`` trains the base model with the scorer and saves it as ``base_model/``: a local model that loads
    with its frame sampling, whose weights moved, and which a run leaving it out is warned about."""
    from vtprune.methods.factory import warn_unpaired_tuning

    rows = [(vtprune.Sample("what moves?", video=video(4, 112, 112, s)), ["left"]) for s in range(2)]
    train_stts(model="zoo:synth-video-qwen2_5_vl", out=tmp_path, rows=rows, steps=2, batch_size=2, lr=1e-3,
               tune="full")  # step 1 is the warm-up's zero learning rate
    tuned = vtprune.load(str(tmp_path / "base_model"))
    assert tuned.video_frames == 8  # the zoo model's frame sampling came along
    base = dict(vtprune.load("zoo:synth-video-qwen2_5_vl").model.named_parameters())
    assert any(not torch.equal(p, base[k]) for k, p in tuned.model.named_parameters())
    with caplog.at_level("WARNING"):
        warn_unpaired_tuning(str(tmp_path), None)
    assert f"--model {tmp_path / 'base_model'}" in caplog.text


def test_train_stts_on_molmo2_the_papers_own_model(tmp_path, vlms):
    """STTS trains on Molmo2 video: the scorer reads 3x3 pooling windows (its unit fixed from the model), the LM loss
    reaches it through the biased block run on packed frames, and the saved scorer prunes half the windows."""
    if "molmo2" not in vlms:
        pytest.skip("molmo2 needs a newer transformers")
    rows = [(vtprune.Sample("what moves?", video=video(4, 84, 56, s)), ["bar"]) for s in range(2)]
    meta = train_stts(model="random:molmo2", out=tmp_path, rows=rows, steps=2, batch_size=2, lr=1e-2)
    assert meta["steps"] == 2 and meta["visual_kept"] == pytest.approx(0.5) and meta["temporal_loss_first"] > 0
    trained = STTS.from_pretrained(tmp_path)
    fresh = STTS(keep=0.5)
    fresh.init_scorer(trained.scorer.config)
    assert trained.scorer.config.unit == 9
    assert any(not torch.equal(a, b) for a, b in zip(trained.scorer.state_dict().values(),
                                                       fresh.scorer.state_dict().values()))
    assert vlms["molmo2"].generate([rows[0][0]], trained, max_new_tokens=2)[0].kept_tokens == 8
    # the LM loss alone (no temporal term) reaches the scorer through the bias block's packed attention
    lm_only = STTS(keep=0.5, temporal_weight=0.0)
    lm_only.init_scorer(trained.scorer.config)
    batch = encode_with_answers(vlms["molmo2"].adapter, [r[0] for r in rows], ["the bar", "left"])
    loss, _ = stts_loss(vlms["molmo2"].adapter, lm_only, batch)
    loss.backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in lm_only.scorer.parameters())
    vlms["molmo2"].model.zero_grad(set_to_none=True)  # the session's shared model keeps no gradients

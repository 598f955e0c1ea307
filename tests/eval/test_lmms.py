"""The lmms-eval model: a local task run through lmms-eval gives what ``vtprune eval`` gives on the same rows, batched
or not; log-likelihood keep-all equals the stock model's; user errors are one line and exit 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from lmms_eval import evaluator  # `make test` installs lmms-eval (make lmms): these tests always run in CI
from lmms_eval.api.instance import Instance
from lmms_eval.tasks import TaskManager

import vtprune
from tests.eval.test_score import stock_scores
from vtprune.data.dataset import load_image
from vtprune.eval.lmms import Vtprune, VtpruneSimple
from vtprune.eval.lmms_task import write_task
from vtprune.eval.runner import run_eval

TASK = "vtprune_local"


def tasks(path: Path) -> TaskManager:
    """lmms-eval's task index over ``path`` only (indexing its hundreds of built-in tasks takes seconds)."""
    return TaskManager(include_path=str(path), include_defaults=False)


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> tuple[Path, Path]:
    """Four rows of the testbed's mini image set, as a JSONL and as a local lmms-eval task (4 new tokens)."""
    from vtprune.testbed.sets import export_set

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("lmms")
    data = export_set("image-mini", root / "data", 4)
    return data, write_task(data, root / "task", name=TASK, max_new_tokens=4).parent


@pytest.fixture(scope="module")
def loaded(task) -> dict[str, object]:
    """The local task as lmms-eval loads it for a chat model and for a simple one."""
    tm = tasks(task[1])
    return {kind: tm.load_task_or_group([TASK], task_type=kind)[TASK] for kind in ("chat", "simple")}


def lmms_run(task_dir: Path, model_args: str, out: Path, **kw) -> dict:
    return evaluator.simple_evaluate(model="vtprune", model_args=f"{model_args},output_path={out}", tasks=[TASK],
                                     task_manager=tasks(task_dir), log_samples=True, **kw)


def predictions(res: dict) -> dict[str, str]:
    return {s["doc"]["id"]: s["filtered_resps"][0] for s in res["samples"][TASK]}


def vtprune_eval(data: Path, tmp: Path, **kw) -> tuple[dict, dict[str, dict]]:
    pred = tmp / f"pred-{len(list(tmp.iterdir()))}.jsonl"
    report = run_eval(data=str(data), batch_size=1, max_new_tokens=4, predictions=pred, **kw)
    return report, {r["id"]: r for r in map(json.loads, pred.read_text().splitlines())}


@pytest.mark.parametrize("model, method", [
    ("random:qwen2_5_vl", dict(method="random", keep=0.25, layer=1)),
    ("zoo:synth-qwen2_5_vl", dict(method="fastv", keep=0.25, layer=1)),
    ("zoo:synth-qwen2_5_vl", dict(method="glimpse", pruner="zoo:glimpse-synth-qwen2_5_vl")),
])
def test_lmms_eval_equals_vtprune_eval(task, tmp_path, model, method):
    data, task_dir = task
    args = ",".join(f"{k}={v}" for k, v in {"pretrained": model, **method, "batch_size": 3}.items())
    res = lmms_run(task_dir, args, tmp_path / "out")
    lib = {("weights" if k == "pruner" else k): v for k, v in method.items()}  # the plugin's pruner= is weights=
    report, rows = vtprune_eval(data, tmp_path, model=model, **lib)
    got = predictions(res)
    # lmms-eval in batches of 3 == vtprune eval one at a time
    assert len(got) == 4 and got == {i: r["prediction"] for i, r in rows.items()}
    assert res["results"][TASK]["exact_match,none"] == pytest.approx(report["accuracy"])
    assert res["results"][TASK]["vqa_accuracy,none"] == pytest.approx(report["vqa_accuracy"])
    # the pruning record beside lmms-eval's results: per request, and the task's summary
    folder = tmp_path / "out" / model.replace(":", "__")
    summary = json.loads((folder / "vtprune_summary.json").read_text())["tasks"][TASK]
    assert summary["n"] == 4 and summary["retention_mean"] == pytest.approx(report["retention_mean"])
    reqs = [json.loads(x) for x in (folder / "vtprune_requests.jsonl").read_text().splitlines()]
    docs = {s["doc_id"]: s["doc"]["id"] for s in res["samples"][TASK]}
    assert {docs[r["doc_id"]]: r["kept_tokens"] for r in reqs} == {i: r["kept_tokens"] for i, r in rows.items()}
    assert all(r["prefill_s"] > 0 and r["visual_tokens"] > 0 for r in reqs)
    if method["method"] != "glimpse":  # glimpse keeps what its predictor says; fixed-keep methods keep a quarter
        assert summary["retention_mean"] < 0.35


def instances(lm: VtpruneSimple, loaded: dict, gen_kwargs: dict, chat: bool) -> list[Instance]:
    """generate_until requests as lmms-eval builds them for the local task, with the model's task_dict filled."""
    t = loaded["chat" if chat else "simple"]
    lm.task_dict[TASK] = t.dataset
    docs = t.dataset["test"]
    reqs = []
    for i in range(len(docs)):
        fn = (t.doc_to_messages,) if chat else (t.doc_to_visual,)
        args = ("", *fn, dict(gen_kwargs), i, TASK, "test") if chat else ("", dict(gen_kwargs), *fn, i, TASK, "test")
        if not chat:
            args = (docs[i]["question"], *args[1:])
        reqs.append(Instance("generate_until", args, 0, {"task": TASK, "doc_id": i, "repeats": 1}))
    return reqs


def test_batched_equals_unbatched_and_gen_kwargs_are_honoured(loaded):
    lm1 = Vtprune(pretrained="random:qwen2_5_vl", method="uniform", keep=0.5, layer=1, batch_size=1)
    lm3 = Vtprune(pretrained="random:qwen2_5_vl", method="uniform", keep=0.5, layer=1, batch_size=3)
    kw = {"max_new_tokens": 5, "temperature": 0, "until": []}
    one = lm1.generate_until(instances(lm1, loaded, kw, True))
    three = lm3.generate_until(instances(lm3, loaded, kw, True))
    # (answers are not compared across docs: a random model's few tokens may coincide under the real template)
    assert one == three and all(one)
    # the simple form (doc_to_text + doc_to_visual) asks the same question about the same image
    simple = VtpruneSimple(pretrained="random:qwen2_5_vl", method="uniform", keep=0.5, layer=1, batch_size=3)
    assert simple.generate_until(instances(simple, loaded, kw, False)) == one
    # max_new_tokens and until reach decoding: fewer tokens give prefixes; a stop string cuts the text before it
    short = lm3.generate_until(instances(lm3, loaded, {**kw, "max_new_tokens": 2}, True))
    assert all(b.startswith(a) for a, b in zip(short, one)) and short != one
    stop = next(t[1:3] for t in one if len(t) > 3)
    cut = lm3.generate_until(instances(lm3, loaded, {**kw, "until": [stop]}, True))
    assert cut == [t.split(stop)[0] for t in one] and cut != one
    # sampling (temperature > 0) is seeded, so it repeats, and it differs from greedy
    hot = {**kw, "temperature": 5.0, "max_new_tokens": 5}
    hot1, hot2 = (lm3.generate_until(instances(lm3, loaded, hot, True)) for _ in range(2))
    assert hot1 == hot2 != one
    with pytest.raises(vtprune.ConfigError, match="num_beams"):
        lm3.generate_until(instances(lm3, loaded, {**kw, "num_beams": 3}, True))
    with pytest.raises(vtprune.ConfigError, match="multi-round"):
        lm3.generate_until_multi_round(instances(lm3, loaded, kw, True))


def test_loglikelihood_keep_all_equals_stock_and_prunes_the_context(loaded):
    lm = VtpruneSimple(pretrained="random:qwen2_5_vl", batch_size=4)
    t = loaded["simple"]
    lm.task_dict[TASK] = t.dataset
    docs = t.dataset["test"]
    conts = [" yes", " no", " a red circle", " 3"]
    reqs = [Instance("loglikelihood", (docs[i]["question"], c, t.doc_to_visual, i, TASK, "test"), 0,
                     {"task": TASK, "doc_id": i, "repeats": 1}) for i, c in enumerate(conts)]
    got = [r.text for r in lm.loglikelihood(reqs)]  # lmms-eval's convention: (mean token loss, is greedy)
    samples = [vtprune.Sample(docs[i]["question"], t.doc_to_visual(docs[i])) for i in range(len(conts))]
    n = [len(lm.vlm.tokenizer(c, add_special_tokens=False).input_ids) for c in conts]
    want = [(-lp / k, greedy) for (lp, greedy), k in zip(stock_scores(lm.vlm, samples, conts), n)]
    assert torch.allclose(torch.tensor([g[0] for g in got]), torch.tensor([w[0] for w in want]), atol=1e-4)
    assert [g[1] for g in got] == [w[1] for w in want] and min(n) == 1 < max(n)
    pruned = VtpruneSimple(pretrained="random:qwen2_5_vl", method="random", keep=0.25, layer=1, batch_size=4)
    pruned.task_dict[TASK] = t.dataset
    scored = [r.text for r in pruned.loglikelihood(reqs)]
    assert scored != got and all(r["retention"] < 0.35 for r in pruned.records)
    assert scored == [(-s.logprob / k, s.greedy) for s, k in zip(pruned.vlm.score(samples, conts, pruned.method), n)]


def test_multiple_choice_task_runs_through_force_simple(task, tmp_path):
    """A multiple-choice task (loglikelihood requests) through lmms-eval: each choice scored after the pruned prompt."""
    _, task_dir = task
    mc = tmp_path / "mc"
    mc.mkdir()
    yaml = (task_dir / f"{TASK}.yaml").read_text().split("output_type:")[0]
    (mc / "vtprune_mc.yaml").write_text(yaml.replace(f"task: {TASK}", "task: vtprune_mc") + """\
output_type: multiple_choice
doc_to_visual: !function vtprune.eval.lmms_task.doc_to_visual
doc_to_text: !function vtprune.eval.lmms_task.doc_to_text
doc_to_choice: ["red", "green", "blue"]
doc_to_target: 0
metric_list:
  - metric: acc
metadata:
  version: 0.0
""")
    res = evaluator.simple_evaluate(model="vtprune", model_args=f"pretrained=random:qwen2_5_vl,method=random,keep=0.25,"
                                    f"layer=1,batch_size=3,output_path={tmp_path / 'out'}", tasks=["vtprune_mc"],
                                    task_manager=tasks(mc), log_samples=True, force_simple=True)
    s = res["samples"]["vtprune_mc"][0]
    lm = VtpruneSimple(pretrained="random:qwen2_5_vl", method="random", keep=0.25, layer=1)
    sample = vtprune.Sample(s["doc"]["question"], [load_image(p) for p in s["doc"]["images"]])
    scored = lm.vlm.score([sample] * 3, [" red", " green", " blue"], lm.method)
    assert [r[0] for r in s["filtered_resps"]] == pytest.approx([-x.logprob / x.tokens for x in scored], abs=1e-4)
    best = max(range(3), key=lambda i: scored[i].logprob / scored[i].tokens)  # lmms-eval's argmin of the loss
    assert s["acc"] == float(best == 0)
    summary = json.loads((tmp_path / "out" / "random__qwen2_5_vl" / "vtprune_summary.json").read_text())
    assert summary["tasks"]["vtprune_mc"]["n"] == 12 and summary["tasks"]["vtprune_mc"]["retention_mean"] < 0.35


@pytest.mark.parametrize("args, needle", [
    ("pretrained=random:qwen2_5_vl,method=nope", "unknown method"),
    ("pretrained=random:qwen2_5_vl,method=fastv,keep=1.5", "keep"),
    ("pretrained=random:qwen2_5_vl,method=fastv,keep=0.5,layer=99", "layer 99"),
    ("pretrained=random:qwen2_5_vl,method=glimpse", "is learned"),
    ("pretrained=random:qwen2_5_vl,kep=0.5", "unknown model_args kep"),
    ("pretrained=random:nosuchfamily", "nosuchfamily"),
    ("method=fastv", "pretrained="),
    ("pretrained=random:qwen2_5_vl,dtype=float8", "dtype"),
    ("pretrained=random:qwen2_5_vl,device_map=gpu0", "device_map must be one of auto, cpu"),
    ("pretrained=random:qwen2_5_vl,adapter_mode=unmerged", "adapter_mode must be one of"),
    ("pretrained=random:qwen2_5_vl,adapter_mode=base_mask", "adapter_mode applies to GlimpsePrune+ weights"),
])
def test_argument_errors_are_one_line_exit_2(capsys, args, needle):
    with pytest.raises(SystemExit) as e:
        Vtprune.create_from_arg_string(args, {"batch_size": 1, "device": None})
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and needle in err
    assert err.startswith("error: vtprune:")


def test_model_args_dtype_and_device_map_reach_the_model():
    m = Vtprune.create_from_arg_string("pretrained=random:qwen2_5_vl,dtype=bfloat16,device_map=cpu", {})
    assert m.vlm.model.dtype == torch.bfloat16 and m.device.type == "cpu"


def test_lmms_eval_command_line(task, tmp_path, monkeypatch, capsys):
    """The lmms-eval command itself: ``--model vtprune`` found through the entry point, the pruning record written
    beside ``*_results.json`` (from its ``--output_path``); a bad method stops it with one line and status 2."""
    import lmms_eval.__main__ as cli

    monkeypatch.setattr(cli, "TaskManager", lambda *a, **kw: TaskManager(*a, **{**kw, "include_defaults": False}))
    _, task_dir = task
    base = ["lmms-eval", "--model", "vtprune", "--tasks", TASK, "--include_path", str(task_dir), "--limit", "2"]
    good = "pretrained=random:qwen2_5_vl,method=fastv,keep=0.5,layer=1"
    monkeypatch.setattr(sys, "argv", [*base, "--model_args", good,
                                      "--output_path", str(tmp_path / "out")])
    cli.cli_evaluate()
    folder = tmp_path / "out" / "random__qwen2_5_vl"
    assert list(folder.glob("*_results.json")) and (folder / "vtprune_summary.json").is_file()
    assert json.loads((folder / "vtprune_summary.json").read_text())["tasks"][TASK]["n"] == 2
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", [*base, "--model_args", "pretrained=random:qwen2_5_vl,method=fastvv"])
    with pytest.raises(SystemExit) as e:
        cli.cli_evaluate()
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.strip().splitlines() == [err.strip()] and "unknown method 'fastvv'" in err


def test_messages_other_than_one_user_turn_are_refused(task):
    lm = Vtprune.__new__(Vtprune)  # messages_sample needs no model
    lm.num_frames = None
    two_texts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    ok = lm.messages_sample([{"role": "user", "content": two_texts}])
    assert ok.question == "ab" and ok.images == []
    turns = lm.messages_sample([{"role": "system", "content": [{"type": "text", "text": "be brief"}]},
                                {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                                {"role": "assistant", "content": [{"type": "text", "text": "hello"}]},
                                {"role": "user", "content": [{"type": "text", "text": "and now?"}]}])
    assert turns.system == "be brief" and turns.question == "and now?" and len(turns.history) == 2
    with pytest.raises(vtprune.InputError, match="last message"):
        lm.messages_sample([{"role": "assistant", "content": [{"type": "text", "text": "hi"}]}])
    with pytest.raises(vtprune.InputError, match="audio"):
        lm.messages_sample([{"role": "user", "content": [{"type": "audio", "url": "x.wav"}]}])
    with pytest.raises(vtprune.InputError, match="cannot read image"):
        lm.messages_sample([{"role": "user", "content": [{"type": "image", "url": "/nonexistent.png"}]}])


def test_a_truncated_image_is_refused_in_an_lmms_eval_process(tmp_path):
    """lmms-eval turns PIL's LOAD_TRUNCATED_IMAGES on when imported (as here); a cut file still fails to load."""
    from PIL import ImageFile

    from tests.conftest import make_image

    assert ImageFile.LOAD_TRUNCATED_IMAGES
    make_image(64, 64, 1).save(tmp_path / "ok.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "ok.png").read_bytes()[:3000])
    with pytest.raises(vtprune.InputError, match="cannot read image"):
        load_image(tmp_path / "cut.png")
    assert ImageFile.LOAD_TRUNCATED_IMAGES  # the process's setting is left as it was


def test_data_lmms_task_command(capsys, tmp_path, task):
    from vtprune.cli import main

    data, _ = task
    assert main(["data", "lmms-task", str(data), "--out", str(tmp_path / "t"), "--name", "mine", "--limit", "2"]) == 0
    yaml = Path(capsys.readouterr().out.strip())
    assert yaml == tmp_path / "t" / "mine.yaml" and "task: mine" in yaml.read_text()
    rows = [json.loads(x) for x in (tmp_path / "t" / "data.json").read_text().splitlines()]
    assert len(rows) == 2 and all(Path(p).is_absolute() and Path(p).is_file() for r in rows for p in r["images"])
    assert main(["data", "lmms-task", str(data), "--out", str(tmp_path / "u"), "--name", "bad-name"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "task name" in err and not (tmp_path / "u").exists()


def test_a_video_message_is_resampled_to_the_model_frame_count(tmp_path):
    import numpy as np

    from vtprune.data.video import write_video

    frames = np.random.default_rng(0).integers(0, 255, (12, 56, 56, 3), dtype=np.uint8)
    write_video(tmp_path / "clip.npz", frames)
    lm = Vtprune.__new__(Vtprune)
    lm.num_frames = 4
    s = lm.messages_sample([{"role": "user", "content": [{"type": "video", "url": str(tmp_path / "clip.npz")},
                                                         {"type": "text", "text": "what moves?"}]}])
    assert s.question == "what moves?" and s.images == [] and len(s.video) == 4
    with pytest.raises(vtprune.InputError, match="one video"):
        lm.messages_sample([{"role": "user", "content": [{"type": "video", "url": str(tmp_path / "clip.npz")}] * 2}])

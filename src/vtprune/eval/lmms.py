"""The ``vtprune`` model for lmms-eval 0.7: any lmms-eval task, any vtprune method, batched through vtprune's runtime.

Registered through the ``lmms_eval.models`` entry point (``pip install vtprune[lmms]``, see README)::

    lmms-eval --model vtprune --tasks textvqa_val --output_path out \\
        --model_args pretrained=Qwen/Qwen2.5-VL-7B-Instruct,method=fastv,keep=0.25,layer=2,batch_size=8

``--model vtprune`` is chat-style (the task's ``doc_to_messages``, one user turn with its images / video);
``--force_simple`` picks the simple form, which also serves ``loglikelihood`` (multiple-choice tasks): lmms-eval
builds such requests only for simple models. Every request's pruning record (visual and kept tokens, retention,
prefill seconds) goes to ``vtprune_requests.jsonl``, and a per-task summary to ``vtprune_summary.json``, in the folder
where lmms-eval writes its ``*_results.json`` (``<output_path>/<model name>/``).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from lmms_eval.api.instance import GenerationResult, Instance
from lmms_eval.api.model import lmms
from loguru import logger as eval_logger

from vtprune.adapters import Sample
from vtprune.errors import ConfigError, InputError, VtpruneError
from vtprune.eval.settings import DTYPES, ModelSettings

MODEL_ID = "vtprune"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
"""A visual given as a path with one of these suffixes is an image; any other path is a video."""


@dataclass
class ModelArgs:
    """``--model_args`` of the vtprune model (``key=value,...``); unknown keys are refused."""

    pretrained: str = ""
    """The model: ``random:<family>``, ``zoo:<name>`` or a local HF checkpoint folder."""
    method: str = "none"
    """A vtprune method (``vtprune methods``)."""
    pruner: str | None = None
    """A learned method's weights (a folder or ``zoo:<name>``)."""
    keep: float | None = None
    """Share of visual tokens kept, in (0, 1]; the method's default if unset."""
    layer: int | None = None
    """The LLM layer after which an in-LLM method prunes; the method's default if unset."""
    batch_size: int = 1
    """Requests per batch (those with equal generation settings are batched together)."""
    dtype: str = "auto"
    """auto (as loaded), float32, bfloat16 or float16."""
    device: str | None = None
    """cpu, cuda, cuda:N; default cuda when available (unless ``device_map`` is given)."""
    device_map: str | None = None
    """accelerate's placement instead of ``device``: auto, cpu, or a JSON object of module name -> device."""
    adapter_mode: str | None = None
    """GlimpsePrune+ weights (``pruner`` holding a LoRA adapter): merged (default), base_mask or off (as ``vtprune
    eval --adapter-mode``)."""
    lora: str | None = None
    """A LoRA adapter merged into the model first (as ``vtprune eval --lora``)."""
    num_frames: int | None = None
    """Frames a video is resampled to; the model's processing default if unset."""
    max_new_tokens: int = 128
    """Used when a task's generation_kwargs set none (lmms-eval's HF models' default)."""
    output_path: str | None = None
    """Where the pruning records go; default the lmms-eval command's ``--output_path``."""

    def __post_init__(self) -> None:
        if not isinstance(self.pretrained, str) or not self.pretrained:
            raise ConfigError("model_args needs pretrained=<random:family | zoo:name | folder>")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        for name in ("pretrained", "method", "pruner", "lora", "device", "device_map", "adapter_mode", "output_path"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                setattr(self, name, str(v))

    @classmethod
    def parse(cls, args: dict[str, Any]) -> ModelArgs:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(args) - known)
        if unknown:
            raise ConfigError(f"unknown model_args {', '.join(unknown)}; the vtprune model takes: "
                              f"{', '.join(sorted(known))}")
        return cls(**args)


def manifests() -> list[Any]:
    """The ``lmms_eval.models`` entry point: ``vtprune`` (chat, and simple with ``--force_simple``)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.VtpruneSimple",
                          chat_class_path=f"{__name__}.Vtprune")]


def _fail(e: VtpruneError) -> SystemExit:
    """lmms-eval's command line catches every ``Exception`` (printing its traceback) and still exits 0; a user
    error leaves it as one ``error:`` line on stderr and exit status 2 instead."""
    print(f"error: vtprune: {e}", file=sys.stderr)
    return SystemExit(2)


class VtpruneSimple(lmms):
    """The simple form (``--force_simple``): prompts from the task's ``doc_to_text`` and ``doc_to_visual``."""

    is_simple = True

    def __init__(self, exit_on_error: bool = False, **model_args: Any) -> None:
        super().__init__()
        self._exit_on_error = exit_on_error
        try:
            self._setup(ModelArgs.parse(model_args))
        except VtpruneError as e:
            if exit_on_error:
                raise _fail(e) from None
            raise

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> VtpruneSimple:
        """lmms-eval's way in: ``model_args`` win over its ``--batch_size`` / ``--device``; user errors exit."""
        from lmms_eval import utils

        try:
            args = utils.simple_parse_args_string(arg_string)
        except ValueError:
            bad = ConfigError(f"model_args must be key=value pairs separated by commas, got {arg_string!r}")
            raise _fail(bad) from None
        extra = {k: v for k, v in (additional_config or {}).items() if k in ("batch_size", "device") and v is not None}
        if "batch_size" in extra:
            try:
                extra["batch_size"] = int(extra["batch_size"])
            except ValueError:
                raise _fail(ConfigError(f"--batch_size must be an integer, got {extra['batch_size']!r}")) from None
        return cls(exit_on_error=True, **{**extra, **args})

    def _setup(self, a: ModelArgs) -> None:
        self.args = a
        device = a.device or (None if a.device_map else "cuda" if torch.cuda.is_available() else "cpu")
        cfg = ModelSettings(model=a.pretrained, method=a.method, keep=a.keep, layer=a.layer, weights=a.pruner,
                            lora=a.lora, dtype=a.dtype, device=device, device_map=a.device_map,
                            adapter_mode=a.adapter_mode)
        self.vlm = cfg.load()
        self.method = cfg.build_method(self.vlm.num_layers)
        if self.method.name == "none":
            self.method = None
        self.batch_size = a.batch_size
        self.num_frames = a.num_frames or self.vlm.video_frames
        self.records: list[dict[str, Any]] = []
        self.chat_template = None  # lmms-eval's --apply_chat_template: prompts come from the model's own template

    @property
    def device(self) -> torch.device:
        return self.vlm.adapter.device

    # --- lmms-eval's request types ----------------------------------------------------------------------------------
    def generate_until(self, requests: list[Instance]) -> list[str]:
        return self._guard(self._generate, requests)

    def loglikelihood(self, requests: list[Instance]) -> list[Any]:
        return self._guard(self._loglikelihood, requests)

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise self._error(ConfigError("the vtprune model does not run multi-round tasks (generate_until_multi_round) "
                                      "yet; pick single-turn tasks"))

    def _guard(self, fn: Any, requests: list[Instance]) -> Any:
        try:
            return fn(requests)
        except VtpruneError as e:
            raise self._error(e) from None

    def _error(self, e: VtpruneError) -> BaseException:
        return _fail(e) if self._exit_on_error else e

    # --- turning a request into a Sample --------------------------------------------------------------------------
    def _doc(self, task: str, split: str, doc_id: int) -> dict[str, Any]:
        return self.task_dict[task][split][doc_id]

    def request_sample(self, req: Instance) -> Sample:
        """The :class:`Sample` a ``generate_until`` request asks about."""
        ctx, _gen, doc_to_visual, doc_id, task, split = req.args
        visuals = doc_to_visual(self._doc(task, split, doc_id)) if doc_to_visual is not None else []
        return self._sample(str(ctx), list(visuals or []))

    def _sample(self, text: str, visuals: list[Any]) -> Sample:
        from PIL import Image

        from vtprune.data.dataset import load_clip, load_image

        images, video, fps = [], None, None
        for v in visuals:
            if isinstance(v, Image.Image):
                images.append(v.convert("RGB"))
            elif isinstance(v, (str, Path)) and Path(v).suffix.lower() in IMAGE_SUFFIXES:
                images.append(load_image(v))
            elif isinstance(v, (str, Path)):
                if video is not None:
                    raise InputError("a request with more than one video is not supported")
                pick = None if self.num_frames else self.vlm.adapter.video_frame_indices  # a count wins anyway
                video, fps = load_clip(v, self.num_frames, pick=pick)
            else:
                raise InputError(f"unsupported visual input of type {type(v).__name__} (expected an image or a video "
                                 "path)")
        if video is not None and images:
            raise InputError("a request with both images and a video is not supported")
        return Sample(text, images, video, fps)

    # --- generation ----------------------------------------------------------------------------------------------
    def _generate(self, requests: list[Instance]) -> list[str]:
        groups: dict[str, list[int]] = defaultdict(list)
        settings: dict[str, tuple[dict[str, Any], list[str]]] = {}
        for i, req in enumerate(requests):
            key = json.dumps(self._gen_kwargs(req), sort_keys=True, default=str)
            if key not in settings:
                settings[key] = self._sampling(self._gen_kwargs(req))
            groups[key].append(i)
        out: list[str] = [""] * len(requests)
        for key, idx in groups.items():
            decoding, until = settings[key]
            for j in range(0, len(idx), self.batch_size):
                chunk = idx[j : j + self.batch_size]
                samples = [self.request_sample(requests[i]) for i in chunk]
                answers = self.vlm.generate(samples, self.method, **decoding)
                for i, ans in zip(chunk, answers):
                    out[i] = _cut(ans.text, until)
                    self._record(requests[i], ans.visual_tokens, ans.kept_tokens, ans.timings, len(chunk))
        return out

    def _gen_kwargs(self, req: Instance) -> dict[str, Any]:
        return dict(req.args[1] or {})

    def _sampling(self, kw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """Decoding overrides and the stop strings from a task's ``generation_kwargs``: greedy unless the task asks
        to sample (lmms-eval's convention), the checkpoint's other settings (e.g. its repetition penalty) kept."""
        if int(kw.get("num_beams") or 1) != 1:
            raise ConfigError(f"beam search (num_beams={kw['num_beams']}) is not supported by the vtprune model")
        temperature = float(kw.get("temperature") or 0.0)
        sample = temperature > 0 and kw.get("do_sample") is not False
        until = kw.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        decoding: dict[str, Any] = {"max_new_tokens": int(kw.get("max_new_tokens") or self.args.max_new_tokens),
                                    "do_sample": sample, "seed": int(kw.get("seed") or 0)}
        if sample:
            decoding.update(temperature=temperature, top_p=kw.get("top_p"), top_k=kw.get("top_k"))
        return decoding, [u for u in until if u]

    # --- log-likelihood --------------------------------------------------------------------------------------------
    def _loglikelihood(self, requests: list[Instance]) -> list[Any]:
        """Per request the continuation's mean negative log-likelihood per token and whether greedy decoding yields
        it, scored after the pruned prefill of the context.

        lmms-eval's convention, not lm-eval's: its multiple-choice scoring picks the choice with the *smallest* value
        (``argmin``), and its HF models return the continuation's mean token loss; this model returns the same. Each
        pair is wrapped in a ``GenerationResult``: lmms-eval 0.7.3's ``unwrap_generation_output`` turns any other
        tuple into its string, which its multiple-choice scoring then cannot unpack."""
        out: list[Any] = [None] * len(requests)
        for j in range(0, len(requests), self.batch_size):
            chunk = list(range(j, min(j + self.batch_size, len(requests))))
            samples, conts = [], []
            for i in chunk:
                args = requests[i].args
                if len(args) == 2:  # acc_mutual_info's unconditional request: the continuation alone
                    samples.append(Sample(str(args[0]), []))
                    conts.append(str(args[1]))
                    continue
                ctx, target, doc_to_visual, doc_id, task, split = args
                doc = self._doc(task, split, doc_id)
                conts.append(target if isinstance(target, str) else str(target(doc)))
                samples.append(self._sample(str(ctx), list(doc_to_visual(doc) or []) if doc_to_visual else []))
            scored = self.vlm.score(samples, conts, self.method)
            for i, s in zip(chunk, scored):
                out[i] = GenerationResult(text=(-s.logprob / max(s.tokens, 1), s.greedy))  # type: ignore[arg-type]
                self._record(requests[i], s.visual_tokens, s.kept_tokens, s.timings, len(chunk))
        return out

    # --- the pruning record ----------------------------------------------------------------------------------------
    def _record(self, req: Instance, visual: int, kept: int, timings: dict[str, float], batch: int) -> None:
        prefill = (timings.get("vision", 0.0) + timings.get("llm_prefill", 0.0)) / max(batch, 1)
        row = {"task": req.task_name, "doc_id": req.doc_id, "request": req.request_type, "visual_tokens": visual,
               "kept_tokens": kept, "retention": kept / visual if visual else 1.0, "prefill_s": prefill}
        self.records.append(row)
        eval_logger.debug("vtprune {task} doc {doc_id}: {kept_tokens}/{visual_tokens} visual tokens kept "
                          "(retention {retention:.3f}), prefill {prefill_s:.3f} s", **row)

    def summary(self) -> dict[str, Any]:
        """Per task: requests, mean retention, mean visual / kept tokens, mean and total prefill seconds (each
        request's share of its batch's vision + LLM prefill time)."""
        by: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in self.records:
            by[str(r["task"])].append(r)

        def mean(rs: list[dict[str, Any]], k: str) -> float:
            return sum(float(r[k]) for r in rs) / len(rs)

        tasks = {t: {"n": len(rs), "retention_mean": mean(rs, "retention"),
                     "visual_tokens_mean": mean(rs, "visual_tokens"), "kept_tokens_mean": mean(rs, "kept_tokens"),
                     "prefill_s_mean": mean(rs, "prefill_s"),
                     "prefill_s_total": sum(float(r["prefill_s"]) for r in rs)} for t, rs in sorted(by.items())}
        method = self.method.to_dict() if self.method is not None else {"method": "none"}
        return {"model": self.args.pretrained, "method": method, "model_args": asdict(self.args), "tasks": tasks}

    def results_dir(self) -> Path | None:
        """Where lmms-eval writes this run's ``*_results.json``: ``<output_path>/<sanitized model name>``."""
        out = self.args.output_path or _cli_output_path()
        if not out:
            return None
        from lmms_eval.loggers.evaluation_tracker import GeneralConfigTracker
        from lmms_eval.utils import sanitize_model_name

        name = GeneralConfigTracker._get_model_name(f"pretrained={self.args.pretrained}")
        return Path(out) / sanitize_model_name(name)

    def write_records(self) -> Path | None:
        """Log the per-task summary; write it and the per-request records beside lmms-eval's results (on several
        processes each rank writes its own requests, as ``..._rank<N>``)."""
        folder = self.results_dir()
        summary = self.summary()
        for task, s in summary["tasks"].items():
            eval_logger.info(f"vtprune {task}: retention {s['retention_mean']:.4f} ({s['kept_tokens_mean']:.1f} of "
                             f"{s['visual_tokens_mean']:.1f} visual tokens), prefill {s['prefill_s_mean']:.4f} "
                             "s/request")
        if folder is None or not self.records:
            return None
        folder.mkdir(parents=True, exist_ok=True)
        suffix = f"_rank{self.rank}" if self.world_size > 1 else ""
        (folder / f"vtprune_requests{suffix}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in self.records))
        path = folder / f"vtprune_summary{suffix}.json"
        path.write_text(json.dumps(summary, indent=2, default=str))
        return path

    def clean(self) -> None:
        """lmms-eval calls this once every request has run: the pruning records are written here."""
        self.write_records()
        super().clean()


class Vtprune(VtpruneSimple):
    """The chat form (``--model vtprune``): prompts from the task's ``doc_to_messages`` (system turn, earlier
    turns, the user's turn with its images or video), rendered by the checkpoint's chat template."""

    is_simple = False

    def _gen_kwargs(self, req: Instance) -> dict[str, Any]:
        return dict(req.args[2] or {})

    def request_sample(self, req: Instance) -> Sample:
        _ctx, doc_to_messages, _gen, doc_id, task, split = req.args
        return self.messages_sample(doc_to_messages(self._doc(task, split, doc_id)))

    def messages_sample(self, messages: list[dict[str, Any]]) -> Sample:
        """lmms-eval's messages (system turn, earlier turns, the user's turn; images as PIL or paths, videos as paths)
        as a :class:`Sample` in HF's messages format, for the checkpoint's own chat template."""
        from lmms_eval.protocol import ChatMessages

        try:
            chat = ChatMessages(messages=messages)
        except ValueError as e:
            raise InputError(f"malformed chat messages: {str(e).splitlines()[0]}") from None
        hf: list[dict[str, Any]] = []
        fps = None
        for m in chat.messages:
            parts: list[dict[str, Any]] = []
            for c in m.content:
                if c.type == "text":
                    parts.append({"type": "text", "text": c.text})
                elif c.type in ("image", "video"):
                    url = c.url["url"] if isinstance(c.url, dict) and "url" in c.url else c.url
                    one = self._sample("", [url])
                    if one.video is not None:
                        parts.append({"type": "video", "video": one.video})
                        fps = one.fps
                    else:
                        parts.append({"type": "image", "image": one.images[0]})
                else:
                    raise InputError(f"{c.type} input is not supported by the vtprune model")
            hf.append({"role": m.role, "content": parts})
        return Sample.from_messages(hf, fps=fps)


def _cut(text: str, until: list[str]) -> str:
    """``text`` up to the first of the stop strings (as lmms-eval's HF models apply ``until``)."""
    for u in until:
        text = text.split(u)[0]
    return text


def _cli_output_path() -> str | None:
    """The ``--output_path`` of the running ``lmms-eval`` command, if this process is one."""
    if "lmms_eval.__main__" not in sys.modules:
        return None
    import argparse

    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--output_path", default=None)
    return p.parse_known_args(sys.argv[1:])[0].output_path


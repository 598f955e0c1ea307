"""``vtprune`` command line: each subcommand maps to one typed function; user errors become one stderr line.

Subcommands living elsewhere register here: ``data`` (testbed/command.py), ``bench`` (bench/command.py),
``train`` (training/command.py), ``demo`` (demo.py).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional

import typer

from vtprune.errors import VtpruneError
from vtprune.eval.settings import EvalSettings, ModelSettings
from vtprune.options import setting, settings_options

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Visual token pruning for HF vision-language models.",
)


# the settings shared by ask, eval and compare are the fields of ModelSettings / EvalSettings (options and help come
# from them, through settings_options); these few are the command line's own
STRICT_OPTION = typer.Option(False, "--strict", help="Exit 3 when any sample could not be evaluated (such samples "
                             "are skipped with a warning and counted under errors either way).")
FLAGS: dict[str, str | tuple[str, ...]] = {"video_frames": "--frames", "num_frames": "--frames",
                                           "weights": ("--weights", "--pruner"), "greedy": "--greedy/--sample"}
"""Library argument names whose flag is not ``--`` + the name with dashes (the first flag is the one errors name;
``--pruner`` is the deprecated name of ``--weights``)."""
MODEL_TYPES = {"device_map": Optional[str]}  # JSON on the command line; ModelSettings parses it
MODEL_FROM_CLI = ("device",)  # a device map, not a device, on the command line


@dataclass
class Decoding:
    """Decoding options of ask and eval: unset ones keep the command's default (ask: the checkpoint's
    generation_config.json; eval: greedy with the checkpoint's other settings)."""

    greedy: Optional[bool] = None
    """Greedy decoding, or sampling (default: ask follows the checkpoint's generation config, eval is greedy)."""
    temperature: Optional[float] = None
    """Sampling temperature (0 = greedy)."""
    top_p: Optional[float] = None
    """Nucleus sampling mass."""
    top_k: Optional[int] = None
    """Sample among the k most likely tokens."""
    min_p: Optional[float] = None
    """Drop tokens below this share of the top token's probability."""
    repetition_penalty: Optional[float] = None
    """HF's repetition penalty (1 = none)."""
    no_repeat_ngram_size: Optional[int] = None
    """Never repeat an n-gram of this size."""
    seed: Optional[int] = None
    """Seed for sampling (default 0)."""

    def overrides(self) -> dict[str, object]:
        """The options given, as :meth:`vtprune.VLM.generate` keywords."""
        given = {**{f.name: getattr(self, f.name) for f in fields(self)},
                 "do_sample": None if self.greedy is None else not self.greedy}
        return {k: v for k, v in given.items() if v is not None and k != "greedy"}


def _emit_json(obj: object) -> None:
    typer.echo(json.dumps(obj, indent=None, default=float))


@app.command()
def methods(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the pruning methods: name, sites, trainable, modalities."""
    from vtprune.methods import list_methods

    rows = list_methods()
    if as_json:
        _emit_json(rows)
        return
    from rich.console import Console
    from rich.table import Table

    t = Table("name", "sites", "trainable", "modalities", "summary")
    for r in rows:
        t.add_row(r["name"], ",".join(r["sites"]), "yes" if r["trainable"] else "no", ",".join(r["modalities"]), r["summary"])
    Console().print(t)


@app.command()
@settings_options(Decoding, "decoding", flags=FLAGS, build=True)
@settings_options(ModelSettings, "settings", exclude=MODEL_FROM_CLI, flags=FLAGS, types=MODEL_TYPES)
def ask(
    settings: dict[str, Any],
    question: str = typer.Option(..., "--question", "-q"),
    image: list[Path] = typer.Option([], "--image", help="Image file (repeat for several)."),
    video: Optional[Path] = typer.Option(None, "--video", help="Video file (a family that takes video: the README's family table)."),
    fps: Optional[float] = typer.Option(None, "--fps", help="The video file's frame rate: places the sampled frames "
                                        "on Qwen2.5-VL's time axis (default: HF's, 2 fps after sampling) and sets "
                                        "the rate the family's frame sampling reads (default: the file header's)."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1, help="Default: the checkpoint's, "
                                                  "else 32."),
    decoding: Decoding = Decoding(),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Answer one question about an image (or video), pruning with --method."""
    from vtprune.data.dataset import load_clip, load_image
    from vtprune.errors import ConfigError

    if fps is not None and video is None:
        raise ConfigError("--fps is the frame rate of --video; give a video")
    cfg = ModelSettings(**settings)
    vlm = cfg.load()
    images = [load_image(p) for p in image]
    frames, sampled_fps = (load_clip(video, vlm.video_frames, fps, vlm.adapter.video_frame_indices)
                           if video is not None else (None, None))
    unpruned = not images and frames is None
    m = cfg.build_method(vlm.num_layers)
    if unpruned:
        typer.echo("note: no image or video given; running the text-only prompt unpruned", err=True)
    from vtprune.adapters import Sample

    ans = vlm.generate([Sample(question, images, frames, sampled_fps)], None if unpruned else m,
                       max_new_tokens=max_new_tokens, **decoding.overrides())[0]
    if as_json:
        _emit_json(
            {
                "answer": ans.text,
                "method": "none" if unpruned else cfg.method,
                "visual_tokens": ans.visual_tokens,
                "kept_tokens": ans.kept_tokens,
                "retention": ans.retention,
                "timings": ans.timings,
            }
        )
    else:
        typer.echo(ans.text)


@app.command("eval")
@settings_options(Decoding, "decoding", flags=FLAGS, build=True)
@settings_options(EvalSettings, "settings", exclude=(*MODEL_FROM_CLI, "decoding", "progress"), flags=FLAGS,
                  types=MODEL_TYPES)
def eval_cmd(
    settings: dict[str, Any],
    decoding: Decoding = Decoding(),
    strict: bool = STRICT_OPTION,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Batched, resumable evaluation over a JSONL dataset; prints accuracy, VQA accuracy, ANLS and retention."""
    from vtprune.eval.runner import run_eval

    cfg = EvalSettings(**settings, decoding=decoding.overrides(), progress=not as_json and sys.stderr.isatty())
    with _interruptible():
        report = run_eval(cfg)
    if as_json:
        _emit_json(report)
    else:
        from vtprune.eval.runner import print_report

        print_report(report)
    _strict_exit(strict, report["errors"])


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """Ctrl-C in a long run: its one line (how many rows are written) on stderr, exit 130."""
    from vtprune.errors import Interrupted

    try:
        yield
    except Interrupted as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(130) from None


def _strict_exit(strict: bool, errors: int) -> None:
    if strict and errors:
        typer.echo(f"error: {errors} sample(s) could not be evaluated (--strict)", err=True)
        raise typer.Exit(3)


@app.command()
@settings_options(ModelSettings, "settings", exclude=(*MODEL_FROM_CLI, "method", "keep", "weights", "compile"),
                  flags=FLAGS, types=MODEL_TYPES)
def compare(
    settings: dict[str, Any],
    data: str = setting(EvalSettings, "data"),
    methods_: str = typer.Option(..., "--methods", help="Comma-separated method names."),
    keeps: str = typer.Option("0.5,0.25,0.11,0.05", "--keeps", help="Comma-separated keep ratios."),
    out: Path = typer.Option(..., "--out", help="Folder for predictions, results.json and table.md."),
    weights: list[str] = typer.Option([], "--weights", "--pruner", help="METHOD=PATH: a learned method's weights "
                                      "(repeatable; --pruner: the deprecated name)."),
    batch_size: int = setting(EvalSettings, "batch_size"),
    limit: Optional[int] = setting(EvalSettings, "limit"),
    max_new_tokens: int = typer.Option(8, "--max-new-tokens", min=1),
    strict: bool = STRICT_OPTION,
) -> None:
    """Accuracy vs retention of several methods at several keep ratios (resumable), as a Markdown table."""
    from vtprune.errors import ConfigError
    from vtprune.eval.compare import run_compare

    try:
        keep_list = [float(k) for k in keeps.split(",") if k.strip()]
    except ValueError:
        raise ConfigError(f"--keeps must be comma-separated numbers, got {keeps!r}") from None
    if any("=" not in p for p in weights):
        raise ConfigError("--weights takes METHOD=PATH")
    with _interruptible():
        summary = run_compare(
            **settings, data=data, methods=[m.strip() for m in methods_.split(",") if m.strip()], keeps=keep_list,
            out=out, batch_size=batch_size, limit=limit, max_new_tokens=max_new_tokens,
            weights=dict(p.split("=", 1) for p in weights),
        )
    from vtprune.eval.compare import markdown_table

    typer.echo(markdown_table(summary))
    _strict_exit(strict, sum(r.get("errors", 0) for r in summary["rows"]))


def lmms_task(
    data: str = typer.Argument(..., help="A JSONL dataset, its folder, or testbed:<name>."),
    out: Path = typer.Option(..., "--out", help="Folder to write the task into (pass it as lmms-eval --include_path)."),
    name: str = typer.Option("vtprune_local", "--name", help="The task's name (lmms-eval --tasks)."),
    max_new_tokens: int = typer.Option(16, "--max-new-tokens", min=1),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N rows."),
) -> None:
    """Write a dataset as a local lmms-eval task (same prompts and metrics as `vtprune eval`)."""
    from vtprune.eval.lmms_task import write_task

    typer.echo(str(write_task(data, out, name=name, max_new_tokens=max_new_tokens, limit=limit)))


def _register_optional() -> None:
    """Attach the subcommands that live in their own modules."""
    from vtprune.bench.command import bench
    from vtprune.testbed.command import data_app
    from vtprune.demo import demo
    from vtprune.training.command import train_app

    app.command("bench")(bench)
    app.command("demo")(demo)
    app.add_typer(train_app, name="train", help="Train zoo models and learned pruners.")
    data_app.command("lmms-task")(lmms_task)  # a data export, defined here: testbed sits below eval
    app.add_typer(data_app, name="data", help="Generate and export testbed datasets.")


_register_optional()


def _click_errors() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """(exit, abort, usage-error) exception classes of click and of the click that typer >= 0.24 vendors."""
    import click

    exits: list[type] = [click.exceptions.Exit, typer.Exit]
    aborts: list[type] = [click.exceptions.Abort, typer.Abort]
    usage: list[type] = [click.ClickException]
    try:
        from typer._click import exceptions as vendored
    except ImportError:  # an older typer on the real click
        pass
    else:
        usage.append(vendored.ClickException)
    return tuple(exits), tuple(aborts), tuple(usage)


def user_message(e: VtpruneError) -> str:
    """The error's message, its library argument (``epochs``) named as the flag the user typed (``--epochs``)."""
    msg = str(e)
    arg = e.argument
    if arg and msg.startswith(arg):
        flag = FLAGS.get(arg, "--" + arg.replace("_", "-"))
        return (flag if isinstance(flag, str) else flag[0]) + msg[len(arg):]
    return msg


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app; user errors (bad options included) print one line on stderr and exit 2."""
    from transformers.utils import logging as hf_logging

    # an application's choice, made here and not at import: no weight-loading bars or backend notices on stderr
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    exits, aborts, usage = _click_errors()
    try:
        rv = app(args=argv, standalone_mode=False)
    except VtpruneError as e:
        typer.echo(f"error: {user_message(e)}", err=True)
        return 2
    except exits as e:
        return int(getattr(e, "exit_code", 0) or 0)
    except aborts:
        typer.echo("aborted", err=True)
        return 130
    except usage as e:
        msg = " ".join(e.format_message().split())
        name = getattr(getattr(e, "param", None), "opts", None)
        typer.echo(f"error: {name[0] + ': ' if name else ''}{msg}", err=True)
        return 2
    # without standalone mode, typer returns (not raises) the code of an Exit raised in a command, and 130 for Ctrl-C
    return rv if isinstance(rv, int) and not isinstance(rv, bool) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

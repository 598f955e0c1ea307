"""Entry-point setting checks: each error names its argument, non-finite numbers never pass a range."""

import math

import pytest

from vtprune.errors import ConfigError
from vtprune.options import check_choice, check_int, check_out_dir, check_positive, check_range


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_refused_even_without_bounds(value):
    with pytest.raises(ConfigError, match="epochs must be a finite number") as e:
        check_range("epochs", value)
    assert e.value.argument == "epochs"
    with pytest.raises(ConfigError, match="lr must be a finite number"):
        check_positive("lr", value)


def test_ranges_known_answers():
    check_range("warmup", 0.0, 0, 1)
    check_range("warmup", 1.0, 0, 1)
    check_positive("lr", 1e-12)
    check_range("keep", 0.5, 0, 1, lo_open=True, hi_open=True)
    with pytest.raises(ConfigError, match=r"warmup must be a finite number in \[0, 1\), got 1.0"):
        check_range("warmup", 1.0, 0, 1, hi_open=True)
    with pytest.raises(ConfigError, match="lr must be a finite number > 0, got 0"):
        check_positive("lr", 0)
    with pytest.raises(ConfigError, match="attn_weight must be a finite number >= 0, got -0.5"):
        check_range("attn_weight", -0.5, 0)
    with pytest.raises(ConfigError, match="lr must be a finite number > 0, got 'x'"):
        check_positive("lr", "x")
    with pytest.raises(ConfigError, match="must be a finite number"):
        check_positive("lr", True)


def test_ints_choices_and_output_directories(tmp_path):
    check_int("steps", 1, 1)
    with pytest.raises(ConfigError, match="workers must be an integer >= 0, got -1") as e:
        check_int("workers", -1, 0)
    assert e.value.argument == "workers"
    with pytest.raises(ConfigError, match="steps must be an integer >= 1, got 2.5"):
        check_int("steps", 2.5, 1)
    with pytest.raises(ConfigError, match="mode must be one of box, boxfree, got 'x'"):
        check_choice("mode", "x", ("box", "boxfree"))
    check_out_dir("out", tmp_path)  # an existing directory is fine (resume)
    check_out_dir("out", tmp_path / "new")
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="out must be a directory, but .* is a file"):
        check_out_dir("out", tmp_path / "f")


def test_options_come_from_the_config_fields():
    """The CLI's flags, defaults and help are the config dataclass's fields and attribute docstrings."""
    import dataclasses

    from vtprune.options import field_docs, setting

    @dataclasses.dataclass
    class Settings:
        out: str
        """Where results go."""
        max_steps: int | None = None
        lr: float = 1e-3
        """Peak learning
        rate."""

    assert field_docs(Settings) == {"out": "Where results go.", "lr": "Peak learning rate."}
    opt = setting(Settings, "lr")
    assert opt.default == 1e-3 and opt.param_decls == ("--lr",) and opt.help == "Peak learning rate."
    assert setting(Settings, "out").default is ... and setting(Settings, "max_steps", "--steps").param_decls == ("--steps",)


def test_train_commands_show_their_configs_docs(capsys):
    from vtprune.cli import main
    from vtprune.training.glimpse import GlimpseTrainSettings
    from vtprune.options import field_docs

    assert main(["train", "glimpse", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert " ".join(field_docs(GlimpseTrainSettings)["epochs"].split()) in out

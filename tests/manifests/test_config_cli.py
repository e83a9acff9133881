"""manifests/config_cli.py: a parser from a config dataclass, and the parsed flags back into it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from manifests.config_cli import cli, config_parser, parse_config


class DemoError(ValueError):
    pass


@dataclass
class Demo:
    output: str = field(metadata=cli("where the outputs go"))
    inputs: list[str] = field(metadata=cli("inputs", flag="--input", action="append"))
    steps: int = field(default=1000, metadata=cli("optimiser steps"))
    lr: float = field(default=3e-4, metadata=cli("peak rate; 10 % of it at the start"))
    max_gap: float | None = field(default=None, metadata=cli("s; default: any pause"))
    device: Literal["auto", "cpu", "cuda"] = "auto"
    shards: list[str] | None = field(default=None, metadata=cli("only these shards"))
    sizes: list[int] = field(default_factory=lambda: [1, 4], metadata=cli("batch sizes"))
    betas: tuple[float, ...] = (0.9, 0.95)
    resume: bool = field(default=False, metadata=cli("continue from the newest checkpoint"))
    report: bool = field(default=True, metadata=cli("rebuild the report at the end"))
    secret: str | None = field(default=None, metadata=cli(skip=True))
    table: dict = field(default_factory=dict, metadata=cli(skip=True))

    def __post_init__(self):
        if self.steps < 0:
            raise DemoError(f"--steps must be >= 0, got {self.steps}; pass 0 to only evaluate")


def test_types_defaults_and_flag_names():
    cfg = parse_config(Demo, ["--output", "o", "--input", "a", "--input", "b", "--steps", "5", "--lr", "0.1",
                              "--max-gap", "0.5", "--device", "cpu", "--shards", "000001", "000003",
                              "--sizes", "2", "8", "--betas", "0.8", "0.99"])
    assert cfg == Demo(output="o", inputs=["a", "b"], steps=5, lr=0.1, max_gap=0.5, device="cpu",
                       shards=["000001", "000003"], sizes=[2, 8], betas=(0.8, 0.99))
    assert isinstance(cfg.steps, int) and isinstance(cfg.lr, float) and isinstance(cfg.sizes[0], int)
    d = parse_config(Demo, ["--output", "o", "--input", "a"])
    assert (d.steps, d.lr, d.max_gap, d.device, d.shards, d.sizes, d.betas, d.resume, d.report) == (
        1000, 3e-4, None, "auto", None, [1, 4], (0.9, 0.95), False, True)


def test_bool_switches_follow_the_default():
    assert parse_config(Demo, ["--output", "o", "--input", "a", "--resume"]).resume is True
    assert parse_config(Demo, ["--output", "o", "--input", "a", "--no-report"]).report is False
    with pytest.raises(SystemExit):
        parse_config(Demo, ["--output", "o", "--input", "a", "--report"])  # only --no-report exists


def test_help_lists_flags_choices_and_defaults_and_skips_what_is_marked():
    text = config_parser(Demo, prog="demo").format_help()
    for s in ("--output", "--input", "--steps", "optimiser steps (default 1000)", "--max-gap", "--no-report",
              "{auto,cpu,cuda}", "--resume", "continue from the newest checkpoint",
              "do not rebuild the report at the end", "10 % of it at the start (default 0.0003)"):
        assert s in text, s
    assert "--secret" not in text and "--table" not in text


def test_bad_choice_missing_required_and_bad_type_exit_2(capsys):
    for argv in (["--output", "o", "--input", "a", "--device", "tpu"], ["--input", "a"],
                 ["--output", "o", "--input", "a", "--steps", "many"]):
        with pytest.raises(SystemExit) as e:
            parse_config(Demo, argv, prog="demo")
        assert e.value.code == 2
    assert "invalid choice: 'tpu'" in capsys.readouterr().err


def test_validation_error_is_a_clean_argparse_error(capsys):
    with pytest.raises(SystemExit) as e:
        parse_config(Demo, ["--output", "o", "--input", "a", "--steps", "-1"], prog="demo")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "demo: error: --steps must be >= 0, got -1; pass 0 to only evaluate" in err
    assert "Traceback" not in err


def test_extra_values_for_skipped_fields_and_unsupported_types_must_be_skipped():
    cfg = parse_config(Demo, ["--output", "o", "--input", "a"], extra={"table": {"k": 1}, "secret": "s"})
    assert cfg.table == {"k": 1} and cfg.secret == "s"

    @dataclass
    class Bad:
        table: dict = field(default_factory=dict)

    with pytest.raises(TypeError, match="cli\\(skip=True\\)"):
        config_parser(Bad)

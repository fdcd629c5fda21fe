"""`omega bench conflicts` and `python -m cellsim`: one table of typed options (`cellsim.options`).

Before, `omega bench conflicts --help` showed only `--help` and every argument passed through
unchecked to the simulator. These tests hold the two command lines to the same flags, the same
errors (exit 2, naming the option, the value and what is allowed), and the `--plot` figure.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cellsim import options
from cellsim.__main__ import main as cellsim_main
from cellsim.__main__ import parser
from omega.cli import app

TINY = ["--preset", "A", "--machines", "40", "--days", "0.02"]


def omega(*argv: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["bench", "conflicts", *argv], env={"COLUMNS": "200"})
    return result.exit_code, _flat(result.output)


def cellsim(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit:
        cellsim_main(list(argv))
    captured = capsys.readouterr()
    return int(exit.value.code or 0), _flat(captured.out + captured.err)


def _flat(text: str) -> str:
    """One line, without rich's boxes, so a message wrapped at the terminal's edge matches."""
    return re.sub(r"[\s│╭╮╰╯─]+", " ", text)


def test_help_lists_experiments_presets_and_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    from cellsim.experiments import EXPERIMENTS

    assert list(options.EXPERIMENTS) == list(EXPERIMENTS), "the light list fell behind"
    assert options.presets() == ["A", "B", "C", "SYNTHETIC"]
    code, omega_help = omega("--help")
    assert code == 0
    code, cellsim_help = cellsim(capsys, "--help")
    assert code == 0
    for text in (omega_help, cellsim_help):
        for word in [*EXPERIMENTS, "perf", "A|B|C|SYNTHETIC|FILE.toml", "real|paper"]:
            assert word in text
        for flag in options.FLAGS:
            assert flag.option in text


def test_both_command_lines_take_the_same_flags() -> None:
    import typer.main

    command = typer.main.get_command(app).commands["bench"].commands["conflicts"]
    omega_flags = {o for p in command.params for o in p.opts if o.startswith("--")}
    cellsim_flags = {o for a in parser()._actions for o in a.option_strings}
    assert omega_flags == cellsim_flags - {"-h", "--help"}
    assert omega_flags == {f.option for f in options.FLAGS}


@pytest.mark.parametrize(
    ("argv", "option", "allowed"),
    [
        (
            ["tjob", "--preset", "Z"],
            "--preset",
            "one of A, B, C, SYNTHETIC, or an existing TOML file",
        ),
        (["tjob", "--days", "-1"], "--days", "a number above 0"),
        (["tjob", "--machines", "0"], "--machines", "a whole number of 1 or more"),
        (["tjob", "--values", "1,x"], "--values", "numbers separated by commas"),
        (["tjob", "--batch-schedulers", "0"], "--batch-schedulers", "whole numbers of 1 or more"),
        (["tjob", "--plot", "fig.jpg"], "--plot", "a file name ending in .png"),
        (["tjob", "--model", "omega"], "--model", "one of real, paper"),
        (["nope"], "xperiment", "one of tjob, batch-load, shards, modes, monolithic, sampling"),
    ],
)
def test_a_bad_value_exits_2_naming_option_value_and_what_is_allowed(
    argv: list[str],
    option: str,
    allowed: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = argv[-1]
    full = [*argv, "--out", str(tmp_path)]
    for code, text in (omega(*full), cellsim(capsys, *full)):
        assert code == 2, text
        assert option in text and repr(bad) in text and allowed in text, text
    assert not any(tmp_path.iterdir()), "nothing ran"


def test_options_that_do_not_fit_the_experiment_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text = omega("modes", "--batch-schedulers", "1,2", "--out", str(tmp_path))
    assert code == 2 and "--batch-schedulers: only tjob takes it, not modes" in text
    code, text = cellsim(capsys, "perf", "--plot", "x.png", "--out", str(tmp_path))
    assert code == 2 and "--plot" in text


def test_an_experiment_needs_out_and_perf_runs_without_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, text = omega("modes")
    assert code == 2 and "modes: --out DIR is required" in text, text
    code, text = cellsim(capsys, "tjob")
    assert code == 2 and "tjob: --out DIR is required" in text, text
    # The issue's own command line for the simulator's speed: one timed run, no CSV.
    command = ["perf", "--preset", "A", "--machines", "100", "--days", "0.01"]
    ran = subprocess.run(
        [sys.executable, "-m", "bench.sim", *command],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr
    summary = json.loads(ran.stdout.splitlines()[-1])
    assert summary["bench"] == "sim.perf" and summary["tasks_placed"] > 0, summary
    assert not any(tmp_path.iterdir()), "perf wrote nothing"


def test_omega_starts_without_the_simulator() -> None:
    """The command's options come from `cellsim.options`; the engine, numpy and matplotlib
    load only when it runs, so `omega jobs` does not pay ~0.6 s for them."""
    heavy = ("cellsim.engine", "cellsim.experiments", "numpy", "matplotlib", "cellstate.state")
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, omega.cli; print(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert "cellsim.options" in loaded
    assert not [m for m in heavy if m in loaded]


def _not_blank(png: Path) -> None:
    import matplotlib.image

    pixels = matplotlib.image.imread(png)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    colours = pixels[..., :3].reshape(-1, 3)
    # Lines and text: many pixels differ from the white background, in more than one colour.
    assert (colours.min(axis=1) < 0.9).mean() > 0.01
    assert len({tuple(c) for c in colours[:: max(1, len(colours) // 20000)].round(2)}) > 5


def test_a_tiny_tjob_writes_the_csv_and_the_paper_figure(tmp_path: Path) -> None:
    """Two t_job points, one line per number of batch schedulers, through `omega`."""
    figure = tmp_path / "fig" / "tjob-paper.png"
    figure.parent.mkdir()
    code, text = omega(
        "tjob", *TINY, "--values", "0.1,10", "--batch-schedulers", "1,2",
        "--out", str(tmp_path), "--plot", str(figure),
    )  # fmt: skip
    assert code == 0, text
    summary = json.loads(text[text.rindex("{") :])
    assert summary["plot"] == str(figure) and summary["seed"] == 1
    rows = (tmp_path / "tjob.csv").read_text().splitlines()
    variants = {(r.split(",")[5], r.split(",")[6]) for r in rows[1:]}
    assert variants == {
        ("1 batch", "0.1"),
        ("1 batch", "10"),
        ("2 batch", "0.1"),
        ("2 batch", "10"),
    }
    _not_blank(figure)


def test_a_tiny_modes_sweep_plots_one_line_per_conflict_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Through `python -m cellsim`: the same option table, and the figure per conflict mode."""
    figure = tmp_path / "modes.png"
    cellsim_main(["modes", *TINY, "--days", "0.01", "--values", "0.1,1",
                  "--out", str(tmp_path), "--plot", str(figure)])  # fmt: skip
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["plot"] == str(figure)
    rows = (tmp_path / "modes.csv").read_text().splitlines()
    assert {r.split(",")[5] for r in rows[1:]} == {
        "fine-incremental", "fine-all-or-nothing", "coarse-incremental", "coarse-all-or-nothing",
    }  # fmt: skip
    _not_blank(figure)

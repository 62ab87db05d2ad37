"""Progress: the library reports through an optional callback and never prints; the CLI draws bars only
on a terminal (never in captured / CI output, never with --quiet)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from typer.testing import CliRunner

from tokcal import evaluate, synthetic
from tokcal.calibrators import Temperature
from tokcal.cli import app
from tokcal.cli.common import progress_bars
from tokcal.gate import check

runner = CliRunner()


@pytest.fixture(scope="module")
def table():
    return synthetic.make_table(1500, 50, domains={"a": 0.6, "b": 1.2}, seq_len=30, seed=5)


@pytest.fixture(scope="module")
def table_path(table, tmp_path_factory):
    path = tmp_path_factory.mktemp("progress") / "t.parquet"
    table.write_parquet(path)
    return path


def _recorder():
    calls: list[tuple[str, int, int]] = []
    return calls, lambda step, done, total: calls.append((step, done, total))


def test_evaluate_reports_each_step_to_completion(table, capsys):
    calls, cb = _recorder()
    ev = evaluate(table, slices=["group:domain", "type"], bootstrap=30, progress=cb)
    assert capsys.readouterr() == ("", "")  # the library never prints
    steps = [s for s, _, _ in calls]
    assert list(dict.fromkeys(steps)) == ["probabilities", "slices", "bootstrap", "metrics"]
    for step in set(steps):
        mine = [(d, t) for s, d, t in calls if s == step]
        dones = [d for d, _ in mine]
        assert dones == sorted(dones) and all(0 <= d <= t for d, t in mine)
        assert mine[-1][0] == mine[-1][1]  # each step ends done == total
    n_units = ev.to_dict()["settings"]["resampling"]["n_units"]
    assert [t for s, _, t in calls if s == "bootstrap"][-1] == n_units
    # the callback changes nothing computed
    same = evaluate(table, slices=["group:domain", "type"], bootstrap=30)
    assert same.to_dict()["overall"] == ev.to_dict()["overall"]


def test_no_bootstrap_step_without_resamples(table):
    calls, cb = _recorder()
    evaluate(table, slices=[], bootstrap=0, progress=cb)
    assert "bootstrap" not in {s for s, _, _ in calls}


def test_gate_passes_the_callback_on(table):
    calls, cb = _recorder()
    check(table, Temperature().fit(table), max_ece=1.0, bootstrap=10, progress=cb)
    assert ("metrics", 1, 1) in calls


def test_streamed_passes_report_the_rows_read(table, table_path):
    from tokcal.distributed.fit import Batches, fit_stream
    from tokcal.distributed.stats import evaluate_stream

    calls, cb = _recorder()
    ev = evaluate_stream(table_path, slices=["group:domain"], bootstrap=10, progress=cb)
    reads = [(d, t) for s, d, t in calls if s == "read"]
    assert reads[0] == (0, len(table)) and reads[-1] == (len(table), len(table))
    assert [d for d, _ in reads] == sorted(d for d, _ in reads)  # one pass, rows read only grow
    assert ev.to_dict()["overall"] == evaluate_stream(table_path, slices=["group:domain"], bootstrap=10
                                                      ).to_dict()["overall"]  # the callback changes nothing
    calls.clear()
    cal = fit_stream(Temperature(), Batches(table_path, batch_rows=500, progress=cb))
    passes = [(d, t) for s, d, t in calls if s == "read"]
    starts, ends = passes.count((0, len(table))), passes.count((len(table), len(table)))
    assert starts == ends >= 2, passes  # every pass of the fit runs from 0 to all rows
    assert cal.temperature == fit_stream(Temperature(), Batches(table_path, batch_rows=500)).temperature


def test_bars_drawn_on_a_terminal_only():
    term = Console(file=io.StringIO(), force_terminal=True, width=100)
    with progress_bars(console=term, labels={"bootstrap": "resampling"}) as cb:
        assert cb is not None
        cb("bootstrap", 5, 10)
        cb("bootstrap", 10, 10)
    assert "resampling" in term.file.getvalue()
    with progress_bars(quiet=True, console=Console(file=io.StringIO(), force_terminal=True)) as cb:
        assert cb is None
    with progress_bars(console=Console(file=io.StringIO(), force_terminal=False)) as cb:
        assert cb is None


@pytest.mark.parametrize("args", [
    ["evaluate", "{t}", "--bootstrap", "20"],
    ["fit", "{t}", "-o", "{out}/c.json", "--bootstrap", "20"],
    ["check", "{t}", "--max-ece", "1", "--bootstrap", "20"],
])
@pytest.mark.parametrize("quiet", [[], ["--quiet"]])
def test_cli_output_has_no_progress_noise_when_not_a_terminal(table_path, tmp_path, args, quiet):
    argv = [a.format(t=table_path, out=tmp_path) for a in args] + quiet
    res = runner.invoke(app, argv)
    assert res.exit_code == 0, res.output
    for noise in ("probabilities", "held out, before:", "\r", "\x1b"):
        assert noise not in res.output


def _run_with_terminal_stderr(argv: list[str]) -> tuple[str, str, int]:
    """Run the real ``tokcal`` with stderr on a pseudo-terminal (as an interactive shell has it)."""
    import os
    import pty
    import subprocess
    import sys

    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "100"}
    env.pop("CI", None)
    proc = subprocess.Popen([sys.executable, "-c", "from tokcal.cli import main; main()", *argv],
                            stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    out = proc.stdout.read().decode()
    rc = proc.wait()
    os.close(master)
    return out, b"".join(chunks).decode(errors="replace"), rc


@pytest.mark.skipif(not hasattr(__import__("os"), "openpty"), reason="needs a pseudo-terminal")
def test_cli_draws_bars_on_a_terminal_and_not_with_quiet(table_path):
    argv = ["evaluate", str(table_path), "--bootstrap", "50", "--slice", "group:domain"]
    out, err, rc = _run_with_terminal_stderr(argv)
    assert rc == 0, err
    assert "bootstrap" in err and "probabilities" in err  # the bars, on stderr
    assert "probabilities" not in out  # stdout (the summary) stays clean
    out_q, err_q, rc = _run_with_terminal_stderr([*argv, "--quiet"])
    assert rc == 0 and "probabilities" not in err_q and "bootstrap" not in err_q


@pytest.mark.skipif(not hasattr(__import__("os"), "openpty"), reason="needs a pseudo-terminal")
def test_cli_draws_bars_for_streamed_passes(table_path, tmp_path):
    out, err, rc = _run_with_terminal_stderr(["evaluate", str(table_path), "--bootstrap", "20", "--stream"])
    assert rc == 0 and "read" in err, err
    out, err, rc = _run_with_terminal_stderr(["fit", str(table_path), "-o", str(tmp_path / "c.json"),
                                              "--bootstrap", "20", "--stream"])
    assert rc == 0 and "fit: read" in err and "held out, after: read" in err, err
    assert "read" not in out

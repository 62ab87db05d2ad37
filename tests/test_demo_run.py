"""End to end: ``tokcal demo`` with the shipped model writes its files and calibration helps in both domains."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from tokcal.cli import app
from tokcal.demo import run

pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--in-domain", "160", "--shift", "240",
                                      "--bootstrap", "40"])
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.mark.slow
def test_demo_writes_report_evaluations_and_calibrators(demo_out):
    out, output = demo_out
    for name in ("report.html", "evaluation.json", "calibrator.json", "test.parquet", "calibration.parquet"):
        assert (out / name).is_file(), name
    for name in ("uncalibrated", *run.CALIBRATORS):
        assert (out / "evaluations" / f"{name}.json").is_file(), name
    for name in run.CALIBRATORS:
        assert (out / "calibrators" / f"{name}.json").is_file(), name
    cal = json.loads((out / "calibrator.json").read_text())
    chosen = re.search(r"chosen to ship: ([\w ]+) \(", " ".join(output.split())).group(1).replace(" ", "_")
    assert cal["type"] == chosen and (out / "calibrators" / f"{chosen}.json").read_text() == \
        (out / "calibrator.json").read_text()
    html = (out / "report.html").read_text()
    assert "<svg" in html and "group:domain" in html and "fortunes" in html
    assert f'<p class="verdict">{chosen} ' in html  # the headline speaks of the chosen calibrator
    assert "in-domain" in output and "shift" in output and "ECE" in output
    assert "collecting 400 texts" in output and "/400" not in output  # no progress bars when not a terminal


@pytest.mark.slow
def test_chosen_on_the_calibration_half_and_its_check_passes(demo_out):
    """The shipped calibrator is chosen without the test half, and the printed check command passes."""
    import shlex

    import tokcal
    from tokcal.calibrators import split_by_sequence

    out, output = demo_out
    calib = tokcal.TokenTable.read_parquet(out / "calibration.parquet")
    chosen, scores = run.choose_calibrator(calib, seed=0)
    assert set(scores) == set(run.CALIBRATORS) and scores[chosen] == min(scores.values())
    assert json.loads((out / "calibrator.json").read_text())["type"] == chosen
    inner_fit, inner_val = split_by_sequence(calib, frac=0.5, seed=1)
    assert len(inner_fit) + len(inner_val) == len(calib)
    line = " ".join(output.split()).split("try: ")[1]
    args = shlex.split(line)
    assert args[:2] == ["tokcal", "check"] and "--max-ece" in args and "--max-slice-ece" in args
    res = CliRunner().invoke(app, args[1:])
    assert res.exit_code == 0 and "check passed" in res.output, res.output


@pytest.mark.slow
def test_temperature_scaling_lowers_ece_in_domain_and_under_shift(demo_out):
    """Per-domain temperatures (and the adaptive one) lower the ECE in both domains; a single temperature
    fitted on the pooled data lowers the overall and the shifted ECE (in-domain it over-corrects)."""
    import tokcal
    from tokcal.calibrators import load_calibrator

    out, _ = demo_out
    evs = {p.stem: json.loads(p.read_text()) for p in (out / "evaluations").glob("*.json")}
    by_domain = run.ece_by_domain(evs)
    for domain in (run.IN_DOMAIN, run.SHIFT):
        before = by_domain[domain]["uncalibrated"][0]
        assert by_domain[domain]["group_temperature"][0] < before, (domain, by_domain[domain])
        assert by_domain[domain]["adaptive_temperature"][0] < before, (domain, by_domain[domain])
    for domain in ("all", run.SHIFT):
        assert by_domain[domain]["temperature"][0] < 0.5 * by_domain[domain]["uncalibrated"][0], by_domain
    temps = json.loads((out / "calibrators" / "group_temperature.json").read_text())["temperatures"]
    assert temps[run.SHIFT] > temps[run.IN_DOMAIN]  # the model is more over-confident on the shifted text
    # the written files agree with a fresh evaluation of the written table and calibrator
    table = tokcal.TokenTable.read_parquet(out / "test.parquet")
    ev = tokcal.evaluate(table, calibrator=load_calibrator(out / "calibrator.json"), bootstrap=0)
    saved = json.loads((out / "evaluation.json").read_text())
    assert ev.to_dict()["overall"]["ece"] == pytest.approx(saved["overall"]["ece"], abs=1e-9)
    assert ev.to_dict()["overall"]["n"] == saved["overall"]["n"]
    # the two domains are really different for the model: it is worse on the shifted text
    nll = {d: run._slice_row(evs["uncalibrated"], "group:domain", d)["nll"] for d in (run.IN_DOMAIN, run.SHIFT)}
    assert nll[run.SHIFT] > nll[run.IN_DOMAIN] + 0.5
    assert np.isfinite(list(nll.values())).all()


def test_missing_model_files_are_a_clear_error(tmp_path):
    from tokcal.errors import TokcalError

    with pytest.raises(TokcalError, match="retrain it"):
        run.load_model(tmp_path)

"""Every size read from a file or an argument is bounded, with a clear error before any allocation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import tokcal
from tokcal import metrics, synthetic
from tokcal.cli import app
from tokcal.errors import ValidationError
from tokcal.metrics.smooth import MIN_BANDWIDTH
from tokcal.validation import MAX_BINS, MAX_BOOTSTRAP


@pytest.fixture(scope="module")
def table():
    return synthetic.make_table(600, 30, seed=1)


def test_bins_are_bounded(table):
    rng = np.random.default_rng(0)
    c, a = rng.random(500), rng.random(500) < 0.5
    assert metrics.ece(c, a, bins=MAX_BINS) >= 0
    for bad in (MAX_BINS + 1, 10**9, 0):
        with pytest.raises(ValidationError, match="bins"):
            metrics.ece(c, a, bins=bad)
        with pytest.raises(ValidationError, match="bins"):
            metrics.BinnedAccumulator(bins=bad)
        with pytest.raises(ValidationError, match="bins must be"):
            tokcal.evaluate(table, bins=bad, bootstrap=0)


def test_bootstrap_resamples_are_bounded(table):
    with pytest.raises(ValidationError, match=f"bootstrap must be less than or equal to {MAX_BOOTSTRAP}"):
        tokcal.evaluate(table, bootstrap=10**9)


def test_smooth_ece_bandwidth_has_a_floor():
    rng = np.random.default_rng(0)
    c, a = rng.random(2000), rng.random(2000) < 0.5
    auto, sigma = metrics.smooth_ece(c, a, return_bandwidth=True)
    assert sigma >= MIN_BANDWIDTH
    assert metrics.smooth_ece(c, a, bandwidth=sigma) == pytest.approx(auto)
    assert metrics.smooth_ece(c, a, bandwidth=MIN_BANDWIDTH) >= 0
    for bad in (1e-6, MIN_BANDWIDTH / 2, 0.0, float("nan")):
        with pytest.raises(ValidationError, match="bandwidth: expected a number >= 0.000976562"):
            metrics.smooth_ece(c, a, bandwidth=bad)


def test_synthetic_sizes_are_bounded():
    for n, v in ((10**12, 100), (0, 100), (100, 1), (100, 1 << 24)):
        with pytest.raises(ValidationError, match="n_tokens|vocab_size"):
            synthetic.make_table(n, v)
    with pytest.raises(ValidationError, match="exceed 1,073,741,824 values"):
        synthetic.make_logits(10**6, 10**4)


def test_a_baseline_with_absurd_bins_is_refused(table, tmp_path):
    path = tmp_path / "t.parquet"
    table.write_parquet(path)
    ev = tokcal.evaluate(table, bootstrap=0).to_dict()
    ev["settings"]["bins"] = 10**9
    (tmp_path / "base.json").write_text(json.dumps(ev))
    res = CliRunner().invoke(app, ["check", str(path), "--baseline", str(tmp_path / "base.json"),
                                   "--max-regression", "1", "--bootstrap", "0"])
    assert res.exit_code == 2 and "error: " in res.output and "bins" in res.output, res.output

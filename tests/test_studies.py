"""Studies: exact Sigma_l on span(U), computed report text, the quick end-to-end report."""

import argparse
import json
import math
import os

import numpy as np
import pytest

from mimfast.studies import STUDIES, theory
from mimfast.studies.common import crossing
from mimfast.tasks import MultiIndexTask


# ---------------------------------------------------------------------------
# Sigma_l restricted to span(U)
# ---------------------------------------------------------------------------
def test_exact_sigma_u_known_values():
    # he2 with graded c = (1, 1/sqrt 2), normalised by sqrt(2 * 1.5): -E[y zz^T] = -2 c / sqrt 3
    ev = theory.sorted_eigs(theory.exact_sigma_u("he2", 2, "square"))
    np.testing.assert_allclose(ev, [-math.sqrt(2) / math.sqrt(3), -2 / math.sqrt(3)], atol=1e-12)
    # z1 z2: off-diagonal -1 -> eigenvalues +1, -1
    np.testing.assert_allclose(theory.sorted_eigs(theory.exact_sigma_u("z1z2", 2)), [1, -1],
                               atol=1e-12)
    # even loss on z1 z2 z3: c = -(y^2 - 1), E[(y^2 - 1) z_k^2] = 2 -> -2 I
    np.testing.assert_allclose(theory.exact_sigma_u("z1z2z3", 3, "even"), -2 * np.eye(3),
                               atol=1e-10)
    # square loss is blind to targets without a second-order Hermite part
    for target, r in (("z1z2z3", 3), ("he3", 2), ("he4", 2), ("sign3", 3)):
        assert np.abs(theory.exact_sigma_u(target, r, "square")).max() < 1e-10
    # odd label transforms (huber) stay blind to odd targets; even targets become visible
    assert np.abs(theory.exact_sigma_u("he3", 2, "huber")).max() < 1e-10
    assert np.abs(theory.sorted_eigs(theory.exact_sigma_u("he4", 2, "huber"))).min() > 0.1


@pytest.mark.parametrize("target,r,loss", [("he2", 2, "huber"), ("z1z2", 2, "pseudo_huber"),
                                           ("he4", 2, "huber"), ("z1z2z3", 3, "even"),
                                           ("staircase", 3, "square"), ("he2", 2, "even")])
def test_estimate_matches_exact_within_sampling_error(target, r, loss):
    task = MultiIndexTask(d=r + 3, r=r, link=target, seed=4)
    X, y = task.sample(60000, dtype="float64")
    M_hat, se = theory.estimate_sigma_u(X, y, task.U, loss)
    M = theory.exact_sigma_u(target, r, loss)
    # Weyl: |lambda_i(M_hat) - lambda_i(M)| <= ||M_hat - M||_2 <= ||.||_F ~ se
    assert np.linalg.norm(M_hat - M) <= 4 * se
    assert np.abs(theory.sorted_eigs(M_hat) - theory.sorted_eigs(M)).max() <= 4 * se


def test_quadrature_is_converged():
    for target, r, loss in (("he2", 2, "huber"), ("he2+z1z2+z2z3", 3, "pseudo_huber")):
        a = theory.exact_sigma_u(target, r, loss)
        b = theory.exact_sigma_u(target, r, loss, points=60 if r == 3 else 160)
        assert np.abs(a - b).max() < 2e-3


def test_crossing_interpolates_on_log_scale():
    x, exact = crossing([1, 2, 4, 8], [0.9, 0.5, 0.2, 0.1], 0.3)
    assert exact and 2 < x < 4
    assert crossing([1, 2], [0.9, 0.8], 0.3) == (None, True)
    assert crossing([1, 2], [0.2, 0.1], 0.3) == (1, False)


# ---------------------------------------------------------------------------
# the report text is computed from the data
# ---------------------------------------------------------------------------
def _t1_records(errs, energies):
    recs = []
    for t1, e in errs.items():
        for seed in (0, 1):
            en = energies.get(t1, [0.7, 0.25])
            recs.append({"status": "ok", "d": 256, "t1": t1, "seed": seed, "n1": 1000,
                         "test_rel_mse": e + 0.002 * seed, "sin_theta.0": 0.2,
                         "sin_theta.1": 0.15, "energy_per_direction.0": en[0],
                         "energy_per_direction.1": en[1]})
    return recs


def _t1_args(tmp_path):
    p = argparse.ArgumentParser()
    STUDIES["t1"].add_arguments(p)
    ns = p.parse_args([])
    ns.quick, ns.out = False, str(tmp_path)
    return ns


def test_t1_headline_reports_numbers_and_verdicts(tmp_path):
    errs = {0: 1.0, 1: 0.31, 2: 0.1, 4: 0.05, 8: 0.06, 24: 0.4}
    sec = STUDIES["t1"].analyse(_t1_records(errs, {24: [0.97, 0.01]}), _t1_args(tmp_path),
                                str(tmp_path))
    text = " ".join(sec.headline)
    assert "T₁=1 error 0.311 vs best 0.051 at T₁=4 — reproduced" in text
    assert "collapse reproduced" in text
    assert sec.summary["best_t1"] == 4
    assert (tmp_path / "t1_error.png").stat().st_size > 1000
    # a flat curve is reported as not reproduced
    flat = {t: 0.05 for t in errs}
    sec = STUDIES["t1"].analyse(_t1_records(flat, {}), _t1_args(tmp_path), str(tmp_path))
    text = " ".join(sec.headline)
    assert "NOT reproduced" in text and "collapse NOT reproduced" in text


# ---------------------------------------------------------------------------
# end to end: reproduce all --quick
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    from mimfast.cli import main
    out = tmp_path_factory.mktemp("report")
    rc = main(["reproduce", "all", "--quick", "--out", str(out), "--backend", "numpy",
               "--no-progress"])
    assert rc == 0
    return out


def test_quick_report_has_every_section_and_figure(quick_report):
    text = (quick_report / "REPORT.md").read_text()
    for name, study in STUDIES.items():
        assert f"## {study.title}" in text
        summary = json.loads((quick_report / name / "summary.json").read_text())
        assert summary["failed"] == 0, summary
        for fname, sentence in summary["figures"]:
            path = quick_report / name / fname
            assert path.stat().st_size > 1000
            assert f"({name}/{fname})" in text and sentence in text
        assert (quick_report / name / "records.csv").exists()
    assert "python -m mimfast reproduce all" in text and "--quick" in text
    assert "Quick mode" in text and "numpy:" in text
    assert "reproduced" in text


def test_quick_report_numbers_come_from_the_records(quick_report):
    from mimfast.studies.common import mean_std
    recs = json.loads((quick_report / "t1" / "records.json").read_text())
    summary = json.loads((quick_report / "t1" / "summary.json").read_text())
    d = summary["summary"]["largest_d"]
    e1 = mean_std([r for r in recs if r["d"] == d and r["t1"] == 1], "test_rel_mse")[0]
    assert summary["summary"]["err_t1_1"] == pytest.approx(e1)
    assert f"T₁=1 error {e1:.3f}" in (quick_report / "REPORT.md").read_text()
    loss = json.loads((quick_report / "loss" / "summary.json").read_text())
    assert loss["summary"]["pairs"]["z1z2z3/square"]["predicted"] is False
    assert loss["summary"]["pairs"]["he2/square"]["predicted"] is True


def test_rerun_skips_finished_runs(quick_report, capsys):
    from mimfast.cli import main
    before = os.path.getmtime(quick_report / "t1" / "records.json")
    rc = main(["reproduce", "t1", "--quick", "--out", str(quick_report), "--backend", "numpy",
               "--no-progress"])
    assert rc == 0
    assert os.path.getmtime(quick_report / "t1" / "records.json") == before
    text = (quick_report / "REPORT.md").read_text()
    assert "runs were resumed" in text and "Training took" in text and "0.0 min" not in text


def test_report_says_when_figures_are_skipped(quick_report, monkeypatch):
    import mimfast.studies as studies
    monkeypatch.setattr(studies, "have_matplotlib", lambda: False)
    studies.write_report(str(quick_report), "cmd")
    assert "Figures skipped" in (quick_report / "REPORT.md").read_text()
    monkeypatch.undo()
    studies.write_report(str(quick_report), "cmd")
    assert "Figures skipped" not in (quick_report / "REPORT.md").read_text()


def test_seeds_note_single_seed_has_no_error_bars():
    from mimfast.studies.common import seeds_note
    one = [{"status": "ok", "d": 8, "t1": t, "seed": 0} for t in (1, 2)]
    assert seeds_note(one) == "single seed (no error bars)"
    two = one + [{"status": "ok", "d": 8, "t1": 1, "seed": 1}]
    assert seeds_note(two) == "mean ± sd over seeds"


@pytest.mark.parametrize("flags,match", [
    (["--out", "FILE"], "--out .* is a file, not a folder"),
    (["--out", "FILE/sub"], "--out .* is a file, not a folder"),
    (["--seeds", "0"], "--seeds=0 must be >= 1"),
    (["--seeds", "-2"], "--seeds=-2 must be >= 1"),
    (["--workers", "0"], "--workers=0 must be >= 1"),
    (["--backend", "bogus"], "backend='bogus' is unknown"),
    (["--target", "bogus"], "target='bogus' is unknown"),
    (["--d", ","], "--d is empty"),
    (["--d", "0"], "d=0 must be >= 1"),
    (["--width", "7"], "width=7 must be even"),
    (["--t1-values=-1,2"], "t1=-1 must be >= 0"),
])
def test_reproduce_rejects_bad_flags_before_any_work(tmp_path, capsys, flags, match):
    import re
    from mimfast.cli import main
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    flags = [str(afile) if f == "FILE" else str(afile) + "/sub" if f == "FILE/sub" else f
             for f in flags]
    out = ["--out", str(tmp_path / "out")] if "--out" not in flags else []
    rc = main(["reproduce", "t1", "--quick", "--no-progress", *out, *flags])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(match, err[0]), err
    assert afile.read_text() == "keep me" and not (tmp_path / "out").exists()

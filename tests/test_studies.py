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
    assert "U-shaped" in sec.figures[0][1]
    # a flat curve: one step is not worse (NOT reproduced), and the largest T₁ is as good
    # as the best, so the grid cannot show a collapse
    flat = {t: 0.05 for t in errs}
    sec = STUDIES["t1"].analyse(_t1_records(flat, {}), _t1_args(tmp_path), str(tmp_path))
    text = " ".join(sec.headline)
    assert "NOT reproduced" in text and "collapse not tested" in text
    assert "U-shaped" not in sec.figures[0][1]


def test_t1_collapse_not_tested_when_the_largest_t1_is_best(tmp_path):
    # the grid of `--t1-values 1,2` (plus the automatic T₁): the largest T₁ is the best
    errs = {1: 0.25, 2: 0.12, 5: 0.11}
    sec = STUDIES["t1"].analyse(_t1_records(errs, {}), _t1_args(tmp_path), str(tmp_path))
    text = " ".join(sec.headline)
    assert "collapse not tested (the largest T₁ on the grid is the best" in text
    assert "collapse NOT reproduced" not in text and "sin θ hides" not in text
    assert sec.summary["collapse_tested"] is False
    assert "T₁ growing with d: not tested (one d on the grid" in text


def test_t1_growth_with_d_is_checked():
    from mimfast.studies.t1 import _growth_line
    assert "grows with d — consistent" in _growth_line([64, 256], [3, 5], [24, 24])
    assert "same at every d — T₁ growing with d not seen" in _growth_line([64, 256], [4, 4],
                                                                          [24, 24])
    assert "falls" in _growth_line([64, 256, 1024], [4, 6, 5], [24, 24, 24])
    assert "may be larger" in _growth_line([64, 256], [3, 24], [24, 24])


def test_loss_snr_sentence_only_claims_what_the_numbers_show():
    from mimfast.studies.loss import _snr_line
    missed = [(("he2", "even"), {"snr": 0.45})]
    text = _snr_line(missed, [(("he4", "huber"), {"snr": 0.33})])
    assert "does not fully explain" in text and "he4/huber learns at SNR 0.33" in text
    assert "separates" not in text
    text = _snr_line(missed, [(("he4", "huber"), {"snr": 0.6})])
    assert "separates them here" in text and "does not fully explain" not in text


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
        # section.md links its figures relative to its own folder, so it renders alone
        section = (quick_report / name / "section.md").read_text()
        for fname, _ in summary["figures"]:
            assert f"]({fname})" in section and f"]({name}/{fname})" not in section
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


def test_quick_report_texts(quick_report):
    from mimfast.studies.common import duration
    text = (quick_report / "REPORT.md").read_text()
    # single-seed estimates have no spread to show
    assert "± 0.000" not in text and "(1 seed)" in text
    assert "spectral / layerwise =" in text
    # the per-study time in REPORT.md is the one the section states
    for name in STUDIES:
        s = json.loads((quick_report / name / "summary.json").read_text())
        line = f"{duration(s['wall_s'])} this invocation"
        assert line in text and line in (quick_report / name / "section.md").read_text()
    assert "This invocation took" in text and " 0 s" not in text


def test_duration_keeps_sub_second_times():
    from mimfast.studies.common import duration
    assert duration(0.44) == "0.4 s" and duration(42) == "42 s" and duration(150) == "2.5 min"


def _captured_figures(monkeypatch, module):
    figs = {}
    real = module.save_figure
    monkeypatch.setattr(module, "save_figure", lambda fig, path: figs.__setitem__(
        os.path.basename(path), fig) or real(fig, path))
    return figs


def test_figures_are_readable(quick_report, tmp_path, monkeypatch):
    import mimfast.studies.samples as samples_mod
    import mimfast.studies.t1 as t1_mod
    figs = _captured_figures(monkeypatch, samples_mod)
    t1_figs = _captured_figures(monkeypatch, t1_mod)
    for name in ("samples", "t1"):
        recs = json.loads((quick_report / name / "records.json").read_text())
        p = argparse.ArgumentParser()
        STUDIES[name].add_arguments(p)
        args = p.parse_args([])
        args.quick, args.out = True, str(tmp_path)
        STUDIES[name].analyse(recs, args, str(tmp_path))
    # one-step is dashed in the plot and in its legend handle
    ax = figs["samples_error.png"].axes[0]
    styles = {h.get_label(): h.get_linestyle() for h in ax.get_legend().legend_handles}
    assert any(k.endswith("one-step") and v == "--" for k, v in styles.items())
    assert any(k.endswith("layerwise") and v == "-" for k, v in styles.items())
    # no labelled minor ticks on the log axes (they overlapped: 2×10¹ 3×10¹ 4×10¹)
    fig = figs["samples_recovery.png"]
    fig.canvas.draw()
    for ax in fig.axes:
        assert not [t for t in ax.get_xticklabels(minor=True) if t.get_text()]
    # the t1 title fits in the figure
    fig = t1_figs["t1_error.png"]
    fig.canvas.draw()
    box = fig.axes[0].title.get_window_extent()
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width


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


@pytest.mark.parametrize("study,flags,match", [
    ("samples", ["--ratios", "0,1"], "--ratios=0,1 must be positive"),
    ("samples", ["--threshold", "2"], "--threshold=2 must be in"),
    ("samples", ["--err-threshold", "0"], "--err-threshold=0 must be"),
    ("loss", ["--delta", "0"], "--delta=0 must be"),
    ("loss", ["--learn-threshold", "0"], "--learn-threshold=0 must be in"),
    ("baselines", ["--c", "nan"], "--c=nan must be"),
    ("negative", ["--n-test", "1"], "--n-test=1 must be"),
])
def test_reproduce_rejects_bad_numbers_of_every_study(tmp_path, capsys, study, flags, match):
    import re
    from mimfast.cli import main
    rc = main(["reproduce", study, "--quick", "--no-progress", "--out", str(tmp_path / "o"),
               *flags])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(match, err[0]), err
    assert not (tmp_path / "o").exists()


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
    (["--c", "0"], "--c=0 must be a positive number"),
    (["--c=-1"], "--c=-1 must be a positive number"),
    (["--n-test", "0"], "--n-test=0 must be an integer >= 2"),
    (["--n-test", "1"], "--n-test=1 must be an integer >= 2"),
    (["--backend", "numba", "--threads", "100000"],
     "--threads=100000 is more than .*NUMBA_NUM_THREADS"),
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

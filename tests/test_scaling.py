"""`mimfast scale`: tidy rows, figure, fitted exponent, and resuming an interrupted sweep."""

import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from mimfast import scaling

SETTINGS = {"c": 2.0, "width": 4, "t1": 1, "target": "he2", "r": 2, "noise": 0.0,
            "loss": "square", "activation": "logcosh", "backend": "numpy",
            "dtype": "float32", "threads": 1, "data": "auto", "memory_budget": None,
            "n_test": 512, "power_iters": 3}
DS = [16, 24, 32]


def _csv_rows(out):
    with open(out / "scaling.csv") as fh:
        return list(csv.DictReader(fh))


def test_sweep_writes_rows_figure_and_summary(tmp_path):
    rows, summary = scaling.sweep(DS, [0, 1], str(tmp_path), SETTINGS, isolate=False,
                                  progress=False, log=None)
    assert len(rows) == 6
    for name in ("runs.jsonl", "scaling.csv", "scaling.json", "summary.json", "scaling.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    table = _csv_rows(tmp_path)
    assert [int(r["d"]) for r in table] == [16, 16, 24, 24, 32, 32]
    for r in table:
        assert int(r["n1"]) == scaling.n_for(int(r["d"]), 2.0)
        assert float(r["time_total"]) > 0 and 0 <= float(r["sin_theta_max"]) <= 1
        assert r["data_mode"] == "materialise" and r["backend"] == "numpy"
        work = int(r["n1"]) * int(r["d"]) * 4 * (int(r["t1"]) + 1)
        assert int(r["work"]) == work
        assert math.isclose(float(r["cost_per_work_ns"]), 1e9 * float(r["time_total"]) / work,
                            rel_tol=1e-6)
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["d"] == DS and len(s["per_d"]) == 3 and math.isfinite(s["total"]["exponent"])
    assert s["total"]["ci_low"] <= s["total"]["exponent"] <= s["total"]["ci_high"]
    assert summary["cost_per_work_spread"] >= 1.0
    # the CI is only the scatter about the line, and says so
    assert s["ci_note"] == scaling.CI_NOTE and "run-to-run drift" in s["ci_note"]
    text = scaling.format_summary(summary)
    assert "95% CI" in text and "CI from the fit residuals of these runs" in text
    assert s["invocations"] == 1 and s["resumed"] is False and "resumed" not in text


def test_figure_explains_band_ci_and_axes(tmp_path, monkeypatch):
    from matplotlib.figure import Figure
    figs = []
    real = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: figs.append(self) or
                        real(self, *a, **k))
    scaling.sweep(DS, [0], str(tmp_path), SETTINGS, isolate=False, progress=False, log=None)
    (fig,) = figs
    left, middle, right = fig.axes[:3]
    assert "fit residuals" in left.get_title() and "drift" in left.get_title()
    assert "±1.5x band" in middle.get_legend_handles_labels()[1]
    assert right.get_ylabel()


def test_resumed_sweep_says_rows_come_from_several_invocations(tmp_path):
    scaling.sweep(DS[:2], [0], str(tmp_path), SETTINGS, isolate=False, progress=False,
                  log=None)
    rows, summary = scaling.sweep(DS, [0], str(tmp_path), SETTINGS, isolate=False,
                                  progress=False, log=None)
    assert len({r["invocation"] for r in rows}) == 2
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["invocations"] == 2 and s["resumed"] is True
    assert "rows come from 2 invocations" in scaling.format_summary(summary)
    assert {r["invocation"] for r in _csv_rows(tmp_path)} == {r["invocation"] for r in rows}


def test_timed_out_point_gives_a_short_message():
    cfg = scaling.point_config(16, 0, SETTINGS)
    with pytest.raises(RuntimeError) as exc:
        scaling.run_point_isolated(cfg, timeout=0.01)
    assert str(exc.value) == "point d=16 seed=0 timed out after 0.01 s (--timeout)"


class _Killed(BaseException):
    """Stands in for a kill / Ctrl-C in the middle of the sweep."""


def test_interrupted_sweep_resumes_without_recomputing(tmp_path):
    calls = []

    def dies_at_third(cfg):
        if len(calls) == 2:
            raise _Killed()
        calls.append((cfg["d"], cfg["seed"]))
        return scaling.run_point(cfg, warm=False)

    with pytest.raises(_Killed):
        scaling.sweep(DS, [0, 1], str(tmp_path), SETTINGS, runner=dies_at_third,
                      progress=False, log=None)
    done = [json.loads(l) for l in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert [(r["d"], r["seed"]) for r in done] == calls == [(16, 0), (16, 1)]
    assert len(_csv_rows(tmp_path)) == 2

    # a kill in the middle of appending leaves a torn line: it is ignored
    with open(tmp_path / "runs.jsonl", "a") as fh:
        fh.write('{"d": 24, "seed": 0, "ke')

    again = []

    def counting(cfg):
        again.append((cfg["d"], cfg["seed"]))
        return scaling.run_point(cfg, warm=False)

    msgs = []
    rows, _ = scaling.sweep(DS, [0, 1], str(tmp_path), SETTINGS, runner=counting,
                            progress=False, log=msgs.append)
    assert again == [(24, 0), (24, 1), (32, 0), (32, 1)]  # finished rows not recomputed
    assert any("resuming: 2 of 6" in m for m in msgs)
    assert len(rows) == 6 and len(_csv_rows(tmp_path)) == 6
    first = {(r["d"], r["seed"]): r for r in done}
    for r in rows:  # the kept rows are the original ones, untouched
        if (r["d"], r["seed"]) in first:
            assert r["time_total"] == first[(r["d"], r["seed"])]["time_total"]

    # a third run has nothing to do
    third = []
    scaling.sweep(DS, [0, 1], str(tmp_path), SETTINGS, runner=lambda c: third.append(c),
                  progress=False, log=None)
    assert third == []


def test_failed_point_is_reported_and_rerun_later(tmp_path):
    def fails_for_24(cfg):
        if cfg["d"] == 24:
            raise RuntimeError("injected failure")
        return scaling.run_point(cfg, warm=False)

    rows, summary = scaling.sweep(DS, [0], str(tmp_path), SETTINGS, runner=fails_for_24,
                                  progress=False, log=None)
    assert sorted(r["d"] for r in rows) == [16, 32]
    assert len(summary["failures"]) == 1 and "d=24" in summary["failures"][0]
    seen = []
    rows, summary = scaling.sweep(DS, [0], str(tmp_path), SETTINGS,
                                  runner=lambda c: seen.append(c["d"]) or
                                  scaling.run_point(c, warm=False),
                                  progress=False, log=None)
    assert seen == [24] and len(rows) == 3 and not summary["failures"]


def test_changed_settings_are_new_rows(tmp_path):
    scaling.sweep([16], [0], str(tmp_path), SETTINGS, isolate=False, progress=False, log=None)
    rows, _ = scaling.sweep([16], [0], str(tmp_path), {**SETTINGS, "width": 6},
                            isolate=False, progress=False, log=None)
    assert [r["width"] for r in rows] == [6]
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == 2


def test_fit_exponent_recovers_a_power_law():
    ds = np.array([512, 1024, 2048, 4096, 8192] * 2)
    rng = np.random.default_rng(0)
    ts = 1e-7 * ds ** 2.2 * np.exp(0.03 * rng.standard_normal(ds.size))
    fit = scaling.fit_exponent(ds, ts)
    assert fit["ci_low"] < 2.2 < fit["ci_high"] and abs(fit["exponent"] - 2.2) < 0.05


def test_sweep_level_data_mode_follows_the_largest_point():
    s = {**SETTINGS, "c": 8.0, "width": 32, "memory_budget": 12 * 2 ** 30}
    # 8 d ln d rows at d = 8192 (19 GB per stage) cannot be held: stages 1 and 2 stream,
    # the 65536-row test set is held; every point of the sweep gets that same mode
    assert scaling.decide_data_mode("auto", [512, 8192], s) == "stream:stage1,stage2"
    assert scaling.decide_data_mode("auto", [512, 1024], s) == "materialise"
    assert scaling.decide_data_mode("auto-point", [512, 8192], s) == "auto"


def test_cli_scale_isolated_points_report_peak_memory(tmp_path):
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "mimfast", "scale", "--d", "16,32", "--seeds", "1",
           "--c", "2", "--width", "4", "--t1", "1", "--backend", "numpy",
           "--power-iters", "3", "--no-progress", "--out", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr
    assert "fitted exponent" in p.stdout and (out / "scaling.png").exists()
    rows = _csv_rows(out)
    assert len(rows) == 2
    for r in rows:
        assert int(r["peak_rss_bytes"]) > int(r["rss_baseline_bytes"]) > 0
    p2 = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert p2.returncode == 0 and "resuming: 2 of 2" in p2.stdout


def test_cli_scale_rejects_bad_input():
    p = subprocess.run([sys.executable, "-m", "mimfast", "scale", "--d", "16", "--width", "5",
                        "--out", "/nonexistent/never"], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2 and "width=5 must be even" in p.stderr
    assert "Traceback" not in p.stderr


def test_two_sweeps_cannot_share_a_folder(tmp_path):
    from mimfast.errors import MimfastInputError
    held = scaling.Store(str(tmp_path)).lock()
    try:
        with pytest.raises(MimfastInputError, match="another sweep"):
            scaling.sweep([16], [0], str(tmp_path), SETTINGS, isolate=False, progress=False,
                          log=None)
    finally:
        held.unlock()
    rows, _ = scaling.sweep([16], [0], str(tmp_path), SETTINGS, isolate=False,
                            progress=False, log=None)
    assert len(rows) == 1


def test_duplicate_rows_in_the_log_count_once(tmp_path):
    scaling.sweep([16], [0], str(tmp_path), SETTINGS, isolate=False, progress=False, log=None)
    log = tmp_path / "runs.jsonl"
    log.write_text(log.read_text() * 2)
    rows, summary = scaling.sweep([16], [0], str(tmp_path), SETTINGS, isolate=False,
                                  progress=False, log=None)
    assert len(rows) == 1 and summary["runs"] == 1


def test_resume_keeps_the_planned_data_mode(tmp_path, monkeypatch):
    scaling.sweep([16, 24], [0], str(tmp_path), SETTINGS, isolate=False, progress=False,
                  log=None)
    # less memory free now would plan streaming; the finished rows keep their mode
    monkeypatch.setattr(scaling, "decide_data_mode", lambda *a: "stream")
    seen = []
    rows, _ = scaling.sweep([16, 24, 32], [0], str(tmp_path), SETTINGS,
                            runner=lambda c: seen.append(c["data"]) or
                            scaling.run_point(c, warm=False), progress=False, log=None)
    assert seen == ["materialise"] and len(rows) == 3
    assert {r["data_mode"] for r in rows} == {"materialise"}


def _scale_args(*argv):
    from mimfast.cli import build_parser
    return build_parser().parse_args(["scale", *argv])


def test_two_d_values_write_no_nan(tmp_path):
    rows, summary = scaling.sweep([16, 32], [0], str(tmp_path), SETTINGS, isolate=False,
                                  progress=False, log=None)
    assert len(rows) == 2
    for name in ("scaling.json", "summary.json", "runs.jsonl"):
        text = (tmp_path / name).read_text()
        assert "NaN" not in text and "Infinity" not in text, name
        for line in (text.splitlines() if name.endswith("jsonl") else [text]):
            json.loads(line, parse_constant=lambda c: pytest.fail(f"{name}: {c}"))
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["total"]["ci_low"] is None and s["total"]["ci_high"] is None
    assert math.isfinite(s["total"]["exponent"])
    text = scaling.format_summary(summary)
    assert "CI n/a (needs >= 3 d values)" in text and "nan" not in text


@pytest.mark.parametrize("argv, match", [
    (["--seeds", "0"], "--seeds=0"), (["--timeout", "0"], "--timeout=0"),
    (["--timeout", "-1"], "--timeout=-1"), (["--memory-budget", "-1"], "--memory-budget=-1"),
    (["--memory-budget", "0"], "--memory-budget=0"), (["--target", "bogus"], "bogus"),
    (["--loss", "nope"], "nope"), (["--activation", "nope"], "nope"),
    (["--backend", "nope"], "nope"), (["--dtype", "int8"], "int8"),
    (["--r", "0"], "--r=0"), (["--width", "5"], "even"),
    (["--backend", "numba", "--threads", "100000"], "--threads=100000 .*NUMBA_NUM_THREADS"),
    (["--out", "FILE"], "--out .* is a file, not a folder")])
def test_scale_arguments_are_checked_up_front(argv, match, tmp_path):
    from mimfast.errors import MimfastInputError
    afile = tmp_path / "afile"
    afile.write_text("")
    argv = [str(afile) if a == "FILE" else a for a in argv]
    with pytest.raises(MimfastInputError, match=match):
        scaling.check_scale_args(_scale_args("--d", "16", *argv))


def test_repeated_d_values_run_once():
    ds, budget, notes = scaling.check_scale_args(
        _scale_args("--d", "32,16,32", "--backend", "numpy", "--memory-budget", "2"))
    assert ds == [16, 32] and budget == 2 * 2 ** 30 and "more than once" in notes[0]


def test_cli_scale_bad_target_exits_2_and_writes_nothing(tmp_path):
    out = tmp_path / "o"
    p = subprocess.run([sys.executable, "-m", "mimfast", "scale", "--d", "64", "--target",
                        "bogus", "--out", str(out)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2 and "bogus" in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and not out.exists()


def test_cli_scale_unavailable_backend_exits_2(tmp_path):
    from mimfast.backends import gpu_status
    if gpu_status()[0]:
        pytest.skip("a GPU is visible here: cupy is available")
    out = tmp_path / "o"
    p = subprocess.run([sys.executable, "-m", "mimfast", "scale", "--d", "64", "--backend",
                        "cupy", "--out", str(out)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2 and "cupy" in p.stderr and not out.exists()


def test_missing_matplotlib_skips_the_figure(tmp_path, monkeypatch):
    monkeypatch.setattr(scaling, "matplotlib_missing", lambda: True)
    msgs = []
    rows, _ = scaling.sweep([16], [0], str(tmp_path), SETTINGS, isolate=False,
                            progress=False, log=msgs.append)
    assert rows and (tmp_path / "scaling.csv").exists() and (tmp_path / "summary.json").exists()
    assert not (tmp_path / "scaling.png").exists()
    assert any(m.startswith("figure skipped: matplotlib is not installed") for m in msgs)


def test_short_points_are_repeated_and_the_median_run_kept(monkeypatch):
    from mimfast.schedule import train as real_train
    totals = iter([0.5, 0.1, 0.3])  # the kept run must be the median one (0.3)
    calls = []

    def fake_train(*args, **kwargs):
        rec = real_train(*args, **kwargs)
        t = next(totals)
        rec["timings"] = {**rec["timings"], "total": t}
        calls.append(rec)
        return rec

    monkeypatch.setattr("mimfast.schedule.train", fake_train)
    monkeypatch.setattr(scaling, "MAX_REPEATS", 3)
    cfg = scaling.point_config(16, 0, SETTINGS)
    row = scaling.run_point(cfg, warm=False)
    assert row["repeats"] == 3 and len(calls) == 3
    assert row["time_total"] == 0.3
    # same seed, same data: every repeat trains the same network
    assert all(c["test_rel_mse"] == calls[0]["test_rel_mse"] for c in calls)

    monkeypatch.setattr(scaling, "MIN_POINT_SECONDS", 0.0)
    totals = iter([0.7])
    row = scaling.run_point(cfg, warm=False)
    assert row["repeats"] == 1 and row["time_total"] == 0.7

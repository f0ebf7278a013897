"""The sweep engine: grids, per-row failures, resumable results, Dask identity."""

import csv
import json
import sys

import pytest

from mimfast import sweep
from mimfast.errors import MimfastInputError
from mimfast.sweep import (ResultStore, compare_records, flatten, grid, normalise_config,
                           run_key, run_one, run_sweep)

BASE = {"d": 24, "n1": 400, "n2": 400, "n_test": 300, "width": 8, "t1": 2,
        "backend": "numpy"}


def tiny_grid():
    cfgs = grid(BASE, seed=[0, 1], method=["layerwise", "one_step", "spectral"])
    cfgs.append({**BASE, "target": "z1z2z3", "loss": "even", "seed": 2,
                 "extras": ["mimfast.studies.theory:sigma_u_extra"]})
    return cfgs


def test_grid_is_a_product_first_axis_slowest():
    g = grid({"d": 8}, seed=[0, 1], t1=[1, 2, 3])
    assert len(g) == 6
    assert [c["seed"] for c in g] == [0, 0, 0, 1, 1, 1]
    assert [c["t1"] for c in g[:3]] == [1, 2, 3]
    assert all(c["d"] == 8 for c in g)


def test_normalise_resolves_sizes_and_is_idempotent():
    c = normalise_config({"d": 100, "n_over_d": 3})
    assert c["n1"] == 300 and c["r"] == 2 and c["task_seed"] == 0
    assert normalise_config(c) == c
    assert run_key({"d": 100, "n_over_d": 3}) == run_key({"d": 100, "n1": 300})
    assert run_key({"d": 100, "n1": 300}) != run_key({"d": 100, "n1": 301})
    c = normalise_config({"d": 64, "target": "z1z2z3", "n_over_dlogd": 2})
    assert c["r"] == 3 and c["n1"] == round(2 * 64 * 4.1588830833596715)
    with pytest.raises(MimfastInputError, match="unknown sweep configuration key"):
        normalise_config({"d": 10, "bogus": 1})
    with pytest.raises(MimfastInputError, match="at most one"):
        normalise_config({"d": 10, "n1": 5, "n_over_d": 2})


def test_n2_follows_n1_unless_given():
    assert normalise_config({"d": 50, "n1": 700})["n2"] == 700
    assert normalise_config({"d": 50, "n_over_d": 2})["n2"] == 100
    assert normalise_config({"d": 50, "n1": 700, "n2": 90})["n2"] == 90
    assert normalise_config({"d": 50})["n2"] is None  # train's default C d ln d


def test_cache_serves_exact_rows_and_subranges():
    import numpy as np
    from mimfast.tasks import MultiIndexTask
    cache = sweep.DataCache(max_bytes=2 ** 26)
    be = sweep.caching_backend("numpy", 1, cache)
    task = MultiIndexTask(d=16, r=2, link="he2", seed=9)
    X, y = be.sample(task, 3000, "stage2", 0, "float32")
    Xs, ys = be.sample(task, 1000, "stage2", 1500, "float32")      # inside: a hit
    assert cache.hits == 1 and cache.misses == 1
    Xr, yr = task.sample(1000, "stage2", start=1500, dtype="float32")
    np.testing.assert_array_equal(Xs, Xr)
    np.testing.assert_array_equal(ys, yr)
    Xs[:] = 0                                                        # callers get copies
    np.testing.assert_array_equal(be.sample(task, 1000, "stage2", 1500, "float32")[0], Xr)
    be.sample(task, 10, "stage1", 0, "float32")                      # other stream: a miss
    assert cache.misses == 2


def test_flatten_nested_and_lists():
    flat = flatten({"a": 1, "t": {"x": 2.0, "y": {"z": 3}}, "s": [0.5, 0.25],
                    "history": [{"step": 0}], "h": [{"k": 1}]})
    assert flat == {"a": 1, "t.x": 2.0, "t.y.z": 3, "s.0": 0.5, "s.1": 0.25,
                    "h": '[{"k": 1}]'}


def test_run_one_record_matches_train():
    from mimfast.schedule import train
    from mimfast.tasks import MultiIndexTask
    rec = run_one({**BASE, "seed": 3, "baselines": True})
    assert rec["status"] == "ok", rec.get("error")
    task = MultiIndexTask(d=24, r=2, link="he2", seed=3)
    ref = train(task, 400, 400, 300, width=8, t1=2, backend="numpy", seed=3, threads=1,
                baselines=True)
    ref_flat = {**flatten(ref), "run_key": rec["run_key"]}
    mine = {k: v for k, v in rec.items() if k in ref_flat}
    assert set(ref_flat) <= set(rec)
    assert compare_records([mine], [ref_flat]) == []
    assert rec["sin_theta.0"] == ref["sin_theta"][0]
    assert "baselines.spectral.test_rel_mse" in rec and "history" not in rec


def test_failures_are_rows_and_rerun_skips_finished(tmp_path, monkeypatch):
    cfgs = [dict(BASE, seed=0), dict(BASE, n1=4, seed=0), {"d": 8, "bogus": 1}]
    prefix = tmp_path / "res"
    recs = run_sweep(cfgs, str(prefix), progress=False)
    assert [r["status"] for r in recs] == ["ok", "error", "error"]
    assert "smaller than width" in recs[1]["error"]
    assert "unknown sweep configuration key" in recs[2]["error"]
    # files: JSON round-trips, CSV has one row per run and the flattened columns
    data = json.loads((tmp_path / "res.json").read_text())
    assert len(data) == 3
    rows = list(csv.DictReader(open(tmp_path / "res.csv")))
    assert len(rows) == 3 and "sin_theta.0" in rows[0] and rows[1]["status"] == "error"
    assert not list(tmp_path.glob("*.tmp*"))
    # a re-run only retries the failed rows
    calls = []
    real = sweep.run_one
    monkeypatch.setattr(sweep, "run_one", lambda cfg, threads=1: calls.append(cfg) or
                        real(cfg, threads))
    again = run_sweep(cfgs, str(prefix), progress=False)
    assert len(calls) == 2 and all(c is not cfgs[0] for c in calls)
    assert again[0] == recs[0]
    assert len(ResultStore(str(prefix)).records) == 3


def test_data_cache_does_not_change_results():
    sweep.data_cache().clear()
    cold = run_one(dict(BASE, seed=5, t1=1))
    warm_other = run_one(dict(BASE, seed=5, t1=3))      # same rows, from the cache
    assert sweep.data_cache().hits >= 3
    sweep.data_cache().clear()
    fresh_other = run_one(dict(BASE, seed=5, t1=3))
    assert compare_records([warm_other], [fresh_other]) == []
    assert cold["test_rel_mse"] != warm_other["test_rel_mse"]


def test_local_and_local_cluster_give_identical_records(tmp_path):
    pytest.importorskip("distributed")
    cfgs = tiny_grid()
    local = run_sweep(cfgs, str(tmp_path / "local"), progress=False)
    assert all(r["status"] == "ok" for r in local), [r.get("error") for r in local]
    remote = run_sweep(cfgs, str(tmp_path / "dask"), workers=2, progress=False)
    assert compare_records(local, remote) == []
    assert {r["worker"] for r in remote} != {r["worker"] for r in local}
    assert "sigma_u.exact.0" in local[-1]


def test_local_cluster_workers_leave_ctrl_c_to_this_process():
    # Ctrl-C reaches the whole process group: workers that took it would each print a
    # KeyboardInterrupt traceback; they ignore it and this process closes the cluster
    pytest.importorskip("distributed")
    import signal
    before = signal.getsignal(signal.SIGINT)
    with sweep.dask_client(workers=1) as client:
        assert signal.getsignal(signal.SIGINT) is before
        seen = client.run(lambda: signal.getsignal(signal.SIGINT) == signal.SIG_IGN)
        assert list(seen.values()) == [True]


def test_without_dask_workers_flag_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import now raises ImportError
    with pytest.raises(MimfastInputError, match=r"pip install 'mimfast\[dask\]'"):
        run_sweep([dict(BASE)], workers=2, progress=False)
    with pytest.raises(MimfastInputError, match=r"--scheduler.*mimfast\[dask\]"):
        run_sweep([dict(BASE)], scheduler="tcp://127.0.0.1:1", progress=False)
    # the in-process engine needs nothing
    assert run_sweep([dict(BASE)], progress=False)[0]["status"] == "ok"


def test_cli_reports_missing_dask(monkeypatch, tmp_path, capsys):
    from mimfast.cli import main
    monkeypatch.setitem(sys.modules, "distributed", None)
    rc = main(["reproduce", "t1", "--quick", "--out", str(tmp_path), "--workers", "2",
               "--no-progress"])
    assert rc == 2
    assert "mimfast[dask]" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs,match", [
    ({"configs": []}, "grid is empty"),
    ({"configs": grid(BASE, seed=[])}, "grid is empty"),
    ({"workers": 0}, "workers=0 must be a positive integer"),
    ({"workers": -3}, "workers=-3 must be a positive integer"),
    ({"configs": [dict(BASE, target="nope")]}, "target='nope' is unknown"),
    ({"configs": [dict(BASE, loss="nope")]}, "loss='nope' is unknown"),
    ({"configs": [dict(BASE, backend="nope")]}, "backend='nope' is unknown"),
    ({"configs": [dict(BASE, dtype="int8")]}, "dtype='int8' is not supported"),
])
def test_sweep_rejects_nonsense_before_running(kwargs, match, monkeypatch):
    calls = []
    monkeypatch.setattr(sweep, "run_one", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(sweep, "dask_client", lambda *a, **k: calls.append(a))
    configs = kwargs.pop("configs", [dict(BASE)])
    with pytest.raises(MimfastInputError, match=match):
        run_sweep(configs, progress=False, **kwargs)
    assert calls == []

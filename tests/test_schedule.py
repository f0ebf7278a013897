import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from mimfast import metrics
from mimfast.errors import MimfastInputError, MimfastWarning
from mimfast.schedule import LayerwiseRegressor, auto_t1, default_n_test, plan_memory, train
from mimfast.tasks import MultiIndexTask


def small_task(**kw):
    return MultiIndexTask(**{"d": 24, "r": 2, "link": "he2", "seed": 1, **kw})


def fit_small(t1=1, activation="logcosh", loss="square", n=1200, width=8, **kw):
    task = small_task()
    X, y = task.sample(n, "stage1", dtype="float64")
    X2, y2 = task.sample(n, "stage2", dtype="float64")
    est = LayerwiseRegressor(width=width, t1=t1, activation=activation, loss=loss,
                             backend="numpy", dtype="float64", seed=3, **kw)
    return est.fit(X, y, stage2=(X2, y2), subspace=task.U), X, y


@pytest.mark.parametrize("loss", ["square", "huber"])
def test_quadratic_stage1_step_is_power_iteration(loss):
    """With sigma = t^2/2 and eta*beta = 1 one step is W <- -eta Sigma_l W diag(a)."""
    est, X, y = fit_small(t1=1, activation="quadratic", loss=loss, center=True)
    W0 = est.initial_weights_
    a = est.a_stage1_
    yk = y
    c = np.clip(-yk, -1.0, 1.0) if loss == "huber" else -yk  # l'(0, y)
    c = c - c.mean()                                           # centred over the batch
    Sigma = (X * c[:, None]).T @ X / X.shape[0]                # explicit d x d matrix
    expected = -est.eta_ * (Sigma @ W0) * a[None, :]
    np.testing.assert_allclose(est.stage1_weights_, expected, rtol=1e-10, atol=1e-16)


def test_auto_eta_is_inverse_top_eigenvalue():
    est, X, y = fit_small(t1=0, activation="quadratic", power_iters=200)
    c = -(y - y.mean())
    lam = np.max(np.abs(np.linalg.eigvalsh((X * c[:, None]).T @ X / X.shape[0])))
    np.testing.assert_allclose(est.eta_, 1.0 / lam, rtol=1e-3)
    assert est.weight_decay_ == pytest.approx(1.0 / est.eta_)


def test_symmetric_init_gives_zero_network():
    est, X, _ = fit_small(t1=0)
    W0 = est.initial_weights_
    assert np.allclose(W0[:, 0::2], W0[:, 1::2])
    np.testing.assert_allclose(np.linalg.norm(W0, axis=0), 1e-3)
    assert np.array_equal(est.a_stage1_[0::2], -est.a_stage1_[1::2])


def test_same_seed_same_result_and_different_seed_differs():
    a, _, _ = fit_small(t1=2)
    b, _, _ = fit_small(t1=2)
    np.testing.assert_array_equal(a.stage1_weights_, b.stage1_weights_)
    np.testing.assert_array_equal(a.coef_, b.coef_)
    task = small_task()
    X, y = task.sample(600, dtype="float64")
    c = LayerwiseRegressor(width=8, t1=2, backend="numpy", dtype="float64", seed=4).fit(X, y)
    assert not np.allclose(c.stage1_weights_, a.stage1_weights_)


def test_history_tracks_recovery_per_step():
    est, _, _ = fit_small(t1=3)
    assert [h["step"] for h in est.history_] == [0, 1, 2, 3]
    assert all(len(h["sin_theta"]) == 2 for h in est.history_)
    assert est.history_[-1]["energy_in_u"] > est.history_[0]["energy_in_u"]


def test_recovery_sanity_small():
    task = MultiIndexTask(d=64, r=2, link="he2", seed=0)
    rec = train(task, 20000, 20000, 4000, width=64, backend="numpy", dtype="float64",
                seed=0, baselines=True, progress=False)
    assert rec["sin_theta_max"] < 0.4
    assert rec["energy_in_u"] > 0.8
    assert rec["test_rel_mse"] < 0.3
    assert rec["baselines"]["one_step"]["test_rel_mse"] > rec["test_rel_mse"]
    assert rec["baselines"]["spectral"]["sin_theta_max"] < 0.4
    # the metric is the one computed by metrics on the recorded weights
    assert len(rec["sin_theta"]) == 2 and rec["t1"] == auto_t1(64)


def test_train_record_keys_and_json_roundtrip():
    rec = train(small_task(), 800, 800, 200, width=8, backend="numpy", seed=0)
    for key in ("test_rel_mse", "sin_theta", "energy_in_u", "t1", "n1", "n2", "width",
                "backend", "dtype", "timings"):
        assert key in rec
    for stage in ("data", "stage1", "stage2", "test", "total"):
        assert rec["timings"][stage] >= 0
    json.loads(json.dumps(rec))


def test_float32_matches_float64_pipeline():
    r32 = train(small_task(), 3000, 3000, 500, width=16, backend="numpy", dtype="float32")
    r64 = train(small_task(), 3000, 3000, 500, width=16, backend="numpy", dtype="float64")
    np.testing.assert_allclose(r32["sin_theta"], r64["sin_theta"], atol=1e-3)
    assert abs(r32["test_rel_mse"] - r64["test_rel_mse"]) < 1e-2


def test_metrics_principal_angles():
    U = np.eye(5)[:2]
    assert np.allclose(metrics.subspace_sines(U, np.eye(5)[:, :2] @ np.ones((2, 2)) +
                                              np.eye(5)[:, :2]), 0.0, atol=1e-12)
    s = metrics.principal_sines(U, np.eye(5)[:, [0, 3]])
    np.testing.assert_allclose(s, [1.0, 0.0], atol=1e-12)
    theta = 0.3
    q = np.zeros((5, 1)); q[0] = np.cos(theta); q[2] = np.sin(theta)
    np.testing.assert_allclose(metrics.principal_sines(U[:1], q), [np.sin(theta)])


# ---------------------------------------------------------------- bad input
def _xy(n=100, d=6):
    X, y = small_task(d=d).sample(n, dtype="float64")
    return X, y


@pytest.mark.parametrize("params, match", [
    (dict(width=7), "width=7 must be even"),
    (dict(width=0), "width=0 must be >= 2"),
    (dict(width=2.5), "width=2.5 must be an integer"),
    (dict(t1=-1), "t1=-1 must be >= 0"),
    (dict(loss="nope"), "loss='nope' is unknown"),
    (dict(activation="relu"), "relu is allowed only for stage 2"),
    (dict(activation="tanh"), "activation='tanh' is unknown"),
    (dict(backend="tpu"), "backend='tpu' is unknown"),
    (dict(dtype="float16"), "dtype='float16' is not supported"),
    (dict(eta=-1.0), "eta=-1.0"),
    (dict(method="magic"), "method='magic' is unknown"),
    (dict(width=400), "smaller than width=400"),
    (dict(method="spectral", spectral_rank=7), "spectral_rank=7 exceeds d=6"),
    (dict(method="spectral", spectral_rank=0), "spectral_rank=0 must be >= 1"),
    (dict(method="spectral", spectral_rank=-1), "spectral_rank=-1 must be >= 1"),
    (dict(method="spectral", spectral_rank=2.5), "spectral_rank=2.5 must be an integer"),
    (dict(seed=-1), "seed=-1 must be >= 0"),
    (dict(seed=None), "seed=None must be an integer"),
    (dict(seed="a"), "seed='a' must be an integer"),
    (dict(method="spectral", spectral_rank=2, t1=3),
     "t1=3 has no meaning for method='spectral'"),
    (dict(loss="huber", delta=1e300), "delta=1e\\+300 is too large for float32"),
])
def test_bad_hyperparameters(params, match):
    X, y = _xy()
    with pytest.raises(MimfastInputError, match=match):
        LayerwiseRegressor(**{"backend": "numpy", "width": 4, **params}).fit(X, y)


def test_bad_arrays():
    X, y = _xy()
    Xn = X.copy(); Xn[3, 2] = np.nan
    with pytest.raises(MimfastInputError, match="stage-1 X contains 1 NaN/inf"):
        LayerwiseRegressor(width=4, backend="numpy").fit(Xn, y)
    yi = y.copy(); yi[0] = np.inf
    with pytest.raises(MimfastInputError, match="stage-1 y contains 1 NaN/inf"):
        LayerwiseRegressor(width=4, backend="numpy").fit(X, yi)
    with pytest.raises(MimfastInputError, match=r"y must have shape \(100,\)"):
        LayerwiseRegressor(width=4, backend="numpy").fit(X, y[:-1])
    with pytest.raises(MimfastInputError, match="must be 2-D"):
        LayerwiseRegressor(width=4, backend="numpy").fit(X[0], y)
    with pytest.raises(MimfastInputError, match="stage-2 X has d=5"):
        LayerwiseRegressor(width=4, backend="numpy").fit(X, y, stage2=(X[:, :5], y))
    est = LayerwiseRegressor(width=4, backend="numpy", t1=1).fit(X, y)
    with pytest.raises(MimfastInputError, match=r"X must have shape \(n, 6\)"):
        est.predict(X[:, :4])
    with pytest.raises(MimfastInputError, match="not fitted"):
        LayerwiseRegressor().predict(X)
    with pytest.raises(MimfastInputError, match="one label per row"):
        est.score(X, y[:-5])
    with pytest.raises(MimfastInputError, match="label transform .* NaN/inf for 50 of 50"):
        LayerwiseRegressor(width=4, backend="numpy", loss=lambda t: t * np.nan).fit(X, y)
    with pytest.raises(MimfastInputError, match=r"stage2 must be a tuple \(X2, y2\) or a data "
                                                r"source; got an array of shape \(100, 6\)"):
        LayerwiseRegressor(width=4, backend="numpy").fit(X, y, stage2=X)
    with pytest.raises(MimfastInputError, match="stage-1 y is required"):
        LayerwiseRegressor(width=4, backend="numpy").fit(X)
    with pytest.raises(MimfastInputError, match="stage-2 y is required"):
        LayerwiseRegressor(width=4, backend="numpy").fit(X, y, stage2=(X, None))
    with pytest.raises(MimfastInputError, match="callable loss must take one argument"):
        LayerwiseRegressor(width=4, backend="numpy", loss=lambda t, u: t).fit(X, y)


def test_stage2_smaller_than_width_is_rejected():
    X, y = _xy()
    with pytest.raises(MimfastInputError,
                       match="stage-2 sample size n2=6 is smaller than width=8"):
        LayerwiseRegressor(width=8, backend="numpy").fit(X, y, stage2=(X[:6], y[:6]))
    with pytest.raises(MimfastInputError, match="n2=6 is smaller than width=8"):
        train(small_task(), 800, 6, 200, width=8, backend="numpy")


def test_train_needs_a_task():
    with pytest.raises(MimfastInputError,
                       match="task='he2' is not a task: pass a MultiIndexTask"):
        train("he2", 800, 800, 200, width=8, backend="numpy")


def test_score_checks_y_and_defines_constant_y():
    X, y = _xy()
    est = LayerwiseRegressor(width=4, backend="numpy", t1=1).fit(X, y)
    yn = y.copy(); yn[5] = np.nan
    with pytest.raises(MimfastInputError, match="y contains 1 NaN/inf value"):
        est.score(X, yn)
    assert est.score(X, np.full(100, 2.0)) == 0.0       # as r2_score(force_finite=True)
    est.predict = lambda X: np.full(X.shape[0], 2.0)
    assert est.score(X, np.full(100, 2.0)) == 1.0


def test_narrow_width_warns_it_cannot_span_the_directions():
    X, y = _xy()
    U = small_task(d=6).U
    with pytest.warns(MimfastWarning, match="width/2 < r pairs cannot span all r directions"):
        LayerwiseRegressor(width=2, backend="numpy", t1=1).fit(X, y, subspace=U)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MimfastWarning)
        LayerwiseRegressor(width=4, backend="numpy", t1=1).fit(X, y, subspace=U)


def test_spectral_baseline_runs_beside_an_explicit_t1():
    rec = train(small_task(), 800, 800, 200, width=8, t1=2, backend="numpy", baselines=True)
    assert rec["t1"] == 2 and rec["baselines"]["spectral"]["t1"] == 0


def test_default_n_test_follows_the_n1_in_use():
    assert default_n_test(5000) == 4096 and default_n_test(40000) == 10000
    assert default_n_test(10**7) == 65536
    assert train(small_task(), 40000, 800, width=8, backend="numpy", t1=1)["n_test"] == 10000


def test_estimator_params_protocol():
    est = LayerwiseRegressor(width=64, loss="huber")
    params = est.get_params()
    assert params["width"] == 64 and params["loss"] == "huber" and params["t1"] == "auto"
    assert LayerwiseRegressor(**params).get_params() == params          # what clone() does
    assert est.set_params(t1=3) is est and est.t1 == 3
    assert repr(est) == "LayerwiseRegressor(width=64, t1=3, loss='huber')"
    with pytest.raises(MimfastInputError, match="'widht' is not a parameter"):
        est.set_params(widht=8)


def test_overflowing_labels_are_named_not_called_zero():
    task = small_task(noise=1e30)
    with pytest.raises(MimfastInputError, match="overflows float32"):
        train(task, 2000, 2000, 200, width=8, backend="numpy", dtype="float32", t1=1)


def test_overflowing_noise_is_named_and_numpy_stays_quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(MimfastInputError,
                           match=r"noise=1e\+300 overflows float32: .*use dtype='float64'"):
            train(small_task(noise=1e300), 2000, 2000, 200, width=8, backend="numpy", t1=1)
    with pytest.raises(MimfastInputError, match="overflows float64") as exc:
        train(small_task(noise=1e200), 2000, 2000, 200, width=8, backend="numpy",
              dtype="float64", t1=1)
    assert "dtype='float64'" not in str(exc.value)  # already in use: no use suggesting it


def test_baselines_count_the_spectral_matrix():
    budget = 100 * 2 ** 20  # d = 3000: the d x d float64 matrix and its eigh need 137 MiB
    assert plan_memory(3000, 1000, 1000, 100, np.float32, 4, "auto", budget) == "materialise"
    with pytest.raises(MimfastInputError, match=r"spectral method's d x d matrix.*drop the "
                                                r"baselines"):
        plan_memory(3000, 1000, 1000, 100, np.float32, 4, "auto", budget, baselines=True)
    with pytest.raises(MimfastInputError, match=r"d x d matrix.*drop the baselines"):
        train(small_task(d=3000), 1000, 1000, 100, width=4, backend="numpy", baselines=True,
              memory_budget=budget)
    with pytest.raises(MimfastInputError, match=r"d x d matrix.*the layerwise method"):
        train(small_task(d=3000), 1000, 1000, 100, width=4, backend="numpy",
              method="spectral", memory_budget=budget)


def test_streamed_plan_is_announced_before_the_work():
    lines = []
    train(small_task(), 800, 800, 200, width=8, backend="numpy", t1=2, data="stream",
          notify=lines.append, progress=False)
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "streams stage1, stage2, test" in lines[0]
    assert "about 15 passes over the stage-1 rows (1 + power_iters 12 + T1 2)" in lines[0]
    train(small_task(), 800, 800, 200, width=8, backend="numpy", t1=2, data="materialise",
          notify=lines.append)
    assert len(lines) == 1


def test_memory_error_says_how_much_is_needed():
    with pytest.raises(MimfastInputError, match=r"needs .*GiB.* available"):
        train(small_task(d=1000), 10**6, 10**6, 10, width=8, backend="numpy",
              data="materialise", memory_budget=2**30)


def test_gpu_backend_without_gpu_is_a_clear_error():
    from mimfast.backends import gpu_status
    ok, _ = gpu_status()
    if ok:
        pytest.skip("a GPU is usable here")
    with pytest.raises(MimfastInputError, match="backend='cupy' is unavailable"):
        LayerwiseRegressor(backend="cupy").fit(*_xy())


# ---------------------------------------------------------------- CLI
def _cli(*args):
    return subprocess.run([sys.executable, "-m", "mimfast", *args], capture_output=True,
                          text=True, timeout=300)


def test_cli_run_writes_json(tmp_path):
    out = tmp_path / "rec.json"
    p = _cli("run", "--d", "32", "--n1", "2000", "--n2", "2000", "--n-test", "500",
             "--width", "16", "--backend", "numpy", "--baselines", "--json", str(out))
    assert p.returncode == 0, p.stderr
    assert "test rel MSE" in p.stdout and "one-step" in p.stdout
    rec = json.loads(out.read_text())
    assert rec["n1"] == 2000 and rec["width"] == 16 and rec["backend"] == "numpy"
    assert set(rec["baselines"]) == {"one_step", "spectral"}
    assert rec["baselines"]["one_step"]["method"] == "one_step"
    assert rec["baselines"]["spectral"]["eta"] is None  # undefined -> null, not NaN
    assert "NaN" not in out.read_text()


@pytest.mark.parametrize("args, match", [
    (["--d", "4", "--r", "8"], "r=8 exceeds d=4"),
    (["--width", "5"], "width=5 must be even"),
    (["--target", "xyz"], "target='xyz' is unknown"),
    (["--loss", "l7"], "loss='l7' is unknown"),
    (["--backend", "fpga"], "backend='fpga' is unknown"),
    (["--dtype", "int32"], "dtype='int32' is not supported"),
    (["--t1", "-2"], "t1=-2 must be >= 0"),
    (["--d", "16", "--n1", "10", "--width", "32"], "smaller than width=32"),
    (["--d", "200000", "--n1", "2000000", "--data", "materialise"], "needs"),
    (["--width", "abc"], "expected an integer"),
    (["--n-test", "1"], "n_test=1 must be >= 2"),
    (["--json", "/"], "is a directory"),
    (["--d", "64", "--n1", "1000000000000"], "need at least"),
    (["--d", "16", "--n1", "100", "--n2", "10", "--width", "32"],
     "n2=10 is smaller than width=32"),
    (["--json", ""], "--json is empty"),
    (["--method", "spectral", "--t1", "3"], "t1=3 has no meaning for method='spectral'"),
    (["--noise", "1e300", "--d", "32", "--n1", "2000", "--n2", "2000", "--n-test", "500",
      "--width", "8"], "noise=1e+300 overflows float32"),
    (["--loss", "huber", "--delta", "1e300"], "delta=1e+300 is too large for float32"),
    (["--backend", "numba", "--threads", "100000"], "--threads=100000 is more than the"),
])
def test_cli_errors_are_one_line_exit_2(args, match):
    p = _cli("run", "--backend", "numpy", *args) if "--backend" not in args else _cli("run", *args)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    assert match in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_cli_json_in_an_unwritable_place_fails_up_front():
    p = _cli("run", "--backend", "numpy", "--json", "/proc/sub/x.json")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "--json '/proc/sub/x.json': cannot write into folder '/proc/sub'" in p.stderr
    assert "sizes" not in p.stdout  # nothing was trained


def test_failed_json_write_names_the_option_and_the_path(tmp_path, monkeypatch):
    from mimfast import cli

    def no_space(src, dst):
        raise OSError(28, "No space left on device", src)
    monkeypatch.setattr(cli.os, "replace", no_space)
    path = str(tmp_path / "rec.json")
    with pytest.raises(MimfastInputError, match="No space left") as exc:
        cli.write_json(path, {"a": 1})
    assert f"--json {path!r}" in str(exc.value) and ".tmp" not in str(exc.value)
    assert os.listdir(tmp_path) == []


def test_cli_notes_streaming_and_warns_narrow_width_on_one_line():
    args = ["run", "--d", "32", "--n1", "2000", "--n2", "2000", "--n-test", "500",
            "--backend", "numpy", "--t1", "2"]
    p = _cli(*args, "--width", "16", "--data", "stream")
    assert p.returncode == 0, p.stderr
    assert p.stderr.startswith("note: data=stream streams stage1, stage2, test")
    assert "regenerated on every pass" in p.stderr and len(p.stderr.splitlines()) == 1
    p = _cli(*args, "--width", "16", "--data", "stream", "--quiet")
    assert p.returncode == 0 and p.stderr == ""
    p = _cli(*args, "--width", "2", "--r", "2", "--baselines", "--quiet")
    assert p.returncode == 0, p.stderr
    assert p.stderr.startswith("warning: width=2 gives 1 +/- neuron pairs for r=2")
    assert len(p.stderr.splitlines()) == 1


def test_cli_info():
    p = _cli("info")
    assert p.returncode == 0, p.stderr
    for word in ("numpy", "numba", "blas", "gpu"):
        assert word in p.stdout


def test_ridge_choice_survives_collapsed_float32_features():
    """Many stage-1 steps collapse the neurons; the float32 feature Gram is then
    near-singular and the Gram identity for the validation error cancels.  The
    chosen penalty must still be validated on the held-out rows themselves."""
    task = MultiIndexTask(d=128, r=2, link="he2", seed=0)
    rec = train(task, 9937, 9937, 8192, width=64, t1=12, backend="numba", dtype="float32",
                seed=0, threads=1)
    assert rec["test_rel_mse"] < 0.3
    assert 0.0 <= rec["val_rel_mse"] < 0.3


def test_public_errors_importable_from_the_package():
    import mimfast
    from mimfast.errors import MimfastInputError, MimfastWarning
    assert mimfast.MimfastInputError is MimfastInputError
    assert mimfast.MimfastWarning is MimfastWarning

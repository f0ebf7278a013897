import numpy as np
import pytest

from mimfast.errors import MimfastInputError
from mimfast.losses import LOSSES, get_loss


def test_even_loss_transforms_labels_to_centred_squares():
    y = np.array([-2.0, 0.0, 1.0, 3.0])
    loss = get_loss("even")
    yk = loss.kernel_labels(y)
    np.testing.assert_allclose(yk, y ** 2 - np.mean(y ** 2))
    # l'(t, y) = t - (y^2 - mean y^2)
    np.testing.assert_allclose(loss.grad(np.full(4, 0.5), yk), 0.5 - yk)


def test_even_clip_caps_squares():
    y = np.array([-3.0, 0.5, 1.0, 2.5])
    yk = get_loss("even_clip", delta=1.0).kernel_labels(y)
    sq = np.minimum(y ** 2, 4.0)
    np.testing.assert_allclose(yk, sq - sq.mean())


def test_user_transform_and_bad_transform():
    loss = get_loss(lambda y: np.abs(y))
    np.testing.assert_allclose(loss.kernel_labels(np.array([-1.0, 2.0])), [1.0, 2.0])
    with pytest.raises(MimfastInputError, match="elementwise"):
        get_loss(lambda y: y[:1]).kernel_labels(np.array([1.0, 2.0]))


@pytest.mark.parametrize("name", LOSSES)
def test_loss_derivative_matches_finite_differences(name):
    rng = np.random.default_rng(0)
    loss = get_loss(name, delta=0.7)
    y = loss.kernel_labels(rng.standard_normal(50))
    t = rng.standard_normal(50)
    h = 1e-6
    fd = (loss.value(t + h, y, 0.3) - loss.value(t - h, y, 0.3)) / (2 * h)
    np.testing.assert_allclose(loss.grad(t, y, 0.3), fd, rtol=1e-6, atol=1e-8)


def test_bad_loss_arguments():
    with pytest.raises(MimfastInputError, match="delta"):
        get_loss("huber", delta=-1.0)
    with pytest.raises(MimfastInputError, match="loss='l3' is unknown"):
        get_loss("l3")


def test_delta_whose_square_overflows_the_dtype_is_rejected():
    with pytest.raises(MimfastInputError, match=r"delta=1e\+300 is too large for float32: "
                                                r"the huber loss squares it"):
        get_loss("huber", delta=1e300, dtype="float32")
    with pytest.raises(MimfastInputError, match="too large for float64: the pseudo_huber"):
        get_loss("pseudo_huber", delta=1e200, dtype="float64")
    with pytest.raises(MimfastInputError, match="too large for float64: the even_clip"):
        get_loss("even_clip", delta=1e200)
    assert get_loss("huber", delta=1e20, dtype="float64").delta == 1e20
    assert get_loss("square", delta=1e300, dtype="float32").kind == "square"  # delta unused


def test_callable_loss_must_take_one_argument():
    with pytest.raises(MimfastInputError, match=r"must take one argument.*signature \(a, b\)"):
        get_loss(lambda a, b: a)
    with pytest.raises(MimfastInputError, match="must take one argument"):
        get_loss(lambda: 1.0)
    for ok in (np.abs, lambda y, k=2: y ** k, lambda *ys: ys[0]):
        assert get_loss(ok).transform is ok

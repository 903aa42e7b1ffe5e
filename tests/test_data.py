"""Datasets: built-in loaders, .npz files, the seeded stratified split, and DataErrors."""

from __future__ import annotations

import numpy as np
import pytest

from fedc.data import BUILTINS, load_dataset, reshape_for
from fedc.diagnostics import DataError, FedcError

SIZES = {"digits": (1797, 64, 10), "breast_cancer": (569, 30, 2), "iris": (150, 4, 3),
         "wine": (178, 13, 3), "waveforms": (3000, 128, 6), "synthetic_text": (2400, 16, 4)}
TOKENS = {"synthetic_text"}  # x holds int32 token ids, not float32 features


@pytest.mark.parametrize("name", list(BUILTINS))
def test_builtin_shapes_dtypes_and_labels(name):
    n, features, classes = SIZES[name]
    d = load_dataset(name)
    assert d.name == name and d.task == "classification" and d.num_classes == classes
    assert len(d.y_train) + len(d.y_test) == n
    assert len(d.y_test) == pytest.approx(0.2 * n, abs=1)
    for x, y in ((d.x_train, d.y_train), (d.x_test, d.y_test)):
        assert x.dtype == (np.int32 if name in TOKENS else np.float32)
        assert x.shape == (len(y), features)
        assert y.dtype == np.int32 and y.min() >= 0 and y.max() < classes
    assert int(np.prod(d.feature_shape)) == features


def test_digits_pixels_are_scaled_to_unit_range():
    d = load_dataset("digits")
    assert d.feature_shape == (8, 8)
    assert d.x_train.min() == 0.0 and d.x_train.max() == 1.0


@pytest.mark.parametrize("name", ["breast_cancer", "iris", "wine"])
def test_tabular_features_are_standardised_on_the_train_split(name):
    d = load_dataset(name)
    np.testing.assert_allclose(d.x_train.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(d.x_train.std(axis=0), 1, atol=1e-4)
    assert not np.allclose(d.x_test.mean(axis=0), 0, atol=1e-5)  # test stats don't leak in


def test_split_is_stratified():
    d = load_dataset("wine", test_fraction=0.3)
    train = np.bincount(d.y_train) / len(d.y_train)
    test = np.bincount(d.y_test) / len(d.y_test)
    np.testing.assert_allclose(train, test, atol=0.03)


def test_split_is_seeded():
    a, b, c = load_dataset("iris", seed=1), load_dataset("iris", seed=1), load_dataset("iris")
    assert np.array_equal(a.x_test, b.x_test) and np.array_equal(a.y_train, b.y_train)
    assert not np.array_equal(a.x_test, c.x_test)


def test_a_seed_beyond_the_splits_uint32_range_is_a_data_error_naming_the_range():
    # it was scikit-learn's message about train_test_split's random_state parameter
    with pytest.raises(DataError, match=r"iris: the split's seed must be an integer in "
                                        r"0\.\.4294967295, got 4294967296"):
        load_dataset("iris", seed=2**32)
    assert len(load_dataset("iris", seed=2**32 - 1).y_train) == 120


def test_test_fraction_is_respected():
    assert len(load_dataset("digits", test_fraction=0.5).y_test) in (898, 899)


# --- .npz files ----------------------------------------------------------------------------------


def write(tmp_path, name="d.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


def test_npz_with_x_and_y_is_split_and_kept_unscaled(tmp_path):
    x = np.arange(40 * 6, dtype=np.float64).reshape(40, 2, 3)
    y = np.repeat([0, 1, 2, 3], 10)
    d = load_dataset(write(tmp_path, x=x, y=y), seed=3)
    assert d.name == "d.npz" and d.task == "classification" and d.num_classes == 4
    assert d.feature_shape == (2, 3) and d.x_train.shape == (32, 6)
    assert sorted(np.concatenate([d.x_train, d.x_test])[:, 0].tolist()) == \
        x.reshape(40, 6)[:, 0].tolist()
    assert np.bincount(d.y_test).tolist() == [2, 2, 2, 2]  # stratified


def test_npz_with_its_own_test_split_is_used_as_is(tmp_path):
    path = write(tmp_path, x=np.ones((5, 3)), y=[0, 1, 0, 1, 0],
                 x_test=np.zeros((2, 3)), y_test=[1, 2])
    d = load_dataset(path)
    assert d.x_train.shape == (5, 3) and d.x_test.shape == (2, 3)
    assert d.y_test.tolist() == [1, 2] and d.num_classes == 3


def test_npz_float_targets_mean_regression(tmp_path):
    d = load_dataset(write(tmp_path, x=np.ones((10, 2)), y=np.linspace(0, 1, 10)))
    assert d.task == "regression" and d.num_classes is None
    assert d.y_train.dtype == np.float32


def test_npz_task_can_be_stated_in_the_file_or_by_the_caller(tmp_path):
    path = write(tmp_path, x=np.ones((10, 2)), y=np.array([0.0, 1.0] * 5), task="classification")
    assert load_dataset(path).task == "classification"
    assert load_dataset(path).y_train.dtype == np.int32
    assert load_dataset(path, task="regression").task == "regression"


def test_a_class_too_rare_to_stratify_still_splits(tmp_path):
    d = load_dataset(write(tmp_path, x=np.ones((10, 1)), y=[0] * 9 + [1]))
    assert len(d.y_train) + len(d.y_test) == 10


def test_reshape_for_gives_the_models_input_shape():
    d = load_dataset("digits")
    images = reshape_for(d.x_test, [1, 8, 8])
    assert images.shape == (len(d.y_test), 1, 8, 8)
    assert np.array_equal(images[3, 0, 2], d.x_test[3, 16:24])
    with pytest.raises(DataError, match="64 values each .* model's input is \\[1, 9, 9\\] "
                                        "\\(81 values\\)"):
        reshape_for(d.x_test, (1, 9, 9))


# --- errors --------------------------------------------------------------------------------------


def test_unknown_name_suggests_and_lists_builtins():
    with pytest.raises(DataError, match="unknown dataset 'digit'; did you mean 'digits'\\? "
                                        "\\(expected one of digits, breast_cancer"):
        load_dataset("digit")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="no such data file: .*nope.npz"):
        load_dataset(str(tmp_path / "nope.npz"))


@pytest.mark.parametrize("arrays,message", [
    ({"x": np.ones((3, 2))}, "missing array 'y' \\(a data file needs 'x' and 'y'; it has: x\\)"),
    ({"features": np.ones(3), "labels": np.ones(3)}, "missing array 'x' and 'y'"),
    ({"x": np.ones((3, 2)), "y": [0, 1]}, "'x' has 3 examples but 'y' has 2"),
    ({"x": np.array([[1.0], [np.nan], [2.0]]), "y": [0, 1, 0]},
     "array 'x': contains NaN or Inf \\(1 values, first in row 1\\)"),
    ({"x": np.array([[1.0], [np.inf]]), "y": [0, 1]}, "contains NaN or Inf"),
    ({"x": np.array([[1.0], [2.0], [-1e39]]), "y": [0, 1, 0]},  # Inf as float32
     "array 'x': 1 values are beyond float32's range \\(±3.4e38\\), first in row 2"),
    ({"x": np.ones((2, 2)), "y": [1.0, 1e39], "task": "regression"},
     "array 'y': regression targets beyond float32's range"),
    ({"x": np.ones((3, 2)), "y": [0, -1, 2]}, "found negative label -1"),
    ({"x": np.ones((3, 2)), "y": [0, 1.5, 2], "task": "classification"},
     "class labels must be whole numbers 0..K-1, found 1.5"),
    ({"x": np.ones((0, 2)), "y": np.ones(0, int)}, "array 'x': no examples"),
    ({"x": np.ones((3, 2)), "y": [0, 1, 0], "x_test": np.ones((1, 2))},
     "only one of 'x_test' and 'y_test'"),
    ({"x": np.ones((3, 2)), "y": [0, 1, 0], "x_test": np.ones((1, 3)), "y_test": [0]},
     "'x' has 2 features per example but 'x_test' has 3"),
    ({"x": np.array(["a", "b"]), "y": [0, 1]}, "features must be numbers, got dtype <U1"),
    ({"x": np.ones((3, 2)), "y": [0, 1, 0], "task": "clustering"},
     "task must be 'classification' or 'regression', got 'clustering'"),
    ({"x": np.ones((1, 2)), "y": [0]}, "need at least 2 samples"),
])
def test_bad_npz_files_are_data_errors_naming_file_and_array(tmp_path, arrays, message):
    path = write(tmp_path, "bad.npz", **arrays)
    with pytest.raises(DataError, match=message) as info:
        load_dataset(path)
    assert "bad.npz" in str(info.value)
    assert isinstance(info.value, FedcError)


def test_a_file_that_is_not_npz_is_a_data_error(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_text("not a zip")
    with pytest.raises(DataError, match="junk.npz: not a .npz file"):
        load_dataset(str(path))
    np.save(tmp_path / "plain.npy", np.ones(3))
    with pytest.raises(DataError, match="plain.npy: not a .npz file"):
        load_dataset(str(tmp_path / "plain.npy"))
    path.write_bytes(b"PK\x03\x04" + b"\0" * 40)
    with pytest.raises(DataError, match="junk.npz: not a readable .npz file"):
        load_dataset(str(path))


def test_pickled_object_arrays_are_refused(tmp_path):
    path = write(tmp_path, "obj.npz", x=np.array([{"a": 1}], dtype=object), y=[0])
    with pytest.raises(DataError, match="obj.npz: cannot read arrays without pickle"):
        load_dataset(path)


def test_builtins_refuse_a_regression_task():
    with pytest.raises(DataError, match="'iris' is a classification task"):
        load_dataset("iris", task="regression")

"""Datasets: a bundled scikit-learn name or a user's .npz file → a seeded train/test `Dataset`.

Built-in names (all offline: shipped inside scikit-learn, or generated here):

- ``digits``: 1797 8×8 images, 10 classes; pixels scaled from 0..16 to [0, 1] by /16.
- ``breast_cancer`` (2 classes, 30 features), ``iris`` (3 classes, 4 features), ``wine``
  (3 classes, 13 features): each feature standardised with the *train* split's mean and std,
  so nothing about the test split leaks into training.
- ``waveforms``: 3000 generated 1×128 time series, 6 classes (sine, square, triangle, rising
  sawtooth, pulse train, falling sawtooth) with random frequency (2–6 cycles), phase,
  amplitude, offset and Gaussian noise; the same arrays on every machine (a fixed generator
  seed; ``seed`` only changes the split), used as generated (no scaling).
- ``synthetic_text``: 2400 generated "sentences" of 4 topics as int32 token ids padded with 0
  to length 16 (vocabulary 64: 0 padding, 1..31 shared noise words, 8 topic words per
  class); 5–16 words each, a word being one of its topic's (35 %), another topic's (10 %) or
  noise. Fixed generator seed, like ``waveforms``. scikit-learn's logistic regression on word
  counts scores about 91 % on it, so it is learnable but not trivial. ``x`` stays int32 (an
  ``i32[16]`` input feeding an ``embedding``).

A ``.npz`` file must hold arrays ``x`` and ``y`` and may hold ``x_test`` and ``y_test``; without
them it is split like the built-ins. Its features are used as they are (no scaling). Its task is
the ``task`` argument if given, else an optional ``task`` array in the file (``"classification"``
or ``"regression"``), else integer ``y`` means classification and floating-point ``y`` regression.

The split is ``sklearn.model_selection.train_test_split(x, y, test_size=test_fraction,
random_state=seed, stratify=y)``; stratification is dropped only for a regression task or when a
class has too few samples to appear on both sides. Every ``x`` is stored flat, as float32 of
shape ``(N, F)`` (``synthetic_text``: int32 token ids); ``feature_shape`` keeps the natural
per-example shape (digits: ``(8, 8)``) for ``reshape_for``. Class labels are int32 in
``0..K-1``; regression targets float32.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._lazy import np
from .diagnostics import DataError, Diagnostic, UsageError, did_you_mean
from .optim.settings import F32_MAX

TASKS = ("classification", "regression")
MAX_SEED = 2**32 - 1  # the split's seed is scikit-learn's random_state, a uint32


@dataclass(frozen=True, eq=False)  # holds arrays: compare their fields, not these
class Dataset:
    """A train/test split; x arrays are float32 (N, F) (int32 token ids for text datasets),
    y int32 labels or float32 targets."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str
    num_classes: int | None
    task: str  # "classification" | "regression"
    feature_shape: tuple[int, ...]

    @property
    def num_features(self) -> int:
        return int(self.x_train.shape[1])


def _fail(message: str) -> DataError:
    return DataError([Diagnostic(message)], stage="data")


# --- built-in datasets ---------------------------------------------------------------------------


def _sklearn(loader: str) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    def load() -> tuple[np.ndarray, np.ndarray]:
        import sklearn.datasets

        bunch = getattr(sklearn.datasets, loader)()
        return np.asarray(bunch.data), np.asarray(bunch.target)

    return load


WAVEFORMS = ("sine", "square", "triangle", "sawtooth", "pulse", "falling_sawtooth")


def _waveforms(per_class: int = 500, length: int = 128,
               seed: int = 20240611) -> tuple[np.ndarray, np.ndarray]:
    """Noisy periodic signals whose class is the wave's shape, not its frequency or level:
    a model must recognise local form anywhere in the window (a convolution's job)."""
    rng = np.random.default_rng(seed)
    t = np.arange(length) / length
    xs, ys = [], []
    for k, kind in enumerate(WAVEFORMS):
        cycles = rng.uniform(2.0, 6.0, (per_class, 1))
        u = (cycles * t + rng.uniform(0.0, 1.0, (per_class, 1))) % 1.0  # phase in [0, 1)
        wave = {"sine": np.sin(2 * np.pi * u), "square": np.where(u < 0.5, 1.0, -1.0),
                "triangle": 4 * np.abs(u - 0.5) - 1, "sawtooth": 2 * u - 1,
                "pulse": np.where(u < 0.2, 1.0, -0.25), "falling_sawtooth": 1 - 2 * u}[kind]
        amplitude = rng.uniform(0.6, 1.4, (per_class, 1))
        offset = rng.normal(0.0, 0.2, (per_class, 1))
        xs.append(amplitude * wave + offset + rng.normal(0.0, 0.2, (per_class, length)))
        ys.append(np.full(per_class, k))
    return np.concatenate(xs), np.concatenate(ys)


TEXT_VOCAB, TEXT_LENGTH, TEXT_CLASSES = 64, 16, 4
_TEXT_NOISE, _TEXT_TOPIC = 31, 8  # shared noise words 1..31, then 8 topic words per class


def _synthetic_text(per_class: int = 600, seed: int = 20240612) -> tuple[np.ndarray, np.ndarray]:
    """Sentences whose topic shows only in how often its words occur among shared noise words
    (a bag-of-embeddings classifier's job); padded with id 0."""
    rng = np.random.default_rng(seed)
    shape = (per_class, TEXT_LENGTH)
    xs, ys = [], []
    for k in range(TEXT_CLASSES):
        lengths = rng.integers(5, TEXT_LENGTH + 1, (per_class, 1))
        r = rng.random(shape)
        own = 1 + _TEXT_NOISE + _TEXT_TOPIC * k + rng.integers(0, _TEXT_TOPIC, shape)
        other_class = (k + rng.integers(1, TEXT_CLASSES, shape)) % TEXT_CLASSES
        other = 1 + _TEXT_NOISE + _TEXT_TOPIC * other_class + rng.integers(0, _TEXT_TOPIC, shape)
        noise = rng.integers(1, 1 + _TEXT_NOISE, shape)
        words = np.where(r < 0.35, own, np.where(r < 0.45, other, noise))
        xs.append(np.where(np.arange(TEXT_LENGTH) < lengths, words, 0))
        ys.append(np.full(per_class, k))
    return np.concatenate(xs), np.concatenate(ys)


# name → (loader, per-example shape, scaling: "div16", "standardise", "none" or "tokens")
BUILTINS: dict[str, tuple[Callable[[], tuple[np.ndarray, np.ndarray]], tuple[int, ...], str]] = {
    "digits": (_sklearn("load_digits"), (8, 8), "div16"),
    "breast_cancer": (_sklearn("load_breast_cancer"), (30,), "standardise"),
    "iris": (_sklearn("load_iris"), (4,), "standardise"),
    "wine": (_sklearn("load_wine"), (13,), "standardise"),
    "waveforms": (_waveforms, (1, 128), "none"),
    "synthetic_text": (_synthetic_text, (TEXT_LENGTH,), "tokens"),
}


def _load_builtin(name: str, seed: int, test_fraction: float) -> Dataset:
    loader, shape, scaling = BUILTINS[name]
    x, y = loader()
    x = x.astype(np.float64)
    y = y.astype(np.int32)
    x_train, x_test, y_train, y_test = _split(x, y, seed, test_fraction, name, stratify=True)
    if scaling == "div16":
        x_train, x_test = x_train / 16.0, x_test / 16.0
    elif scaling == "standardise":
        x_train, x_test = _standardise(x_train, x_test)
    dtype = np.int32 if scaling == "tokens" else np.float32  # token ids stay integers
    return Dataset(x_train.astype(dtype), y_train, x_test.astype(dtype), y_test,
                   name, int(y.max()) + 1, "classification", shape)


def _standardise(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1.0  # a constant feature stays 0 instead of becoming NaN
    return (x_train - mean) / std, (x_test - mean) / std


def _split(x: np.ndarray, y: np.ndarray, seed: int, test_fraction: float, what: str,
           stratify: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    if len(y) < 2:
        raise _fail(f"{what}: need at least 2 samples to make a train/test split, got {len(y)}")
    if not 0.0 < test_fraction < 1.0:
        raise _fail(f"{what}: test fraction must be between 0 and 1, got {test_fraction}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or \
            not 0 <= seed <= MAX_SEED:
        raise _fail(f"{what}: the split's seed must be an integer in 0..{MAX_SEED}, got {seed!r}")
    try:
        if stratify:
            try:
                return train_test_split(x, y, test_size=test_fraction, random_state=seed,
                                        stratify=y)
            except ValueError:
                pass  # a class too rare to stratify: fall back to a plain seeded split
        return train_test_split(x, y, test_size=test_fraction, random_state=seed)
    except ValueError as exc:
        raise _fail(f"{what}: cannot split {len(y)} samples with test fraction "
                    f"{test_fraction}: {exc}") from None


# --- .npz files ----------------------------------------------------------------------------------


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if path.is_dir():
        raise _fail(f"{path} is a directory, not a .npz data file")
    if not path.is_file():
        raise _fail(f"no such data file: {path}")
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise _fail(f"cannot read {path}: {exc.strerror or exc}") from None
    if magic != b"PK\x03\x04":  # every .npz is a zip archive
        raise _fail(f"{path}: not a .npz file (expected arrays saved with numpy.savez)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except ValueError as exc:  # object arrays need pickle, which we never enable
        raise _fail(f"{path}: cannot read arrays without pickle ({exc})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise _fail(f"{path}: not a readable .npz file ({exc})") from None


_F32_MAX = F32_MAX  # float32's largest finite value


def _features(arr: np.ndarray, where: str) -> np.ndarray:
    if arr.dtype.kind not in "biuf":
        raise _fail(f"{where}: features must be numbers, got dtype {arr.dtype}")
    if arr.ndim == 0 or arr.shape[0] == 0:
        raise _fail(f"{where}: no examples (shape {list(arr.shape)})")
    x = arr.astype(np.float64).reshape(arr.shape[0], -1) if arr.ndim > 1 else \
        arr.astype(np.float64)[:, None]
    if x.shape[1] == 0:
        raise _fail(f"{where}: examples have no features (shape {list(arr.shape)})")
    bad = ~np.isfinite(x)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise _fail(f"{where}: contains NaN or Inf ({int(bad.sum())} values, first in row {row})")
    big = np.abs(x) > _F32_MAX  # finite here, Inf once stored as float32
    if big.any():
        row = int(np.argwhere(big)[0][0])
        raise _fail(f"{where}: {int(big.sum())} values are beyond float32's range (±3.4e38), "
                    f"first in row {row}")
    return x


def _labels(arr: np.ndarray, task: str, where: str) -> np.ndarray:
    if arr.dtype.kind not in "biuf":
        raise _fail(f"{where}: targets must be numbers, got dtype {arr.dtype}")
    if arr.ndim == 0 or arr.shape[0] == 0:
        raise _fail(f"{where}: no targets (shape {list(arr.shape)})")
    if task == "regression":
        y = arr.astype(np.float64)
        if not np.isfinite(y).all():
            raise _fail(f"{where}: regression targets contain NaN or Inf")
        if (np.abs(y) > _F32_MAX).any():
            raise _fail(f"{where}: regression targets beyond float32's range (±3.4e38)")
        return y.astype(np.float32)
    y = arr.reshape(-1) if arr.ndim == 2 and arr.shape[1] == 1 else arr
    if y.ndim != 1:
        raise _fail(f"{where}: class labels must be one per example (shape [N]), "
                    f"got shape {list(arr.shape)}")
    if y.dtype.kind == "f" and not (np.isfinite(y).all() and (y == np.round(y)).all()):
        raise _fail(f"{where}: class labels must be whole numbers 0..K-1, found "
                    f"{_first(y[~(np.isfinite(y) & (y == np.round(y)))])}")
    if (y < 0).any():
        raise _fail(f"{where}: class labels must be 0..K-1, found negative label "
                    f"{_first(y[y < 0])}")
    if y.max() > np.iinfo(np.int32).max:
        raise _fail(f"{where}: class label {_first(y[y > np.iinfo(np.int32).max])} is too large")
    return y.astype(np.int32)


def _first(values: np.ndarray) -> str:
    v = values.reshape(-1)[0].item()
    return repr(v)


def _infer_task(arrays: dict[str, np.ndarray], task: str | None, where: str) -> str:
    if task is None and "task" in arrays:
        task = str(arrays["task"].reshape(-1)[0]) if arrays["task"].size else ""
    if task is None:
        return "classification" if arrays["y"].dtype.kind in "biu" else "regression"
    if task not in TASKS:
        raise _fail(f"{where}: task must be 'classification' or 'regression', got {task!r}")
    return task


def _pair(arrays: dict[str, np.ndarray], xk: str, yk: str, task: str,
          where: str) -> tuple[np.ndarray, np.ndarray]:
    x = _features(arrays[xk], f"{where}: array '{xk}'")
    y = _labels(arrays[yk], task, f"{where}: array '{yk}'")
    if len(x) != len(y):
        raise _fail(f"{where}: '{xk}' has {len(x)} examples but '{yk}' has {len(y)}")
    return x, y


def _check_keys(arrays: dict[str, np.ndarray], where: str) -> None:
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        have = ", ".join(sorted(arrays)) or "none"
        raise _fail(f"{where}: missing array {' and '.join(map(repr, missing))} "
                    f"(a data file needs 'x' and 'y'; it has: {have})")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise _fail(f"{where}: has only one of 'x_test' and 'y_test'; give both or neither")


def _load_npz(path: Path, seed: int, test_fraction: float, task: str | None) -> Dataset:
    where = str(path)
    arrays = _read_npz(path)
    _check_keys(arrays, where)
    task = _infer_task(arrays, task, where)
    x, y = _pair(arrays, "x", "y", task, where)
    feature_shape = tuple(int(d) for d in arrays["x"].shape[1:]) or (1,)
    if "x_test" in arrays:
        x_test, y_test = _pair(arrays, "x_test", "y_test", task, where)
        if x_test.shape[1] != x.shape[1]:
            raise _fail(f"{where}: 'x' has {x.shape[1]} features per example but 'x_test' has "
                        f"{x_test.shape[1]}")
        x_train, y_train = x, y
    else:
        x_train, x_test, y_train, y_test = _split(x, y, seed, test_fraction, where,
                                                  stratify=task == "classification")
    classes = None
    if task == "classification":
        classes = int(max(y_train.max(), y_test.max())) + 1
    return Dataset(x_train.astype(np.float32), y_train, x_test.astype(np.float32), y_test,
                   path.name, classes, task, feature_shape)


# --- public API ----------------------------------------------------------------------------------


def load_dataset(spec: str, *, seed: int = 0, test_fraction: float = 0.2,
                 task: str | None = None) -> Dataset:
    """Load a built-in dataset by name or a user's .npz file; raises DataError on bad input.

    task "binary" (a bce_with_logits model) loads a classification dataset that must have
    exactly 2 classes; its 0/1 labels stay int32 (the runtime reads them as float targets).
    """
    data = _load(spec, seed, test_fraction, "classification" if task == "binary" else task)
    if task == "binary" and data.num_classes != 2:
        raise _fail(f"dataset {data.name!r} has {data.num_classes} classes; a binary "
                    "(bce_with_logits) model needs labels 0 and 1")
    return data


def data_file(spec: str) -> Path | None:
    """The .npz file a dataset spec names, which may not exist (None: a built-in name, or a
    name that is neither)."""
    name = spec.strip()
    if name in BUILTINS or not name:  # Path("") is ".", which was read as a directory
        return None
    path = Path(name).expanduser()
    return path if path.suffix.lower() == ".npz" or path.exists() else None


def check_data_file(flag: str, spec: str | None) -> None:
    """A dataset flag that names no built-in dataset and no existing file is a usage error
    (exit 2), found before compiling; what a file that exists holds is load_dataset's to judge
    (DataError)."""
    if spec is None:
        return
    expected = f"expected one of {', '.join(BUILTINS)}, or a path to a .npz file"
    if not spec.strip():
        raise UsageError.at(f"{flag}: no dataset given ({expected})")
    path = data_file(spec)
    if path is not None and not path.exists():
        raise UsageError.at(f"{flag}: no such data file: {path}")
    if path is None and spec.strip() not in BUILTINS:
        raise UsageError.at(f"{flag}: unknown dataset {spec!r}"
                            f"{did_you_mean(spec.strip(), BUILTINS)} ({expected})")


def _load(spec: str, seed: int, test_fraction: float, task: str | None) -> Dataset:
    name = spec.strip()
    if name in BUILTINS:
        if task not in (None, "classification"):
            raise _fail(f"dataset {name!r} is a classification task, not {task}")
        return _load_builtin(name, seed, test_fraction)
    path = data_file(name)
    if path is not None:
        return _load_npz(path, seed, test_fraction, task)
    raise _fail(f"unknown dataset {spec!r}{did_you_mean(name, BUILTINS)} (expected one of "
                f"{', '.join(BUILTINS)}, or a path to a .npz file)")


def reshape_for(x: np.ndarray, feature_shape: tuple[int, ...] | list[int] | Any) -> np.ndarray:
    """Reshape (N, ...) examples to (N, *feature_shape), e.g. digits (N, 64) → (N, 1, 8, 8)."""
    shape = tuple(int(d) for d in feature_shape)
    if any(d <= 0 for d in shape):
        raise _fail(f"input shape {list(shape)} must have positive sizes")
    arr = np.asarray(x)
    if arr.ndim == 0:
        raise _fail("expected an array of examples, got a scalar")
    want = int(np.prod(shape, dtype=np.int64))
    have = int(np.prod(arr.shape[1:], dtype=np.int64))
    if want != have:
        raise _fail(f"examples have {have} values each (shape {list(arr.shape[1:])}) but the "
                    f"model's input is {list(shape)} ({want} values)")
    return arr.reshape((arr.shape[0], *shape))

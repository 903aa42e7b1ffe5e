"""Flower apps: model.wasm + manifest.json → a Flower 1.42 app folder (--target flower).

The app is a standard Flower project: pyproject.toml (components and a run config taken from
the ``federated`` block), a package with client_app.py and server_app.py, the compiled module
(base64 in model_wasm.py: Flower app bundles carry only text files) and manifest.json. The
logic lives in runtime/python/fedc_flower.py and fedc_runtime.py, copied verbatim; templates
(templates/flower/*.j2, jinja2 with StrictUndefined) only substitute and loop.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path
from typing import Any

import jinja2

from ..diagnostics import UsageError
from ..fl.strategies import make_strategy
from ..resources import resource_dir
from .bundle import banner

# fedc strategy → (Flower class in flwr.serverapp.strategy, {fedc option: Flower keyword});
# options without a Flower keyword (e.g. fedadagrad's unused betas) are not rendered
FLOWER_STRATEGIES: dict[str, tuple[str, dict[str, str]]] = {
    "fedavg": ("FedAvg", {}),
    "fedprox": ("FedProx", {"mu": "proximal_mu"}),
    "fedavgm": ("FedAvgM", {"server_lr": "server_learning_rate",
                            "momentum": "server_momentum"}),
    "fedadam": ("FedAdam", {"eta": "eta", "eta_l": "eta_l", "beta1": "beta_1",
                            "beta2": "beta_2", "tau": "tau"}),
    "fedyogi": ("FedYogi", {"eta": "eta", "eta_l": "eta_l", "beta1": "beta_1",
                            "beta2": "beta_2", "tau": "tau"}),
    "fedadagrad": ("FedAdagrad", {"eta": "eta", "eta_l": "eta_l", "tau": "tau"}),
    "median": ("FedMedian", {}),
    "trimmed_mean": ("FedTrimmedAvg", {"beta": "beta"}),
    "krum": ("Krum", {"f": "num_malicious_nodes"}),
    "multikrum": ("MultiKrum", {"f": "num_malicious_nodes", "m": "num_nodes_to_select"}),
}
DEPENDENCIES = ("flwr[simulation]>=1.42,<1.43", "numpy>=1.26", "wasmtime>=50,<51")
TEMPLATES = (("pyproject.toml.j2", "pyproject.toml"), ("README.md.j2", "README.md"),
             ("__init__.py.j2", "{package}/__init__.py"),
             ("client_app.py.j2", "{package}/client_app.py"),
             ("server_app.py.j2", "{package}/server_app.py"),
             ("model_wasm.py.j2", "{package}/model_wasm.py"))
SEED, TEST_FRACTION = 0, 0.2  # the run config's defaults
COPIED = (("python/fedc_runtime.py", "fedc_runtime.py"),
          ("python/fedc_flower.py", "fedc_flower.py"))


def package_name(model: str) -> str:
    """DigitsMLP → fedc_digits_mlp (a Python package name unlikely to shadow another)."""
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", model).lower()
    return "fedc_" + re.sub(r"[^a-z0-9_]", "_", snake)


def toml_value(value: Any) -> str:
    """A TOML literal for a run config value (bool, int, float or str)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)  # JSON escapes are valid TOML escapes


def strategy_config(federated: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """(key, value, note) for the strategy and its options in Flower's spelling."""
    name = federated["strategy"]
    options = {"mu": federated.get("proximal_mu", 0.0)} if name == "fedprox" else {}
    cls, table = FLOWER_STRATEGIES[name]
    rows: list[tuple[str, Any, str]] = [("strategy", name, f"Flower's {cls}")]
    for option, value in make_strategy(name, **options).options().items():
        if option in table and value is not None:
            rows.append((f"strategy-{table[option].replace('_', '-')}", value,
                         f"fedc's {name} {option}"))
    return rows


def run_config(manifest: dict[str, Any], dataset: str | None) -> list[tuple[str, Any, str]]:
    """Every run config entry the app reads, as (key, value, note)."""
    fed = manifest["federated"]
    per_round = int(fed["clients_per_round"])
    return [
        ("num-server-rounds", int(fed["rounds"]), "federated block: rounds"),
        ("min-nodes", per_round, "clients_per_round: nodes a round waits for and trains"),
        ("fraction-train", 1.0, "Flower samples max(min-nodes, fraction × connected) nodes"),
        ("fraction-evaluate", 0.0, "nodes that also evaluate each round (0: none)"),
        ("local-epochs", int(fed["local_epochs"]), ""),
        ("batch-size", int(fed["batch_size"]), ""),
        *strategy_config(fed),
        ("seed", SEED, "initial weights, partitions and client shuffles (as fedc simulate)"),
        ("lr", 0.0, "> 0 overrides the optimizer's learning rate"),
        ("dataset", dataset or "", "for partition-id nodes and central evaluation (fedc's "
                                   "loaders: a built-in name or a .npz)"),
        ("partition", "iid", "iid | dirichlet:ALPHA | shards:K | quantity:ALPHA"),
        ("test-fraction", TEST_FRACTION, "held out for central evaluation"),
        ("central-eval", bool(dataset), "score each global model on the held-out split"),
        ("round-timeout", 600.0, "seconds a round waits for replies"),
        ("out-dir", "", "if set, the server writes weights.npy and history.json here"),
    ]


def app_dataset(spec: str, manifest: dict[str, Any]) -> str:
    """--data as the run config's dataset: loaded and fitted to the model as the app will load
    it (the default seed and test-fraction), so a wrong name or a dataset the model cannot take
    fails at compile time, not on the SuperLink; a .npz path is made absolute, since the app's
    processes do not run in the folder it was given from."""
    from ..data import data_file, load_dataset
    from ..train import check_fits
    check_fits(manifest, load_dataset(spec, seed=SEED, test_fraction=TEST_FRACTION,
                                      task=manifest["task"]))
    path = data_file(spec)
    return str(path.resolve()) if path is not None else spec.strip()


def _describe(decl: dict[str, Any]) -> str:
    if "classes" in decl:
        return f"integer class labels 0..{decl['classes'] - 1}"
    return f"{decl['dtype']}{list(decl['shape'])}"


def context(wasm: bytes, manifest: dict[str, Any], dataset: str | None) -> dict[str, Any]:
    """Everything the templates substitute."""
    rows = run_config(manifest, dataset)
    encoded = base64.b64encode(wasm).decode("ascii")
    return {
        "banner": banner(manifest), "model": manifest["model"], "source": manifest["source"],
        "package": package_name(manifest["model"]),
        "project": package_name(manifest["model"]).replace("_", "-"),
        "dependencies": DEPENDENCIES, "task": manifest["task"],
        "num_params": int(manifest["params_region"]["count"]),
        "sha256": manifest["wasm"]["sha256"], "wasm_bytes": len(wasm),
        "wasm_base64": [encoded[i:i + 96] for i in range(0, len(encoded), 96)],
        "flower_strategy": FLOWER_STRATEGIES[manifest["federated"]["strategy"]][0],
        "run_config": [(k, toml_value(v), note) for k, v, note in rows],
        "min_nodes": int(manifest["federated"]["clients_per_round"]),
        "dataset": dataset or "", "partition": "iid",
        "input_desc": _describe(manifest["inputs"][0]),
        "target_desc": _describe(manifest["targets"][0]),
    }


def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(resource_dir("templates") / "flower"),
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                              trim_blocks=True, lstrip_blocks=True, autoescape=False)


def write_flower_app(wasm: bytes, manifest: dict[str, Any], out_dir: str | Path,
                     dataset: str | None = None) -> list[Path]:
    """Write the app into `out_dir`; `dataset` becomes the run config's dataset. Returns paths."""
    out = Path(out_dir)
    ctx = context(wasm, manifest, dataset)
    pkg = out / ctx["package"]
    try:
        pkg.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError.at(f"cannot create {pkg}: {exc.strerror or exc}") from None
    env = _environment()
    written = []
    for template, target in TEMPLATES:
        path = out / target.format(package=ctx["package"])
        path.write_text(env.get_template(template).render(ctx), encoding="utf-8")
        written.append(path)
    (pkg / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    written.append(pkg / "manifest.json")
    runtime = resource_dir("runtime")
    for source, target in COPIED:
        shutil.copyfile(runtime / source, pkg / target)
        written.append(pkg / target)
    return written

"""The code examples in the README and the docs run as written and print what they say."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _python_blocks(doc: str) -> list[str]:
    """The ```python blocks of a Markdown file that are Python (the README's first is .fed)."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / doc).read_text(), re.S)
    out = []
    for block in blocks:
        try:
            ast.parse(block)
        except SyntaxError:
            continue
        out.append(block)
    return out


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A fresh folder with the repository's examples/, as the examples expect."""
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    return tmp_path


def _run(command: list[str], cwd: Path) -> str:
    out = subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=600)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _python(block: str, cwd: Path) -> str:
    (cwd / "snippet.py").write_text(block)
    return _run([sys.executable, "snippet.py"], cwd)


def test_the_readme_python_api_example_trains_digits(workdir):
    (block,) = [b for b in _python_blocks("README.md") if "Model.load" in b]
    result = ast.literal_eval(_python(block, workdir).strip().splitlines()[-1])
    assert set(result) == {"loss", "accuracy"} and result["accuracy"] > 0.9, result
    assert (workdir / "build" / "model.wasm").is_file()


@pytest.mark.node
@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_readme_javascript_example_trains_in_node(workdir):
    section = README.split("## JavaScript API")[1]
    (block,) = re.findall(r"```js\n(.*?)```", section, re.S)
    bundle = re.search(r"`fedc (bundle [^`]*)`", section)  # the command the example follows
    assert bundle is not None
    _run([sys.executable, "-m", "fedc", *bundle[1].split()], workdir)
    (workdir / "train.mjs").write_text(block)
    printed = _run(["node", "train.mjs"], workdir)
    accuracy = re.search(r"accuracy: ([0-9.]+)", printed)
    assert accuracy is not None and float(accuracy[1]) > 0.9, printed


@pytest.mark.slow
def test_the_simulation_docs_python_example_runs(workdir):
    (block,) = _python_blocks("docs/simulation.md")
    accuracy, sha = _python(block, workdir).split()
    assert float(accuracy) > 0.85 and len(sha) == 64

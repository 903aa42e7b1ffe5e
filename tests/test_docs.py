"""The Python examples in the README and the docs run as written and print what they say."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


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


def _run(block: str, cwd: Path) -> str:
    (cwd / "examples").symlink_to(ROOT / "examples")
    script = cwd / "snippet.py"
    script.write_text(block)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         cwd=cwd, timeout=600)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_readme_python_api_example_trains_digits(tmp_path):
    (block,) = [b for b in _python_blocks("README.md") if "Model.load" in b]
    printed = _run(block, tmp_path)
    result = ast.literal_eval(printed.strip().splitlines()[-1])
    assert set(result) == {"loss", "accuracy"} and result["accuracy"] > 0.9, result
    assert (tmp_path / "build" / "model.wasm").is_file()


@pytest.mark.slow
def test_the_simulation_docs_python_example_runs(tmp_path):
    (block,) = _python_blocks("docs/simulation.md")
    accuracy, sha = _run(block, tmp_path).split()
    assert float(accuracy) > 0.85 and len(sha) == 64

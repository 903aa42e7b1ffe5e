"""The built wheel carries grammar/, runtime/ and templates/ and compiles an example."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_compiles_an_example(tmp_path):
    dist = tmp_path / "dist"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                            "--no-build-isolation", "-w", str(dist), str(ROOT)],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = dist.glob("fedc-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for required in ("fedc/_data/grammar/fed.lark", "fedc/_data/runtime/python/fedc_runtime.py"):
        assert required in names, f"{required} missing from the wheel"
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    installed = subprocess.run([str(py), "-m", "pip", "install", "-q", str(wheel)],
                               capture_output=True, text=True, timeout=900)
    assert installed.returncode == 0, installed.stderr
    work = tmp_path / "elsewhere"
    work.mkdir()
    out = subprocess.run([str(env_dir / "bin" / "fedc"), "compile",
                          str(ROOT / "examples" / "digits_mlp.fed"), "-o", "build", "--json"],
                         cwd=work, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (work / "build" / "model.wasm").stat().st_size > 0
    probe = subprocess.run([str(py), "-c", "import fedc.resources as r; "
                            "print(r.resource_dir('grammar'))"],
                           cwd=work, capture_output=True, text=True, check=True)
    assert "site-packages" in probe.stdout

"""Tests: numpy stays unimported through `fedc compile` and `fedc check` (fedc/_lazy.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedc._lazy import lazy_module

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import sys
from fedc.cli import main
code = main({argv!r})
loaded = sorted(m for m in sys.modules if m == "numpy._core" or m.startswith("numpy._core."))
print(code, len(loaded))
"""


@pytest.mark.parametrize("command", ["compile", "check"])
def test_compile_and_check_never_load_numpy(command, tmp_path):
    """Importing numpy is ~110 ms of a fresh-process compile; the modules on this path take a
    lazy `np` and use it only in reference code. numpy._core is what `import numpy` runs."""
    argv = [command, str(ROOT / "examples" / "digits_cnn.fed")]
    if command == "compile":
        argv += ["-o", str(tmp_path / "out")]
    out = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1].split() == ["0", "0"], out.stdout


def test_the_lazy_numpy_is_numpy_once_used():
    """In a fresh process numpy loads at the first attribute read; where it is imported
    already, `np` is numpy itself."""
    probe = ("import sys\nfrom fedc._lazy import np\nbefore = 'numpy._core' in sys.modules\n"
             "z = np.zeros(3, np.float32)\nprint(before, 'numpy._core' in sys.modules, z.sum(), "
             "np is sys.modules['numpy'])")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert out.stdout.split() == ["False", "True", "0.0", "True"], out.stderr
    import numpy

    from fedc._lazy import np
    assert np is numpy and np.float32(1.5) == 1.5
    assert lazy_module("json") is sys.modules["json"]
    with pytest.raises(ModuleNotFoundError, match="no_such_module_here"):
        lazy_module("no_such_module_here")

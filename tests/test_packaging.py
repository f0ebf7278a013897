"""The built wheel carries the kernels as mimfast.kernels, CUDA sources included."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps",
                        "--no-build-isolation", "-w", str(out), "-q"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    (whl,) = out.glob("mimfast-*.whl")
    return zipfile.ZipFile(whl).namelist()


def test_wheel_contains_kernel_modules(wheel):
    for name in ("reference.py", "cpu.py", "gpu.py", "__init__.py"):
        assert f"mimfast/kernels/{name}" in wheel
    assert not any(n.startswith("kernels/") for n in wheel), "bare 'kernels' package shipped"


def test_wheel_contains_cuda_sources(wheel):
    sources = sorted(p.name for p in (ROOT / "kernels" / "cuda").glob("*.cu"))
    assert sources, "no CUDA sources in kernels/cuda"
    for name in sources:
        assert f"mimfast/kernels/cuda/{name}" in wheel


def test_nothing_imports_a_bare_kernels_package():
    for path in list((ROOT / "mimfast").rglob("*.py")) + list((ROOT / "kernels").rglob("*.py")):
        text = path.read_text()
        assert "import kernels" not in text and "from kernels" not in text, path

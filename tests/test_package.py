import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_another_package_named_kernels_is_named_in_the_error(tmp_path):
    shadow = tmp_path / "kernels"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    done = subprocess.run([sys.executable, "-c", "import litere.model"], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert done.returncode != 0
    assert f"resolves to {shadow / '__init__.py'}" in done.stderr and "pip uninstall kernels" in done.stderr


def test_litere_imports_with_its_own_kernels():
    done = subprocess.run([sys.executable, "-c", "import litere.model, kernels; print(kernels.__file__)"],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(REPO / "kernels" / "__init__.py")

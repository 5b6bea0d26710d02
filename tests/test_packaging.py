"""The two distributions (device fiqa-sdk, host fiqa-compile) keep one version and the rooms' import rules hold.

The version lives in one place, ``fiqa_sdk.__version__``: pyproject.toml reads it for fiqa-sdk, host/setup.py for
fiqa-compile and for its ``fiqa-sdk==`` pin. The import contract is pyproject.toml's [tool.importlinter].
"""
from __future__ import annotations

import ast
import importlib
import importlib.metadata as md
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from packaging.requirements import Requirement

import fiqa_sdk

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
PACKAGES = {"fiqa_sdk": "sdk", "fiqa_runtimes": "runtimes", "fiqa_calibration": "calibration",
            "fiqa_compile": "compile"}


def _toml(path: Path) -> dict:
    return tomllib.loads(path.read_text())


def _host_setup():
    spec = importlib.util.spec_from_file_location("_fiqa_host_setup", ROOT / "host" / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # setup() runs only as __main__ (the build backend)
    return module


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_version_is_written_once_and_both_distributions_read_it():
    device, host = _toml(ROOT / "pyproject.toml"), _toml(ROOT / "host" / "pyproject.toml")
    assert "version" not in device["project"] and "version" in device["project"]["dynamic"]
    assert device["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "fiqa_sdk.__version__"}
    assert "version" not in host["project"] and {"version", "dependencies"} <= set(host["project"]["dynamic"])
    assert "dependencies" not in host["project"]

    source = ast.parse((ROOT / "sdk" / "fiqa_sdk" / "__init__.py").read_text())
    literal = [n.value.value for n in source.body if isinstance(n, ast.Assign)
               and any(getattr(t, "id", None) == "__version__" for t in n.targets)]
    assert literal == [fiqa_sdk.__version__]

    setup = _host_setup()
    assert setup.VERSION == fiqa_sdk.__version__
    pins = [Requirement(r) for r in setup.REQUIREMENTS if Requirement(r).name == "fiqa-sdk"]
    assert len(pins) == 1 and str(pins[0].specifier) == f"=={fiqa_sdk.__version__}"


def test_the_installed_distributions_are_locked_to_that_version():
    fix = "re-run  bash scripts/setup.sh  (it reinstalls both distributions when the version changes)"
    assert md.version("fiqa-sdk") == fiqa_sdk.__version__, fix
    assert md.version("fiqa-compile") == fiqa_sdk.__version__, fix
    pins = [Requirement(r) for r in md.requires("fiqa-compile") or [] if Requirement(r).name == "fiqa-sdk"]
    assert [str(p.specifier) for p in pins] == [f"=={fiqa_sdk.__version__}"], fix


def test_each_distribution_ships_its_own_rooms_and_commands():
    device, host = _toml(ROOT / "pyproject.toml"), _toml(ROOT / "host" / "pyproject.toml")
    assert device["tool"]["setuptools"]["packages"]["find"]["where"] == ["sdk", "runtimes"]
    assert host["tool"]["setuptools"]["packages"]["find"]["where"] == ["../compile", "../calibration"]
    assert set(device["project"]["scripts"]) == {"fiqa-demo", "fiqa-score"}
    assert set(host["project"]["scripts"]) == {"fiqa-compile", "fiqa-labels", "fiqa-train", "fiqa-distill", "fiqa-eval"}
    for scripts in (device["project"]["scripts"], host["project"]["scripts"]):
        for target in scripts.values():
            module, func = target.split(":")
            assert callable(getattr(importlib.import_module(module), func)), target
    assert not any("torch" in dep for deps in device["project"]["optional-dependencies"].values() for dep in deps)
    assert "torch==2.13.0" in _host_setup().REQUIREMENTS


def _lint_imports(*args: str, cwd: Path = ROOT, env_path: str | None = None) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "lint-imports"
    assert exe.exists(), "lint-imports is missing: it comes with the test extra (bash scripts/setup.sh)"
    env = None if env_path is None else {**os.environ, "PYTHONPATH": env_path}
    return subprocess.run([str(exe), "--no-cache", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_import_contract_is_kept():
    res = _lint_imports()
    assert res.returncode == 0, res.stdout + res.stderr
    assert "3 kept, 0 broken" in res.stdout


def test_the_import_contract_catches_a_device_module_importing_torch_or_a_higher_room(tmp_path):
    """Control: the same contract on a copy of the sources with two violations, one inside a function."""
    src = tmp_path / "src"
    for package, folder in PACKAGES.items():
        shutil.copytree(ROOT / folder / package, src / package,
                        ignore=lambda d, names: [n for n in names if n == "__pycache__" or
                                                 ("." in n and not n.endswith(".py"))])
    with open(src / "fiqa_sdk" / "frames.py", "a") as f:
        f.write("\n\ndef _bad():\n    import torch\n")
    with open(src / "fiqa_runtimes" / "base.py", "a") as f:
        f.write("\n\nfrom fiqa_sdk import frames as _bad_frames\n")
    res = _lint_imports(str(ROOT / "pyproject.toml"), cwd=tmp_path, env_path=str(src))
    assert res.returncode != 0
    assert "fiqa_sdk is not allowed to import torch" in res.stdout
    assert re.search(r"fiqa_runtimes\.base -> fiqa_sdk\.frames", res.stdout), res.stdout


def test_the_device_test_selection_names_real_tests():
    from conftest import DEVICE_TEST_FILES, NOT_DEVICE_TESTS

    assert all((TESTS / name).is_file() for name in DEVICE_TEST_FILES)
    for key in NOT_DEVICE_TESTS:
        name, func = key.split("::")
        assert name in DEVICE_TEST_FILES and f"def {func}(" in (TESTS / name).read_text(), key
    for name in DEVICE_TEST_FILES:  # what the device-only job cannot import: torch, the host packages, their fixtures
        imports = {m.split(".")[0] for m in re.findall(r"^(?:from|import) ([\w.]+)", (TESTS / name).read_text(), re.M)}
        assert not imports & {"torch", "fiqa_compile", "fiqa_calibration", "bundle_fixtures", "student_fixtures"}, name


def test_the_device_wheel_check_flags_host_content(tmp_path):
    check = _script("check_device_wheel")
    wheel = tmp_path / "fiqa_sdk-0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("fiqa_sdk/__init__.py", "def f():\n    import torch\n")
        z.writestr("fiqa_compile/__init__.py", "")
        z.writestr("fiqa_sdk/weights/teacher.pt", b"")
        z.writestr("fiqa_sdk-0.dist-info/METADATA", "Name: fiqa-sdk\nRequires-Dist: torch==2.13.0\n")
        z.writestr("fiqa_sdk-0.dist-info/entry_points.txt", "[console_scripts]\nfiqa-compile = a:b\nfiqa-demo = a:b\n")
    found = "\n".join(check.problems(str(wheel)))
    for expected in ("'fiqa_compile' is not a device package", "torch weights fiqa_sdk/weights/teacher.pt",
                     "fiqa_sdk/__init__.py imports torch", "requires torch==2.13.0",
                     "command fiqa-compile is not a device command", "device command fiqa-score is missing",
                     "missing fiqa_sdk/bundles/default-cpu/manifest.json"):
        assert expected in found, (expected, found)

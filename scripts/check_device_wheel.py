"""Check that a built fiqa-sdk (device) wheel holds the device side only; exit 1 naming what does not belong.

    python scripts/check_device_wheel.py dist/fiqa_sdk-*.whl

No host package (fiqa_compile, fiqa_calibration), no torch weights (.pt), no host command, no torch requirement,
no module that imports torch or another host-side library (by AST, so imports inside functions count too), and
the embedded default bundles present. Prints the wheel's size. Used by scripts/device_tests.sh.
"""
from __future__ import annotations

import ast
import os
import re
import sys
import zipfile
from email.parser import Parser

DEVICE_PACKAGES = {"fiqa_sdk", "fiqa_runtimes"}
DEVICE_COMMANDS = {"fiqa-demo", "fiqa-score"}
# As the import contract in pyproject.toml forbids, plus the host packages themselves.
HOST_LIBRARIES = {"torch", "torchvision", "litert_torch", "tensorflow", "onnx", "onnxscript", "onnxsim", "scipy",
                  "matplotlib", "skimage", "insightface", "fiqa_compile", "fiqa_calibration"}
HOST_REQUIREMENTS = {"torch", "torchvision", "litert-torch", "fiqa-compile"}
REQUIRED = ("fiqa_sdk/bundles/default-cpu/manifest.json", "fiqa_sdk/bundles/default-android-arm64/manifest.json")


def imported_tops(source: str) -> set[str]:
    tops = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            tops |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            tops.add(node.module.split(".")[0])
    return tops


def problems(wheel: str) -> list[str]:
    out = []
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info"))
        for top in sorted({n.split("/")[0] for n in names} - DEVICE_PACKAGES - {dist_info}):
            out.append(f"top-level entry {top!r} is not a device package")
        out += [f"torch weights {n}" for n in names if n.endswith(".pt")]
        out += [f"missing {n}" for n in REQUIRED if n not in names]
        for n in names:
            if n.endswith(".py"):
                bad = imported_tops(z.read(n).decode("utf-8")) & HOST_LIBRARIES
                out += [f"{n} imports {m}" for m in sorted(bad)]
        meta = Parser().parsestr(z.read(f"{dist_info}/METADATA").decode("utf-8"))
        for req in meta.get_all("Requires-Dist") or []:
            name = re.split(r"[\s\[<>=!~;(]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")
            if name in HOST_REQUIREMENTS:
                out.append(f"requires {req}")
        eps = z.read(f"{dist_info}/entry_points.txt").decode() if f"{dist_info}/entry_points.txt" in names else ""
        commands = {line.split("=")[0].strip() for line in eps.splitlines() if "=" in line}
        out += [f"command {c} is not a device command" for c in sorted(commands - DEVICE_COMMANDS)]
        out += [f"device command {c} is missing" for c in sorted(DEVICE_COMMANDS - commands)]
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    found = problems(argv[0])
    for p in found:
        print(f"device wheel: {p}", file=sys.stderr)
    print(f"device wheel {os.path.basename(argv[0])}: {os.path.getsize(argv[0]) / 1e6:.1f} MB, "
          f"{'OK' if not found else f'{len(found)} problem(s)'}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

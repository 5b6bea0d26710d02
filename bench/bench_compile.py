"""Time one whole ``fiqa-compile`` run and record what it reported (wall clock, stages, agreement).

    python bench/bench_compile.py --name faces_lfw -- --target jetson-orin --faces ../shared/data/lfw-dev \
        --distill-dir runs/student_faces --out runs/bundle-faces --force

Everything after ``--`` goes to ``fiqa-compile`` unchanged. Writes ``results/compile_NAME.json`` and ``.md``:
the wall clock of the whole command, the per-stage seconds and the SRCC table of its report.json, and, when
it distilled, the student's own held-out SRCC history from student.json. A failed compile is recorded as
failed (exit code and stderr tail), never as a time.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_basics  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _arg(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args and args.index(flag) + 1 < len(args) else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True, help="result name: results/compile_NAME.json")
    ap.add_argument("compile_args", nargs=argparse.REMAINDER, help="-- then the fiqa-compile arguments")
    args = ap.parse_args(argv)
    cargs = args.compile_args[1:] if args.compile_args[:1] == ["--"] else args.compile_args
    target = _arg(cargs, "--target")
    if target is None:
        ap.error("pass the fiqa-compile arguments after --, including --target")
    out = Path(_arg(cargs, "--out") or f"fiqa-bundle-{target}")
    cmd = [sys.executable, "-m", "fiqa_compile.cli", *cargs]
    t0 = time.time()
    proc = subprocess.run(cmd, stdout=sys.stdout, stderr=subprocess.PIPE, text=True)
    wall = time.time() - t0
    sys.stderr.write(proc.stderr[-4000:])
    record: dict = {"benchmark": "compile", "name": args.name, "command": "fiqa-compile " + " ".join(cargs),
                    "machine": machine_basics(), "returncode": proc.returncode}
    if proc.returncode != 0:
        record["error"] = proc.stderr[-2000:]
    else:
        report = json.loads((out / "report.json").read_text())
        record.update({"wall_minutes": round(wall / 60, 2), "student": report["student"],
                       "stages": report["stages"], "verification_faces": report["verification_faces"],
                       "srcc": {name: {side: {n: round(d[n]["srcc"], 4) for n in d}
                                       for side, d in v.items() if side in ("vs_fp32", "vs_teacher")}
                                for name, v in report["verification"].items()}})
        sdir = _arg(cargs, "--distill-dir")
        if sdir and (Path(sdir) / "student.json").exists():
            s = json.loads((Path(sdir) / "student.json").read_text())
            record["distillation"] = {k: s[k] for k in ("student", "samples", "held_out_srcc", "history", "config")}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"compile_{args.name}.json").write_text(json.dumps(record, indent=2))
    lines = [f"# fiqa-compile run `{args.name}`", "", f"`{record['command']}`", ""]
    if proc.returncode != 0:
        lines += [f"**failed** (exit {proc.returncode}):", "", "```", record["error"], "```"]
    else:
        lines += [f"**Wall clock: {record['wall_minutes']} minutes** on {record['machine']['cores']} cores "
                  f"({record['machine']['cpu']}). Student: {record['student']}", "",
                  "| stage | seconds | result |", "|---|---:|---|"]
        lines += [f"| {r['stage']} | {r['seconds']} | {r['result']} |" for r in record["stages"]]
        lines += ["", f"SRCC on {record['verification_faces']['n']} held-out faces "
                      f"({record['verification_faces']['source']}):", "",
                  "| artifact | vs fp32 (utility / perceptual) | vs teacher (utility / perceptual) |", "|---|---|---|"]
        for name, v in record["srcc"].items():
            cols = ["/".join(f"{x:.4f}" for x in v[side].values()) if side in v else "-"
                    for side in ("vs_fp32", "vs_teacher")]
            lines.append(f"| {name} | {cols[0]} | {cols[1]} |")
        if "distillation" in record:
            d = record["distillation"]
            lines += ["", f"Distillation ({d['student']}, {d['samples']['train']} train / {d['samples']['held_out']} "
                          "held-out crops), held-out SRCC vs the teachers per epoch:", "",
                      "| epoch | utility | perceptual |", "|---:|---:|---:|"]
            lines += [f"| {h['epoch']} | {h['srcc_utility']:.4f} | {h['srcc_perceptual']:.4f} |" for h in d["history"]]
    (RESULTS / f"compile_{args.name}.md").write_text("\n".join(lines) + "\n")
    return proc.returncode


if __name__ == "__main__":
    raise SystemExit(main())

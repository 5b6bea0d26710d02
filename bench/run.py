"""Run every benchmark script that exists (or, with --collect, gather what they last wrote) into one report.

    python bench/run.py                 # run them all, then write results.json, README.md and latency.png
    python bench/run.py --quick         # fewer timed runs (a smoke pass; numbers are noisier)
    python bench/run.py --collect       # run nothing: gather the JSON files already in bench/results
    python bench/run.py --only detector pipeline

Each script writes its own JSON (+ Markdown) into ``bench/results``; this one adds ``results.json`` (every
script's status and JSON, the machine, a latency summary), ``README.md`` (the combined tables) and
``latency.png`` (median latencies as bars). A script that is missing, or whose inputs are missing (no bundle,
no trained teachers), is listed as skipped with the reason; one that fails is listed as failed with its
exit code and the end of its stderr. Nothing is ever filled in for them.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import label_set_missing  # noqa: E402

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
OWN_FILES = ("results.json", "README.md", "latency.png")
# Keys holding one latency in milliseconds, in order of preference within one JSON object.
LATENCY_KEYS = ("median_ms", "forward_b1_ms", "latency_ms", "mean_ms")
LABEL_INT_KEYS = ("threads", "max_side", "batch", "batch_size", "runs_per_thread")
# Fields that describe the file or the environment, not the configuration a latency belongs to.
NOT_CONFIG = frozenset({"machine", "host", "meta", "note", "command", "cpu", "processor", "error", "benchmark",
                        "torch", "python", "profiled_on", "version", "versions", "written", "unit"})


@dataclass
class Bench:
    """One benchmark script: what it writes, how to run it, and a check for its inputs."""

    name: str
    script: str
    outputs: tuple[str, ...]                 # result JSON file name(s) it writes into the results folder
    args: Callable[[argparse.Namespace], list[str]] = lambda a: []
    quick: tuple[str, ...] = ()
    inputs: Callable[[argparse.Namespace], str | None] = lambda a: None  # None, or why it cannot run here
    takes_out: bool = True  # accepts --out DIR (only passed when --results is not bench/results)


def _bundle_missing(_args: argparse.Namespace) -> str | None:
    try:
        from fiqa_sdk.bundle import BundleError, default_bundle_path
    except ImportError as e:
        return f"fiqa_sdk cannot be imported ({e})"
    try:
        default_bundle_path()
    except BundleError as e:
        return f"no embedded bundle to benchmark ({e})"
    return None


def _teacher_inputs_missing(args: argparse.Namespace) -> str | None:
    need = {"--labels": Path(args.labels) / "labels.npz", "--utility": Path(args.utility) / "teacher.json",
            "--perceptual": Path(args.perceptual) / "teacher.json"}
    missing = [f"{flag} {p}" for flag, p in need.items() if not p.is_file()]
    if missing:
        return ("inputs not found: " + ", ".join(missing) + " (make them with fiqa-labels / fiqa-train, or point "
                "--labels/--utility/--perceptual at them)")
    return None


def _teacher_args(args: argparse.Namespace) -> list[str]:
    out = ["--labels", str(args.labels), "--utility", str(args.utility), "--perceptual", str(args.perceptual)]
    return out + (["--ladder-faces", "16", "--random-seeds", "2"] if args.quick else [])


BENCHES: tuple[Bench, ...] = (
    Bench("detector", "bench_detector.py", ("detector.json",), quick=("--runs", "10", "--warmup", "2")),
    Bench("alignment", "bench_alignment.py", ("alignment.json",), args=lambda a: ["--faces", str(a.faces)],
          quick=("--photos", "40"),
          inputs=lambda a: None if a.faces.is_dir() else f"no LFW-style photo folder at {a.faces} (pass --faces)"),
    Bench("teachers", "bench_teachers.py", ("teachers.json",), quick=("--runs", "1")),
    Bench("student", "bench_student.py", ("student.json",), quick=("--runs", "20", "--warmup", "3")),
    Bench("speedup", "bench_speedup.py", ("speedup.json",), inputs=_bundle_missing, quick=("--runs", "20")),
    Bench("pipeline", "bench_pipeline.py", ("pipeline.json",), inputs=_bundle_missing,
          quick=("--frames", "10", "--warmup", "2")),
    Bench("degradations", "plot_degradations.py", ("degradations_timing.json",), quick=("--repeats", "20"),
          takes_out=False),
    Bench("eval_teachers", "eval_teachers.py", ("teachers_eval.json",), args=_teacher_args,
          inputs=_teacher_inputs_missing),
    Bench("eval_student", "eval_student.py", ("student_eval.json",), args=lambda a: ["--labels", str(a.labels)],
          inputs=lambda a: label_set_missing(a.labels)),
    Bench("teacher_repeatability", "teacher_repeatability.py", ("teacher_repeatability.json",),
          args=lambda a: ["--labels", str(a.labels)], inputs=lambda a: label_set_missing(a.labels)),
    Bench("student_mirror", "student_mirror.py", ("student_mirror.json",),
          args=lambda a: ["--labels", str(a.labels)], inputs=lambda a: label_set_missing(a.labels)),
)


def machine() -> dict:
    """Where the numbers were taken: CPU model, cores, load, and the versions of everything that runs models."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {}
    for dist in ("torch", "onnxruntime", "ai-edge-litert", "tflite-runtime", "tensorrt", "opencv-python-headless",
                 "numpy", "dlib-bin", "fiqa-sdk"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {"cpu": cpu, "cores": os.cpu_count(), "arch": platform.machine(), "os": platform.platform(),
            "python": platform.python_version(), "loadavg": [round(v, 2) for v in os.getloadavg()],
            "versions": versions}


def run_bench(b: Bench, args: argparse.Namespace) -> dict:
    """Run one script (if it and its inputs exist) and report its status; never raises for a failing script."""
    path = BENCH / b.script
    if not path.is_file():
        return {"status": "skipped", "reason": f"bench/{b.script} does not exist yet"}
    why = b.inputs(args)
    if why:
        return {"status": "skipped", "reason": why}
    if not b.takes_out and args.results != RESULTS.resolve():
        return {"status": "skipped", "reason": f"bench/{b.script} writes only into bench/results (no --out); "
                                               "run without --results to include it"}
    cmd = [sys.executable, str(path), *b.args(args), *(b.quick if args.quick else ())]
    if b.takes_out and args.results != RESULTS.resolve():
        cmd += ["--out", str(args.results)]
    print(f"[run] {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"timed out after {args.timeout} s", "command": cmd}
    seconds = round(time.perf_counter() - t0, 1)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        return {"status": "failed", "reason": f"exit code {proc.returncode}", "stderr_tail": tail,
                "seconds": seconds, "command": cmd}
    return {"status": "ran", "seconds": seconds, "command": cmd}


def collect(b: Bench, results: Path, ran_since: float | None) -> dict:
    """The script's JSON outputs in ``results`` (with their age); a missing one makes the entry skipped."""
    files, missing = {}, []
    for name in b.outputs:
        p = results / name
        if not p.is_file():
            missing.append(name)
            continue
        if ran_since is not None and p.stat().st_mtime < ran_since:
            missing.append(f"{name} (not rewritten by this run)")
            continue
        try:
            files[name] = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            missing.append(f"{name} (not valid JSON: {e})")
            continue
    md = {name: (results / Path(name).with_suffix(".md").name).read_text()
          for name in files if (results / Path(name).with_suffix(".md").name).is_file()}
    written = {name: datetime.fromtimestamp((results / name).stat().st_mtime, timezone.utc)
               .isoformat(timespec="seconds") for name in files}
    return {"files": files, "markdown": md, "written": written, "missing": missing}


def latency_rows(source: str, doc) -> list[dict]:
    """Every object in a result JSON that carries a latency key, labelled by its configuration fields."""
    rows: list[dict] = []

    def label_parts(node: dict) -> list[str]:
        parts = []
        for k, v in node.items():
            if k in NOT_CONFIG:
                continue
            if isinstance(v, str) and len(v) <= 40:
                parts.append(v if k in ("name", "frame", "scene", "model", "detector", "kind") else f"{k}={v}")
            elif isinstance(v, int) and not isinstance(v, bool) and k in LABEL_INT_KEYS:
                parts.append(f"{k}={v}")
        return parts

    def walk(node, context: list[str], top: bool = False) -> None:
        if isinstance(node, dict):
            ctx = context if top else context + label_parts(node)  # top-level strings describe the whole file
            key = next((k for k in LATENCY_KEYS if isinstance(node.get(k), (int, float))
                        and not isinstance(node.get(k), bool)), None)
            if key:
                rows.append({"source": source, "config": ", ".join(ctx) or "-", "metric": key,
                             "ms": float(node[key]), "p90_ms": node.get("p90_ms")})
            for k, v in node.items():
                if k in NOT_CONFIG:
                    continue
                if isinstance(v, dict):
                    walk(v, ctx + [k])
                elif isinstance(v, list):
                    for item in v:
                        walk(item, ctx)
        elif isinstance(node, list):
            for item in node:
                walk(item, context)

    walk(doc, [], top=True)
    return rows


def plot_latency(rows: list[dict], path: Path, max_bars: int = 80) -> Path | None:
    """Horizontal bars of the median latencies (the first ``max_bars`` rows); None when there are none."""
    if not rows:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = rows[:max_bars]
    fig = Figure(figsize=(11, 0.26 * len(shown) + 1.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    labels = [f"{r['source']}: {r['config']}"[:100] for r in shown]
    colours = {s: f"C{i % 10}" for i, s in enumerate(dict.fromkeys(r["source"] for r in shown))}
    ax.barh(range(len(shown)), [r["ms"] for r in shown], color=[colours[r["source"]] for r in shown])
    ax.set_yticks(range(len(shown)), labels, fontsize=7)
    ax.set_ylim(len(shown) - 0.5, -0.5)  # first row on top, no empty band
    ax.set_xscale("log")
    ax.set_xlabel("milliseconds (median; log scale)")
    title = "Latency per benchmark configuration"
    if len(rows) > len(shown):
        title += f" (first {len(shown)} of {len(rows)}; all in results.json)"
    ax.set_title(title, fontsize=9)
    ax.grid(True, axis="x", alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def to_markdown(doc: dict) -> str:
    m = doc["machine"]
    v = m["versions"]
    lines = ["# Benchmark results", "",
             f"Written {doc['written']} by `python bench/run.py{' --collect' if doc['collect_only'] else ''}`.", "",
             "## Machine", "",
             f"- CPU: {m['cpu']} ({m['cores']} cores visible, {m['arch']}); load average {m['loadavg']}",
             f"- OS: {m['os']}; Python {m['python']}",
             "- " + ", ".join(f"{k} {val}" for k, val in v.items()), "",
             "Every script records its own machine and load too; results taken at other times may differ.", "",
             "## Scripts", "", "| benchmark | script | status | seconds | results | note |",
             "|---|---|---|---:|---|---|"]
    for name, s in doc["scripts"].items():
        files = ", ".join(f"`{f}`" for f in s.get("files", {})) or "-"
        note = s.get("reason", "")
        if s.get("missing"):
            note = (note + "; " if note else "") + "missing: " + ", ".join(s["missing"])
        secs = s.get("seconds", "")
        lines.append(f"| {name} | `bench/{s['script']}` | {s['status']} | {secs} | {files} | {note} |")
    if doc["latency"]:
        lines += ["", "## Latency summary", "", "![latency](latency.png)", "",
                  "| source | configuration | metric | ms | p90 ms |", "|---|---|---|---:|---:|"]
        for r in doc["latency"]:
            p90 = "" if r["p90_ms"] is None else r["p90_ms"]
            lines.append(f"| {r['source']} | {r['config']} | {r['metric']} | {r['ms']:g} | {p90} |")
    for name, s in doc["scripts"].items():
        for fname, md in s.get("markdown", {}).items():
            body = md.strip().splitlines()
            if body and body[0].startswith("# "):
                body[0] = "#" + body[0]  # nest each script's own title under this page's
            lines += ["", f"<!-- from {fname.replace('.json', '.md')} -->", *body]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--collect", action="store_true", help="run nothing; gather the results already written")
    ap.add_argument("--only", nargs="+", choices=[b.name for b in BENCHES], default=None, metavar="NAME",
                    help="only these benchmarks: " + ", ".join(b.name for b in BENCHES))
    ap.add_argument("--quick", action="store_true", help="pass the scripts' smaller run counts (smoke numbers)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="results folder (default bench/results)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds one script may run (default 3600)")
    ap.add_argument("--faces", type=Path, default=ROOT.parent / "shared/data/lfw-dev",
                    help="alignment: LFW-style photo folder (default ../shared/data/lfw-dev)")
    ap.add_argument("--labels", type=Path, default=ROOT / "runs/labels/lfw-dev", help="eval_teachers / eval_student / teacher_repeatability: label set")
    ap.add_argument("--utility", type=Path, default=ROOT / "compile/fiqa_compile/weights/vit_fiqa_mini",
                    help="eval_teachers: utility teacher directory (default: the embedded one)")
    ap.add_argument("--perceptual", type=Path, default=ROOT / "compile/fiqa_compile/weights/dsl_fiqa_tiny",
                    help="eval_teachers: perceptual teacher directory (default: the embedded one)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("results", "labels", "utility", "perceptual"):  # the scripts run from the repository root
        setattr(args, name, getattr(args, name).resolve())
    args.results.mkdir(parents=True, exist_ok=True)
    chosen = [b for b in BENCHES if args.only is None or b.name in args.only]
    scripts: dict[str, dict] = {}
    latency: list[dict] = []
    for b in chosen:
        entry: dict = {"script": b.script}
        started = None
        if not args.collect:
            started = time.time() - 1.0  # file-system timestamps can be coarse
            entry.update(run_bench(b, args))
            if entry["status"] != "ran":
                scripts[b.name] = entry
                print(f"[run] {b.name}: {entry['status']}: {entry['reason']}", flush=True)
                continue
        elif not (BENCH / b.script).is_file():
            scripts[b.name] = {**entry, "status": "skipped", "reason": f"bench/{b.script} does not exist yet"}
            continue
        got = collect(b, args.results, started)
        entry.update(files=got["files"], markdown=got["markdown"], written=got["written"])
        if got["missing"]:
            entry["missing"] = got["missing"]
        if args.collect:
            entry["status"] = "collected" if got["files"] else "skipped"
            if not got["files"]:
                entry["reason"] = "no results yet; run without --collect"
        elif not got["files"]:
            entry["status"] = "failed"
            entry["reason"] = "exited 0 but wrote no results file"
        scripts[b.name] = entry
        for fname, data in got["files"].items():
            latency += latency_rows(b.name, data)
        print(f"[run] {b.name}: {entry['status']}", flush=True)
    png = plot_latency(latency, args.results / "latency.png")
    doc = {"written": datetime.now(timezone.utc).isoformat(timespec="seconds"), "collect_only": args.collect,
           "machine": machine(), "scripts": scripts, "latency": latency,
           "latency_png": png.name if png else None}
    (args.results / "README.md").write_text(to_markdown(doc))
    for s in scripts.values():
        s.pop("markdown", None)  # kept in README.md; results.json carries the numbers
    (args.results / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    failed = [n for n, s in scripts.items() if s["status"] == "failed"]
    print(f"[run] wrote {args.results / 'results.json'}, README.md" + (", latency.png" if png else "")
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

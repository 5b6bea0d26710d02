"""``fiqa-compile``: one command from transformer teachers to a verified INT8 bundle for a device."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fiqa_calibration.calibration_set import MIN_SIZE as MIN_CALIBRATION_FACES
from fiqa_compile.cli_args import correlation, plain, positive_int
from fiqa_compile.scale import DEFAULT_GATE_TARGET
from fiqa_compile.targets import TARGETS

EPILOG = """targets:
""" + "\n".join(f"  {t.name:<14} {t.description}" for t in TARGETS.values()) + """

examples:
  fiqa-compile --target jetson-orin                  # embedded teachers + student, shipped calibration faces
  fiqa-compile --target android-arm64 --out bundles/phone
  fiqa-compile --target cpu --faces ~/my_captures    # distil a new student on your own unlabelled face photos
  fiqa-compile --target jetson-orin --student fiqa-student-my_captures   # reuse it for another target
  fiqa-compile --target cpu --gate-target reject=0.2   # thresholds for a site that may reject 20 % of good captures

With no --faces the embedded default student (trained on LFW; its model card is
compile/fiqa_compile/weights/MODEL_CARD.md in the source tree) is quantised; with --faces a new student is
distilled first. The report (report.md in the bundle) says which happened.
TensorRT engines are not built here: they are tied to the GPU and TensorRT version, so the bundle carries the
Q/DQ INT8 ONNX, its build settings and a calibration cache, and the Jetson builds and caches the engine on first use.
"""


# options that only shape a --faces distillation: None on the command line means "not given", so one given without
# --faces is refused rather than ignored (and recorded in the manifest as if it had mattered)
DISTILL_DEFAULTS = {"distill_epochs": 6, "distill_versions": 2}
DISTILL_ONLY = ("student_arch", "distill_epochs", "distill_versions", "distill_dir", "distill_init")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fiqa-compile", description=plain(__doc__), epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True, choices=list(TARGETS), help="device to compile for (see below)")
    ap.add_argument("--out", type=Path, default=None, help="bundle directory (default: ./fiqa-bundle-TARGET)")
    ap.add_argument("--force", action="store_true", help="replace an existing bundle at --out (atomically)")
    g = ap.add_argument_group("models")
    g.add_argument("--utility-teacher", type=Path, default=None,
                   help="ViT-FIQA teacher directory from fiqa-train (default: the embedded one)")
    g.add_argument("--perceptual-teacher", type=Path, default=None,
                   help="DSL-FIQA teacher directory from fiqa-train (default: the embedded one)")
    g.add_argument("--student", type=Path, default=None,
                   help="an already distilled student directory (student.pt + student.json) to quantise")
    g.add_argument("--faces", type=Path, default=None,
                   help="distil a NEW student on these unlabelled face photos first (folder, sub-folders = people)")
    g.add_argument("--student-arch", default=None,
                   help="student architecture for --faces (default: that of the --distill-init student, else "
                        "student_mfn; student_mfn_deep, student_mfn_full and student_nano are the others)")
    g.add_argument("--distill-epochs", type=positive_int, default=None,
                   help=f"epochs of distillation with --faces (default {DISTILL_DEFAULTS['distill_epochs']})")
    g.add_argument("--distill-versions", type=positive_int, default=None,
                   help="degraded versions of each --faces photo, scored once by both teachers and cached (default "
                        f"{DISTILL_DEFAULTS['distill_versions']}, at least 1; each version costs teacher time, and "
                        "these are all the degraded faces the student sees: the compile does not augment on the fly)")
    g.add_argument("--distill-init", default=None, metavar="DIR|default",
                   help="with --faces: start from this distilled student's weights instead of random ones "
                        "('default' = the embedded student; --student-arch may name a deeper variant of its "
                        "architecture), at half the learning rate: fine-tunes it to your photos rather than "
                        "starting over")
    g.add_argument("--distill-dir", type=Path, default=None,
                   help="where --faces distils (default ./fiqa-student-FACESNAME): kept, so re-running resumes "
                        "and --student DIR reuses it for other targets")
    g = ap.add_argument_group("quantisation")
    g.add_argument("--precision", choices=["int8", "fp32"], default="int8",
                   help="int8 (default): INT8 artifacts for the target; fp32: ship only the float ONNX (jetson-orin and "
                        "cpu only: the TFLite targets are full-INT8)")
    g.add_argument("--calibration", type=Path, default=None,
                   help="face folder for INT8 calibration (default: faces in photos that pip packages ship)")
    g.add_argument("--calibration-size", type=positive_int, default=400,
                   help=f"faces in the calibration set (default 400, at least {MIN_CALIBRATION_FACES})")
    g.add_argument("--calibration-method", choices=["auto", "minmax", "percentile", "entropy"], default="auto",
                   help="Q/DQ ONNX activation range selection (jetson-orin and cpu; the TFLite targets use the "
                        "converter's histogram observers); auto (default) tries each on calibration-pool faces "
                        "outside the calibration set and keeps the one whose INT8 ranking agrees best with fp32")
    g.add_argument("--keep-head-float", action="store_true", help="keep the final score head in float (Q/DQ ONNX targets: jetson-orin, cpu)")
    g.add_argument("--mirror-average", action=argparse.BooleanOptionalAction, default=None,
                   help="score each face as the mean over it and its mirror image, two passes of the student "
                        "(default: as the student learnt: on for a --faces distillation and for students trained "
                        "on the mirror mean, off for one-pass students such as the embedded one)")
    g = ap.add_argument_group("verification")
    g.add_argument("--min-srcc-fp32", type=correlation, default=0.98,
                   help="fail if an INT8 artifact ranks faces differently from the fp32 student (default 0.98; -1: off)")
    g.add_argument("--min-srcc-teacher", type=correlation, default=0.80,
                   help="fail if an artifact ranks faces differently from the teachers (default 0.80; -1: off)")
    g = ap.add_argument_group("gate thresholds (the manifest's 'thresholds')")
    g.add_argument("--gate-target", default=None, metavar="reject=R|fnmr=F",
                   help="choose the thresholds from a deployment target on the student's calibrated utility scale: "
                        "reject=R, the share of undegraded captures the gate may reject (its per-photo verdict with "
                        "the default size, pose, exposure and sharpness checks; e.g. reject=0.2); "
                        "fnmr=F, the FNMR at FMR 1e-3 needed among pairs of kept faces, mean of the scale's FR "
                        "models (fnmr:dlib=F or fnmr:mobilefacenet=F for one). Default for a student with a scale: "
                        f"{DEFAULT_GATE_TARGET} (the report lists what other thresholds would give); without one, the "
                        "thresholds that best separate clean from degraded verification faces (Youden's J)")
    g.add_argument("--gate", action="append", default=[], metavar="KEY=VALUE",
                   help="set a threshold yourself, after the target (repeatable; e.g. --gate utility_accept=80; "
                        "'off' disables a check; keys: fiqa_sdk.GateConfig). A site can still override any of them "
                        "when it runs: fiqa-score / CaptureGate --gate")
    ap.add_argument("--seed", type=int, default=0, help="seed of the degradations, the distillation and the calibration-set choice (default 0)")
    ap.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch (default: all)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from fiqa_compile.compiler import CompileOptions, compile_bundle
    from fiqa_compile.errors import CompileError
    from fiqa_compile.teachers import TeacherError

    if args.faces is not None and args.student is not None:
        print("fiqa-compile: error: --faces distils a new student; do not also pass --student", file=sys.stderr)
        return 2
    for flag in DISTILL_ONLY:
        if getattr(args, flag) is not None and args.faces is None:
            print(f"fiqa-compile: error: --{flag.replace('_', '-')} only applies with --faces", file=sys.stderr)
            return 2
    for flag, default in DISTILL_DEFAULTS.items():
        if getattr(args, flag) is None:
            setattr(args, flag, default)
    if args.calibration_size < MIN_CALIBRATION_FACES:
        print(f"fiqa-compile: error: --calibration-size {args.calibration_size}: an INT8 calibration set needs at "
              f"least {MIN_CALIBRATION_FACES} faces (fewer let single images set the ranges)", file=sys.stderr)
        return 2
    opts = CompileOptions(**{k: v for k, v in vars(args).items()})
    try:
        compile_bundle(opts)
    except (CompileError, TeacherError, OSError, ValueError) as e:  # OSError: unreadable input, full disk
        print(f"fiqa-compile: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

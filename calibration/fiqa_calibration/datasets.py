"""Face photo collections with identity labels: a folder per person, or the photos pip packages ship.

Every listing is sorted, so the same folder gives the same order (and the same splits) on every machine.
Splits are by identity because quality labels and verification checks computed on one person's photos
must never leak into the other side: a person seen in calibration is not an unseen test face.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from fiqa_sdk.samples import SAMPLES, SampleUnavailable, sample_path

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})

# calibration/fiqa_calibration/datasets.py -> the repository root (editable installs and checkouts).
_REPO_ROOT = Path(__file__).resolve().parents[2]


class FaceDataset(Sequence):
    """An ordered list of ``(path, identity)`` pairs."""

    def __init__(self, items: Sequence[tuple[Path, str]], name: str = "faces"):
        self.items: list[tuple[Path, str]] = [(Path(p), str(i)) for p, i in items]
        self.name = name

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index):  # type: ignore[override]
        return self.items[index]

    def __iter__(self) -> Iterator[tuple[Path, str]]:
        return iter(self.items)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self)} images, {len(self.identities)} identities)"

    @property
    def paths(self) -> list[Path]:
        return [p for p, _ in self.items]

    @property
    def identities(self) -> list[str]:
        """Sorted distinct identities."""
        return sorted({i for _, i in self.items})

    @property
    def by_identity(self) -> dict[str, list[Path]]:
        """identity -> its image paths, in dataset order."""
        out: dict[str, list[Path]] = {}
        for p, i in self.items:
            out.setdefault(i, []).append(p)
        return out

    def identity_disjoint_split(self, fraction: float = 0.2, seed: int = 0) -> tuple["FaceDataset", "FaceDataset"]:
        """Split into ``(rest, held_out)`` with no person on both sides.

        ``held_out`` gets ``round(fraction * identities)`` identities (at least one, and at least one is left
        for ``rest``), chosen by a seeded shuffle of the sorted identity list: same seed, same split.
        """
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"fraction must be strictly between 0 and 1, got {fraction}")
        ids = self.identities
        if len(ids) < 2:
            raise ValueError(f"{self!r} has {len(ids)} identity; an identity-disjoint split needs at least 2")
        n_held = min(len(ids) - 1, max(1, round(fraction * len(ids))))
        order = np.random.default_rng(seed).permutation(len(ids))
        held = {ids[k] for k in order[:n_held]}
        rest_items = [(p, i) for p, i in self.items if i not in held]
        held_items = [(p, i) for p, i in self.items if i in held]
        return (FaceDataset(rest_items, f"{self.name}[rest seed={seed}]"),
                FaceDataset(held_items, f"{self.name}[held-out {fraction:g} seed={seed}]"))


class FaceFolder(FaceDataset):
    """``root/<identity>/<image>``: the folder name is the identity (the LFW layout).

    Only files with an image extension (case-insensitive) directly inside each identity folder count;
    hidden files and other files are ignored. Identity folders holding no image are skipped.
    """

    def __init__(self, root: str | os.PathLike, extensions: frozenset[str] = IMAGE_EXTENSIONS):
        root = Path(root).expanduser()
        if not root.exists():
            raise FileNotFoundError(f"face folder {root} does not exist")
        if not root.is_dir():
            raise NotADirectoryError(f"face folder {root} is a file; pass the folder that holds one "
                                     "sub-folder per person")
        exts = {e.lower() for e in extensions}
        items: list[tuple[Path, str]] = []
        loose = 0
        for entry in sorted(os.scandir(root), key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                for f in sorted(os.scandir(entry.path), key=lambda e: e.name):
                    if f.is_file() and not f.name.startswith(".") and Path(f.name).suffix.lower() in exts:
                        items.append((Path(f.path), entry.name))
            elif Path(entry.name).suffix.lower() in exts:
                loose += 1
        if not items:
            hint = (f" ({loose} images lie directly in it: move each into a sub-folder named after the person)"
                    if loose else "")
            raise ValueError(f"face folder {root} holds no images in the layout <root>/<identity>/<image> with "
                             f"extensions {sorted(exts)}{hint}")
        super().__init__(items, name=str(root))
        self.root = root


HELD_OUT_SHARE = 0.15  # the people every embedded model was kept away from (teachers, students, calibration)
SPLIT_SEED = 0


def held_out_people(identities, share: float = HELD_OUT_SHARE, seed: int = SPLIT_SEED) -> set:
    """The project's held-out people: ``round(share * n)`` of the distinct ``identities``, a seeded draw.

    The same draw as the label sets' and distillations' split (``LabelSet.split``), so the default share and
    seed name people that no embedded teacher, student or calibration set has seen.
    """
    ids = np.unique(np.asarray(list(identities)))
    if len(ids) < 2:
        raise ValueError(f"{len(ids)} identity: an identity-disjoint split needs at least 2")
    return set(np.random.default_rng(seed).choice(ids, size=max(1, round(share * len(ids))), replace=False).tolist())


def find_lfw_dev() -> Path | None:
    """The development LFW subset: ``$FIQA_LFW_DEV`` if set, else ``../shared/data/lfw-dev`` beside the
    repository, else None (a user's install has no shared folder; callers must cope)."""
    env = os.environ.get("FIQA_LFW_DEV")
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise NotADirectoryError(f"FIQA_LFW_DEV={env!r} is not a folder; point it at lfw-dev or unset it")
        return path
    path = _REPO_ROOT.parent / "shared" / "data" / "lfw-dev"
    return path if path.is_dir() else None


class SampleFaces(FaceDataset):
    """The single-person photos that installed pip packages ship (see :mod:`fiqa_sdk.samples`), labelled
    with the person's name: a tiny real-face set for tests and demos when no face folder is around.

    Group photos (insightface's ``t1``) have no per-face identity and are not included.
    """

    def __init__(self) -> None:
        items, missing = [], []
        for name, info in SAMPLES.items():
            if info.person is None:
                continue
            try:
                items.append((sample_path(name), info.person))
            except SampleUnavailable as exc:
                missing.append(str(exc))
        if not items:
            raise SampleUnavailable("no sample face photos are installed: " + "; ".join(missing))
        super().__init__(items, name="sample-faces")

"""Face datasets: folder layout rules, determinism, identity-disjoint splits, the dev LFW and the samples."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

import fiqa_calibration.datasets as datasets
from fiqa_calibration import FaceDataset, FaceFolder, SampleFaces, find_lfw_dev
from fiqa_sdk.samples import SampleUnavailable


def _img(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix if path.suffix.lower() != ".jpeg" else ".jpg", np.zeros((4, 4, 3), np.uint8))
    assert ok
    path.write_bytes(buf.tobytes())


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for rel in ["Bob/b2.png", "Bob/b1.jpg", "alice/A.JPEG", "alice/a.webp", "Carol/c.bmp", "Dave/d.png"]:
        _img(tmp_path / rel)
    (tmp_path / "Bob" / "notes.txt").write_text("not an image")
    (tmp_path / "Bob" / ".hidden.jpg").write_bytes(b"")
    (tmp_path / "Empty").mkdir()
    (tmp_path / ".cache").mkdir()
    _img(tmp_path / ".cache" / "x.jpg")
    _img(tmp_path / "loose.jpg")  # no identity folder: ignored
    return tmp_path


def test_face_folder_lists_images_with_folder_identities_sorted(folder):
    ds = FaceFolder(folder)
    rel = [(p.relative_to(folder).as_posix(), i) for p, i in ds]
    assert rel == [("Bob/b1.jpg", "Bob"), ("Bob/b2.png", "Bob"), ("Carol/c.bmp", "Carol"), ("Dave/d.png", "Dave"),
                   ("alice/A.JPEG", "alice"), ("alice/a.webp", "alice")]
    assert len(ds) == 6 and ds[0][1] == "Bob"
    assert ds.identities == ["Bob", "Carol", "Dave", "alice"]
    assert {k: len(v) for k, v in ds.by_identity.items()} == {"Bob": 2, "Carol": 1, "Dave": 1, "alice": 2}
    assert FaceFolder(str(folder)).items == ds.items  # str paths work, and the listing is reproducible


def test_identity_disjoint_split_never_shares_a_person_and_is_seeded(folder):
    ds = FaceFolder(folder)
    rest, held = ds.identity_disjoint_split(0.5, seed=3)
    assert not set(rest.identities) & set(held.identities)
    assert len(rest) + len(held) == len(ds)
    assert sorted(rest.items + held.items) == sorted(ds.items)
    assert len(held.identities) == 2
    again = ds.identity_disjoint_split(0.5, seed=3)
    assert again[0].items == rest.items and again[1].items == held.items
    splits = {tuple(ds.identity_disjoint_split(0.5, seed=s)[1].identities) for s in range(20)}
    assert len(splits) > 1  # the seed matters


@pytest.mark.parametrize("fraction,expected_held", [(0.01, 1), (0.25, 1), (0.5, 2), (0.99, 3)])
def test_split_sizes_are_clamped_so_both_sides_have_someone(folder, fraction, expected_held):
    rest, held = FaceFolder(folder).identity_disjoint_split(fraction, seed=0)
    assert len(held.identities) == expected_held and len(rest.identities) == 4 - expected_held


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_rejects_fractions_outside_zero_one(folder, fraction):
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        FaceFolder(folder).identity_disjoint_split(fraction)


def test_split_needs_two_identities(tmp_path):
    _img(tmp_path / "Solo" / "a.jpg")
    _img(tmp_path / "Solo" / "b.jpg")
    with pytest.raises(ValueError, match="at least 2"):
        FaceFolder(tmp_path).identity_disjoint_split(0.5)


def test_bad_roots_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FaceFolder(tmp_path / "missing")
    f = tmp_path / "file.jpg"
    _img(f)
    with pytest.raises(NotADirectoryError, match="sub-folder per person"):
        FaceFolder(f)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        FaceFolder(empty)
    flat = tmp_path / "flat"
    _img(flat / "x.jpg")
    _img(flat / "y.png")
    with pytest.raises(ValueError, match="2 images lie directly in it"):
        FaceFolder(flat)


def test_find_lfw_dev_prefers_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("FIQA_LFW_DEV", str(tmp_path))
    assert find_lfw_dev() == tmp_path
    monkeypatch.setenv("FIQA_LFW_DEV", str(tmp_path / "nope"))
    with pytest.raises(NotADirectoryError, match="FIQA_LFW_DEV"):
        find_lfw_dev()


def test_find_lfw_dev_looks_beside_the_repository(tmp_path, monkeypatch):
    monkeypatch.delenv("FIQA_LFW_DEV", raising=False)
    repo = tmp_path / "repo"
    repo.mkdir()
    monkeypatch.setattr(datasets, "_REPO_ROOT", repo)
    assert find_lfw_dev() is None
    lfw = tmp_path / "shared" / "data" / "lfw-dev"
    lfw.mkdir(parents=True)
    assert find_lfw_dev() == lfw


def test_dev_lfw_when_present_is_identity_labelled_and_splits_cleanly(monkeypatch):
    monkeypatch.delenv("FIQA_LFW_DEV", raising=False)
    root = find_lfw_dev()
    if root is None:
        pytest.skip("../shared/data/lfw-dev is not beside this checkout (expected on a user's machine)")
    ds = FaceFolder(root)
    assert len(ds) > 1000 and len(ds.identities) > 500
    path, who = ds[0]
    assert path.parent.name == who and path.name.startswith(who)
    rest, held = ds.identity_disjoint_split(0.2, seed=0)
    assert not set(rest.identities) & set(held.identities)
    assert abs(len(held.identities) - 0.2 * len(ds.identities)) <= 1


def test_sample_faces_are_the_shipped_single_person_photos():
    ds = SampleFaces()
    assert ds.identities == ["Eileen_Collins", "Grace_Hopper", "Tom_Hanks"]
    for path, _ in ds:
        assert path.is_file() and cv2.imread(str(path)) is not None
    rest, held = ds.identity_disjoint_split(0.34, seed=0)
    assert len(held) == 1 and len(rest) == 2


def test_sample_faces_without_any_package_says_what_to_install(monkeypatch):
    def unavailable(name):
        raise SampleUnavailable(f"{name}: pip install something")

    monkeypatch.setattr(datasets, "sample_path", unavailable)
    with pytest.raises(SampleUnavailable, match="pip install"):
        SampleFaces()


def test_face_dataset_is_a_plain_sequence():
    ds = FaceDataset([("a/1.jpg", "a"), ("b/1.jpg", "b")], name="x")
    assert isinstance(ds[0][0], Path) and ds.paths == [Path("a/1.jpg"), Path("b/1.jpg")]
    assert "2 images, 2 identities" in repr(ds)


# ---- the shipped sample photos (fiqa_sdk.samples) ------------------------------------------------------

def test_sample_images_finds_all_four_photos_and_decodes_them():
    from fiqa_sdk import load_sample, sample_images

    found = sample_images()
    assert sorted(found) == ["astronaut", "grace_hopper", "t1", "tom_hanks"]
    shapes = {name: load_sample(name).shape for name in found}
    assert shapes == {"t1": (886, 1280, 3), "tom_hanks": (112, 112, 3), "grace_hopper": (600, 512, 3),
                      "astronaut": (512, 512, 3)}


def test_missing_sample_package_names_the_pip_command(monkeypatch):
    import importlib.util

    from fiqa_sdk import load_sample, sample_images

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "insightface" else real(name, *a, **k))
    with pytest.raises(SampleUnavailable, match="pip install --no-deps insightface==2.1"):
        load_sample("t1")
    assert sorted(sample_images()) == ["astronaut", "grace_hopper"]
    with pytest.raises(KeyError, match="unknown sample 'lena'"):
        load_sample("lena")

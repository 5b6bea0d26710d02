"""End to end on real photos: measure labels, train both small teachers (with resume), distil a student.

The face folder is built from photos that pip packages ship (no ../shared needed): every face of the
insightface group photo and the portraits becomes one identity with two different "photos" of it.
"""
from __future__ import annotations

import dataclasses
import json
import shutil

import cv2
import numpy as np
import pytest
import torch

from fiqa_sdk import create_detector, load_sample

SOURCES = ("t1", "grace_hopper", "tom_hanks", "astronaut")


@pytest.fixture(scope="module")
def face_folder(tmp_path_factory):
    """identity/<a,b>.jpg: a face-centred region of a sample photo, and a shifted, rescaled, mirrored one."""
    root = tmp_path_factory.mktemp("faces")
    det = create_detector("retinaface")
    n = 0
    for name in SOURCES:
        img = load_sample(name)
        for k, d in enumerate(det(img)):
            cx, cy = (d.box[:2] + d.box[2:]) / 2
            half = 1.1 * max(d.width, d.height)
            for variant, (shift, zoom, flip) in enumerate([(0.0, 1.0, False), (0.12, 0.85, True)]):
                x0, y0 = int(cx - half * zoom + shift * half), int(cy - half * zoom)
                x1, y1 = int(cx + half * zoom + shift * half), int(cy + half * zoom)
                pad = cv2.copyMakeBorder(img, 400, 400, 400, 400, cv2.BORDER_REFLECT)
                region = cv2.resize(pad[y0 + 400:y1 + 400, x0 + 400:x1 + 400], (250, 250), interpolation=cv2.INTER_AREA)
                if flip:
                    region = region[:, ::-1]
                (root / f"{name}_{k}").mkdir(exist_ok=True)
                cv2.imwrite(str(root / f"{name}_{k}" / f"{'ab'[variant]}.jpg"), region)
                n += 1
    assert n >= 16
    return root


@pytest.fixture(scope="module")
def label_dir(face_folder, tmp_path_factory):
    from fiqa_compile.labels.build import main

    out = tmp_path_factory.mktemp("labels")
    assert main(["--faces", str(face_folder), "--out", str(out), "--versions", "2", "--workers", "1",
                 "--shard-size", "8"]) == 0
    return out


def test_labels_are_measured_and_reproducible(label_dir, face_folder, tmp_path):
    from fiqa_compile.labels.build import main
    from fiqa_compile.train.data import LabelSet

    ls = LabelSet.load(label_dir)
    meta = json.loads((label_dir / "labels.json").read_text())
    assert meta["failures"] == [] and len(ls) == 3 * meta["photos"]
    clean, degraded = ls.version == 0, ls.version > 0
    assert np.all(ls.mos[clean] == 100.0) and np.all(ls.mos[degraded] < 100.0)
    assert np.isfinite(ls.cr).all()  # every identity has two photos, so every sample has a leave-one-out centre
    # The clean face is, on average, more useful to the FR model than its degraded versions.
    assert ls.cr[clean].mean() > ls.cr[degraded].mean()
    # Same command, same seed -> byte-identical labels (different shard size and a fresh directory).
    again = tmp_path / "again"
    assert main(["--faces", str(face_folder), "--out", str(again), "--versions", "2", "--workers", "1",
                 "--shard-size", "8"]) == 0
    assert json.loads((again / "labels.json").read_text())["labels_npz_sha256"] == meta["labels_npz_sha256"]


def test_label_settings_change_is_refused(label_dir, face_folder, tmp_path, capsys):
    from fiqa_compile.labels.build import main

    with pytest.raises(SystemExit):
        main(["--faces", str(face_folder), "--out", str(label_dir), "--versions", "3", "--workers", "1"])
    assert "other settings" in capsys.readouterr().err  # each refusal says why, read after each call
    # the folder is part of the settings: another one's photos are never filed under these shards
    assert json.loads((label_dir / "settings.json").read_text())["faces"] == str(face_folder.resolve())
    other = tmp_path / "other"
    shutil.copytree(face_folder, other)
    with pytest.raises(SystemExit):
        main(["--faces", str(other), "--out", str(label_dir), "--workers", "1"])
    assert "other settings" in capsys.readouterr().err


def test_labels_of_a_folder_without_faces_is_an_error(tmp_path, capsys):
    from fiqa_compile.labels.build import main

    rng = np.random.default_rng(0)
    (tmp_path / "faces" / "someone").mkdir(parents=True)
    for i in range(2):
        cv2.imwrite(str(tmp_path / "faces" / "someone" / f"{i}.png"), rng.integers(0, 256, (200, 200, 3), np.uint8))
    assert main(["--faces", str(tmp_path / "faces"), "--out", str(tmp_path / "labels"), "--workers", "1"]) == 2
    assert "no face was found in any of the 2 photos" in capsys.readouterr().err


@pytest.fixture(scope="module")
def teachers(label_dir, tmp_path_factory):
    from fiqa_compile.train.teacher import main

    root = tmp_path_factory.mktemp("teachers")
    common = ["--labels", str(label_dir), "--batch-size", "8", "--warmup-steps", "2", "--held-out", "0.2",
              "--checkpoint-every", "1", "--threads", "1"]
    for task in ("utility", "perceptual"):
        assert main([task, "--out", str(root / task), "--epochs", "1", *common]) == 0
    return root


def test_teacher_run_resumes_and_exports(teachers, label_dir, capsys):
    from fiqa_compile.train.teacher import main

    info1 = json.loads((teachers / "utility" / "teacher.json").read_text())
    assert info1["complete"] and info1["trained_steps"] == info1["planned_steps"] > 0
    # A second epoch continues from last.pt instead of starting over.
    assert main(["utility", "--out", str(teachers / "utility"), "--epochs", "2", "--labels", str(label_dir),
                 "--batch-size", "8", "--warmup-steps", "2", "--held-out", "0.2", "--checkpoint-every", "1",
                 "--threads", "1"]) == 0
    assert f"resumed from {teachers / 'utility' / 'last.pt'} at step {info1['trained_steps']}" in capsys.readouterr().out
    info2 = json.loads((teachers / "utility" / "teacher.json").read_text())
    assert info2["trained_steps"] == 2 * info1["trained_steps"] and len(info2["history"]) == 2


def test_teacher_run_with_other_settings_is_refused(teachers, label_dir):
    from fiqa_compile.train.teacher import main

    with pytest.raises(SystemExit, match="other settings"):
        main(["utility", "--out", str(teachers / "utility"), "--labels", str(label_dir), "--lr", "0.5"])


def test_teacher_run_refuses_what_would_train_nothing_or_the_wrong_model(label_dir, tmp_path):
    from fiqa_compile.train.teacher import main

    with pytest.raises(SystemExit, match="do not fill one batch of --batch-size 100000"):
        main(["perceptual", "--labels", str(label_dir), "--out", str(tmp_path / "p"), "--batch-size", "100000"])
    assert not (tmp_path / "p" / "teacher.pt").exists()
    with pytest.raises(SystemExit, match="'dsl_fiqa_tiny' is not a utility teacher"):
        main(["utility", "--labels", str(label_dir), "--out", str(tmp_path / "u"), "--model", "dsl_fiqa_tiny"])
    with pytest.raises(SystemExit, match="no label set|labels.npz"):
        main(["utility", "--labels", str(tmp_path / "none"), "--out", str(tmp_path / "u")])


def test_teacher_loading_verifies_hash(teachers, tmp_path):
    import shutil

    from fiqa_compile.teachers import TeacherError, load_teacher

    t = load_teacher(teachers / "perceptual")
    crops = np.zeros((2, 112, 112, 3), np.uint8)
    assert t.score(crops).shape == (2,)
    bad = tmp_path / "bad"
    shutil.copytree(teachers / "perceptual", bad)
    state = torch.load(bad / "teacher.pt", weights_only=True)
    next(iter(state.values())).add_(1.0)
    torch.save(state, bad / "teacher.pt")
    with pytest.raises(TeacherError, match="sha256"):
        load_teacher(bad)


def _recipe(tmp_path, teachers, name: str = "recipe", **keys) -> str:
    """A recipe file for the small test runs: the test teachers, student_nano, batches of 8 (``keys`` add to it)."""
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"utility_teacher": str(teachers / "utility"),
                                "perceptual_teacher": str(teachers / "perceptual"), "student": "student_nano",
                                "batch_size": 8, "held_out": 0.2, **keys}))
    return str(path)


def test_distillation_learns_from_teacher_scores(teachers, label_dir, tmp_path):
    from fiqa_compile.distill import main

    out = tmp_path / "student"
    recipe = _recipe(tmp_path, teachers, description="a two-epoch nano student")
    assert main(["--crops", str(label_dir), "--out", str(out), "--recipe", recipe, "--epochs", "2",
                 "--threads", "1"]) == 0
    info = json.loads((out / "student.json").read_text())
    assert info["complete"] and [s["name"] for s in info["scores"]] == ["utility", "perceptual"]
    assert all(s["std"] > 0 and s["teacher_p01"] <= s["teacher_p99"] for s in info["scores"])
    assert set(info["held_out_srcc"]) == {"utility", "perceptual"}
    targets = np.load(out / "targets.npz")["targets"]
    assert targets.shape[1] == 2 and np.isfinite(targets).all()
    # the recipe is recorded with the run: what it said, and the command line's override in the config
    assert info["recipe"]["path"] == recipe and info["recipe"]["description"] == "a two-epoch nano student"
    assert info["recipe"]["content"]["student"] == "student_nano" and info["config"]["epochs"] == 2


def test_distillation_starts_from_an_earlier_student(teachers, label_dir, tmp_path):
    """--init: a new run starts from a distilled student's weights (recorded), not from random ones."""
    from fiqa_compile.student_store import load_student
    from fiqa_compile.distill import main

    common = ["--crops", str(label_dir), "--epochs", "1", "--threads", "1"]
    nano = _recipe(tmp_path, teachers)
    first = tmp_path / "first"
    assert main([*common, "--out", str(first), "--recipe", nano]) == 0
    # a learning rate of ~0 keeps the weights where --init put them
    again = tmp_path / "again"
    assert main([*common, "--out", str(again), "--recipe", _recipe(tmp_path, teachers, "x2", utility_weight=2),
                 "--init", str(first), "--lr", "1e-12"]) == 0
    start, start_info = load_student(first)
    end, info = load_student(again)
    assert info["init"]["sha256"] == start_info["sha256"] and info["config"]["utility_weight"] == 2.0
    w0, w1 = start.state_dict(), end.state_dict()
    convs = [k for k, v in w0.items() if k.endswith("weight") and v.ndim == 4]
    assert convs and all(torch.allclose(w0[k], w1[k], atol=1e-6) for k in convs)
    # without --init the same run starts elsewhere
    fresh = tmp_path / "fresh"
    assert main([*common, "--out", str(fresh), "--recipe", nano, "--lr", "1e-12"]) == 0
    w2 = load_student(fresh)[0].state_dict()
    assert not all(torch.allclose(w0[k], w2[k], atol=1e-6) for k in convs)
    assert "init" not in json.loads((fresh / "student.json").read_text())


def test_distillation_grows_a_student_into_its_deeper_variant(teachers, label_dir, tmp_path):
    """--init of a student_mfn for a student_mfn_deep recipe: its blocks are carried over, the grown-from recorded."""
    from fiqa_compile.student_store import load_student
    from fiqa_compile.distill import main

    common = ["--crops", str(label_dir), "--epochs", "1", "--threads", "1", "--lr", "1e-12"]
    first, deep = tmp_path / "first", tmp_path / "deep"
    assert main([*common, "--out", str(first),
                 "--recipe", _recipe(tmp_path, teachers, "mfn", student="student_mfn")]) == 0
    assert main([*common, "--out", str(deep), "--init", str(first),
                 "--recipe", _recipe(tmp_path, teachers, "deep", student="student_mfn_deep")]) == 0
    small, _ = load_student(first)
    grown, info = load_student(deep)
    assert info["student"] == "student_mfn_deep" and info["init"]["grown_from"] == "student_mfn"
    # student_mfn's stage 2 (blocks 3-5) keeps its place; its stage 3 (block 6) moves behind two added blocks
    w0, w1 = small.state_dict(), grown.state_dict()
    for a, b in ((0, 0), (5, 5), (6, 8), (9, 11)):
        assert torch.allclose(w0[f"blocks.{a}.expand.conv.weight"], w1[f"blocks.{b}.expand.conv.weight"], atol=1e-6)


def test_distillation_refuses_an_init_of_another_architecture(teachers, label_dir, tmp_path, capsys):
    from fiqa_compile.distill import main

    common = ["--crops", str(label_dir), "--epochs", "1", "--threads", "1"]
    nano = _recipe(tmp_path, teachers)
    first = tmp_path / "first"
    assert main([*common, "--out", str(first), "--recipe", nano]) == 0
    mfn = _recipe(tmp_path, teachers, "mfn", student="student_mfn")
    assert main([*common, "--out", str(tmp_path / "b"), "--recipe", mfn, "--init", str(first)]) == 2
    assert "is a student_nano, which cannot start the recipe's student = student_mfn" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()  # refused before any scoring or writing
    (first / "student.pt").write_bytes(b"not a checkpoint")
    assert main([*common, "--out", str(tmp_path / "c"), "--recipe", nano, "--init", str(first)]) == 2
    assert "sha256" in capsys.readouterr().err


def test_online_utility_teacher_matches_offline_scores(teachers, label_dir):
    from fiqa_compile.distill import OnlineUtilityTeacher, crops_from_labels
    from fiqa_compile.teachers import load_teacher
    from fiqa_compile.train.data import to_tensor

    t = load_teacher(teachers / "utility")
    crops = crops_from_labels(label_dir).crop[:6]
    online = OnlineUtilityTeacher(t, mean=0.5, std=0.01)
    x = to_tensor(crops)
    seen = online(x)
    np.testing.assert_allclose(seen.score.numpy() * 0.01 + 0.5, t.score(crops), rtol=0, atol=1e-6)
    head = t.model.head_qs[-1]
    assert seen.quality_features.shape == (6, head.in_features)
    # the features are what the teacher's last layer reads: its score is their linear read-out
    with torch.no_grad():
        read_out = head(seen.quality_features).squeeze(-1).numpy()
        tokens = t.model.forward_tokens(x)
        embedding = t.model(x).embedding
    np.testing.assert_allclose(read_out * t.std + t.mean, t.score(crops), atol=1e-5)
    # patch tokens laid out on the patch grid: row-major, the quality token dropped
    cfg = t.model.cfg
    assert seen.patch_tokens.shape == (6, cfg.dim, cfg.grid, cfg.grid)
    torch.testing.assert_close(seen.patch_tokens[:, :, 1, 2], tokens[:, 1 + cfg.grid + 2])
    torch.testing.assert_close(seen.embedding, embedding)
    online.close()  # detached: the teacher's later forward passes keep nothing
    t.score(crops)
    assert online._feat is None and online._tokens is None
    assert not t.model.head_qs[-1]._forward_hooks and not t.model.norm._forward_hooks


def test_weight_average_follows_the_model_with_a_ramped_decay():
    from fiqa_compile.distill import WeightAverage
    from fiqa_compile.models.registry import create_model

    model = create_model("student_nano")
    ema = WeightAverage(model, decay=0.9)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.blocks[0].expand.bn.num_batches_tracked.fill_(7)
    ema.update(model, step=0)  # ramp: decay min(0.9, 1/10) = 0.1
    k = "stem.0.conv.weight"
    torch.testing.assert_close(ema.state[k], start[k] + 0.9)
    assert int(ema.state["blocks.0.expand.bn.num_batches_tracked"]) == 7  # counters are copied, not averaged
    ema.update(model, step=1000)  # ramp over: decay 0.9
    torch.testing.assert_close(ema.state[k], start[k] + 0.9 + 0.1 * 0.1)
    averaged = ema.model_copy(model)
    torch.testing.assert_close(averaged.state_dict()[k], ema.state[k])
    torch.testing.assert_close(model.state_dict()[k], start[k] + 1.0)  # the trained model is untouched
    with pytest.raises(ValueError, match="ema decay"):
        WeightAverage(model, decay=1.0)


def test_distillation_with_hints_and_ema_saves_the_average_and_resumes(teachers, label_dir, tmp_path, capsys):
    """token_weight/embedding_weight add their hint heads to the checkpoint; ema saves averaged weights."""
    from fiqa_compile.student_store import load_student
    from fiqa_compile.distill import main

    out = tmp_path / "student"
    keys = {"token_weight": 1, "embedding_weight": 0.5, "ema": 0.9, "mixup": 0.5, "part_swap": 0.5}

    def run(*extra: str, **recipe_keys) -> int:
        return main(["--crops", str(label_dir), "--out", str(out), "--epochs", "2", "--threads", "1",
                     "--recipe", _recipe(tmp_path, teachers, **recipe_keys), *extra])

    assert run(**keys) == 0
    ck = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert {"hint", "token_hint", "embedding_hint", "ema"} <= set(ck)
    saved, info = load_student(out)
    for k, v in saved.state_dict().items():  # the saved student is the average, not the last weights
        torch.testing.assert_close(v, ck["ema"][k].to(v.dtype))
    assert any(not torch.equal(ck["model"][k], ck["ema"][k]) for k in ck["model"] if ck["model"][k].is_floating_point())
    assert info["config"]["token_weight"] == 1.0 and info["config"]["ema"] == 0.9 and info["config"]["mixup"] == 0.5
    assert info["config"]["part_swap"] == 0.5
    assert all("raw_srcc_utility" in h for h in info["history"])
    # a rerun of a finished run resumes (nothing left to train); one without ema is refused, not mixed
    assert run(**keys) == 0
    assert "resumed distillation" in capsys.readouterr().out
    assert run(**{**keys, "ema": 0}) == 2
    assert "other hint/ema settings" in capsys.readouterr().err
    # other settings are refused too: the learning rate and the data would be mixed into the run
    assert run("--lr", "0.01", **keys) == 2
    assert "is a run with other settings (lr)" in capsys.readouterr().err
    assert run(**{**keys, "part_swap": 0}) == 2
    assert "is a run with other settings (part_swap)" in capsys.readouterr().err


def test_distill_refuses_a_file_as_out_and_a_teacher_of_the_other_role(tmp_path, capsys):
    from fiqa_compile.distill import main
    from fiqa_compile.teachers import embedded_teacher_dirs

    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["--crops", str(tmp_path / "no-labels"), "--out", str(afile)]) == 2
    assert "is a file" in capsys.readouterr().err and afile.read_text() == "x"
    swapped = tmp_path / "swapped.json"
    swapped.write_text(json.dumps({"utility_teacher": str(embedded_teacher_dirs()["perceptual"])}))
    assert main(["--crops", str(tmp_path / "no-labels"), "--out", str(tmp_path / "s"), "--recipe", str(swapped)]) == 2
    assert "is a perceptual teacher" in capsys.readouterr().err and not (tmp_path / "s").exists()


def test_distill_refuses_an_out_holding_a_finished_student_it_cannot_resume(tmp_path, capsys):
    """A bare student.pt (the embedded one, a copied one) is someone's result: fiqa-distill must not overwrite it."""
    from fiqa_compile.distill import DistillConfig, main

    out = tmp_path / "mine"
    out.mkdir()
    (out / "student.pt").write_bytes(b"weights")
    assert main(["--crops", str(tmp_path / "no-labels"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "would be overwritten" in err and f"--init {out}" in err
    assert (out / "student.pt").read_bytes() == b"weights" and sorted(p.name for p in out.iterdir()) == ["student.pt"]
    # augmentation's default follows online_utility rather than being dropped silently without it
    assert DistillConfig().augment == 0.5 and DistillConfig(online_utility=False).augment == 0.0


def test_every_distill_option_is_explained_in_help():
    from fiqa_compile.distill import build_parser

    unexplained = [a.option_strings[0] for a in build_parser()._actions if a.option_strings and not a.help]
    assert unexplained == []


def test_tta_views_are_shifted_and_mirrored_copies():
    from fiqa_compile.teachers import TTA_SHIFTS, tta_views

    crops = np.random.default_rng(0).integers(0, 255, (3, 112, 112, 3), dtype=np.uint8)
    views = tta_views(crops)
    assert len(views) == 2 * len(TTA_SHIFTS) and all(v.shape == crops.shape for v in views)
    np.testing.assert_array_equal(views[0], crops)
    np.testing.assert_array_equal(views[1], crops[:, :, ::-1])
    k = 2 * TTA_SHIFTS.index((2, 0))  # moved 2 px right: column x shows what was at x - 2
    np.testing.assert_array_equal(views[k][:, :, 2:], crops[:, :, :-2])
    k = 2 * TTA_SHIFTS.index((0, -2))  # moved 2 px up
    np.testing.assert_array_equal(views[k][:, :-2], crops[:, 2:])


def test_utility_teacher_view_mean_is_mirror_invariant(teachers, label_dir):
    from fiqa_compile.distill import crops_from_labels
    from fiqa_compile.teachers import load_teacher

    data = crops_from_labels(label_dir)
    crops, mirrored = data.crop[:8], np.ascontiguousarray(data.crop[:8, :, ::-1])
    utility = load_teacher(teachers / "utility")
    one_view = utility.score(crops)
    assert not np.allclose(one_view, utility.score(mirrored), atol=1e-6)  # one view is not mirror-invariant
    np.testing.assert_allclose(utility.score(crops, tta=True), utility.score(mirrored, tta=True), rtol=0, atol=1e-6)
    assert not np.allclose(utility.score(crops, tta=True), one_view, atol=1e-6)
    perceptual = load_teacher(teachers / "perceptual")  # averages its own crops: tta changes nothing
    np.testing.assert_array_equal(perceptual.score(crops, data.lm68[:8], tta=True),
                                  perceptual.score(crops, data.lm68[:8]))


def test_distillation_learns_the_view_mean_and_caches_it(teachers, label_dir, tmp_path):
    from fiqa_compile.distill import cached_tta_utility, crops_from_labels, main
    from fiqa_compile.teachers import load_teacher

    common = ["--crops", str(label_dir), "--epochs", "1", "--threads", "1"]
    tta, single = tmp_path / "tta", tmp_path / "single"
    assert main([*common, "--out", str(tta), "--recipe", _recipe(tmp_path, teachers)]) == 0
    assert main([*common, "--out", str(single), "--recipe", _recipe(tmp_path, teachers, "one", utility_tta=False)]) == 0
    data = crops_from_labels(label_dir)
    cached = np.load(tta / "utility_tta.npz")["utility_tta"]
    np.testing.assert_allclose(cached, load_teacher(teachers / "utility").score(data.crop, tta=True), atol=1e-6)
    assert not (single / "utility_tta.npz").exists()
    # the student's utility scale is that of the target it learned
    train = np.setdiff1d(np.arange(len(data)), np.load(tta / "held_out_rows.npy"))
    info = json.loads((tta / "student.json").read_text())
    assert info["config"]["utility_tta"] is True
    assert info["scores"][0]["mean"] == pytest.approx(float(cached[train].mean()), rel=1e-5)
    with pytest.raises(ValueError, match="belongs to another data set"):
        cached_tta_utility(None, crops_from_labels(label_dir), _truncated_copy(tta / "utility_tta.npz", tmp_path))


def test_distillation_with_mirror_average_trains_the_mirror_mean_and_old_runs_still_resume(teachers, label_dir, tmp_path):
    """mirror_average: the student learns the mean over a crop and its mirror image (what a mirror_average
    bundle scores), and a run written without the setting still resumes."""
    from fiqa_compile.distill import _predict, crops_from_labels, main
    from fiqa_compile.student_store import load_student

    mirror, one_pass = _recipe(tmp_path, teachers, "mirror", mirror_average=True), _recipe(tmp_path, teachers)
    common = ["--crops", str(label_dir), "--epochs", "1", "--threads", "1"]
    out = tmp_path / "mirror"
    assert main([*common, "--out", str(out), "--recipe", mirror]) == 0
    model, info = load_student(out)
    assert info["config"]["mirror_average"] is True
    data = crops_from_labels(label_dir)
    held = np.load(out / "held_out_rows.npy")
    both = _predict(model, data.crop[held], mirror_average=True)
    one, mirrored = _predict(model, data.crop[held]), _predict(model, np.ascontiguousarray(data.crop[held][:, :, ::-1]))
    np.testing.assert_allclose(both, (one + mirrored) / 2, atol=1e-5)
    # (the held-out SRCC is not compared exactly: a 1-epoch nano student's near-ties re-rank between the
    # channels-last training layout and a reloaded model)
    assert np.isfinite(info["held_out_srcc"]["utility"]) and len(info["history"]) == 1
    # a finished run without the setting re-runs (resumes) without tripping the settings check
    plain = tmp_path / "plain"
    assert main([*common, "--out", str(plain), "--recipe", one_pass]) == 0
    assert main([*common, "--out", str(plain), "--recipe", one_pass]) == 0
    assert main([*common, "--out", str(plain), "--recipe", mirror]) == 2  # another setting: refused, not mixed


def _truncated_copy(cache, tmp_path):
    out = tmp_path / "short.npz"
    np.savez(out, utility_tta=np.load(cache)["utility_tta"][:-1])
    return out


def test_cached_teacher_targets_refuse_another_data_set(teachers, label_dir, tmp_path):
    from fiqa_compile.distill import cached_teacher_targets, crops_from_labels
    from fiqa_compile.teachers import load_teacher

    data = crops_from_labels(label_dir)
    cache = tmp_path / "targets.npz"
    np.savez(cache, targets=np.zeros((len(data) + 1, 2), np.float32))
    pair = {k: load_teacher(teachers / k) for k in ("utility", "perceptual")}
    with pytest.raises(ValueError, match="belongs to another data set"):
        cached_teacher_targets(pair, data, cache)
    assert len(np.load(cache)["targets"]) == len(data) + 1
    # same size, other pixels or other teachers: the fingerprint tells them apart
    good = tmp_path / "good.npz"
    first = cached_teacher_targets(pair, data, good)
    np.testing.assert_array_equal(cached_teacher_targets(pair, data, good), first)
    mirrored = dataclasses.replace(data, crop=np.ascontiguousarray(data.crop[:, :, ::-1]))
    swapped = {"utility": pair["perceptual"], "perceptual": pair["utility"]}
    for other_data, other_pair in ((mirrored, pair), (data, swapped)):
        with pytest.raises(ValueError, match="other crops or other teachers"):
            cached_teacher_targets(other_pair, other_data, good)


def test_online_utility_refuses_a_teacher_without_quality_head(teachers):
    from fiqa_compile.distill import OnlineUtilityTeacher
    from fiqa_compile.teachers import load_teacher

    with pytest.raises(ValueError, match="set online_utility to false"):
        OnlineUtilityTeacher(load_teacher(teachers / "perceptual"), 0.0, 1.0)


def test_compile_with_faces_keeps_resumes_and_reuses_the_student(face_folder, teachers, tmp_path, capsys):
    """--faces distils into a kept directory: a rerun with other settings is refused, --student reuses it."""
    from fiqa_compile.cli import main

    sdir = tmp_path / "student"
    common = ["--target", "cpu", "--utility-teacher", str(teachers / "utility"), "--perceptual-teacher",
              str(teachers / "perceptual"), "--calibration-method", "minmax", "--calibration-size", "100",
              "--min-srcc-teacher", "-1", "--min-srcc-fp32", "-1", "--threads", "1"]
    assert main([*common, "--out", str(tmp_path / "b1"), "--faces", str(face_folder), "--student-arch",
                 "student_nano", "--distill-epochs", "1", "--distill-dir", str(sdir)]) == 0
    report = (tmp_path / "b1" / "report.md").read_text()
    assert "distilled now from" in report and str(sdir) in report
    assert "Calibrated on the pip-shipped group photo" in report and "--calibration DIR" in report  # no folder given
    # a handful of held-out people: the EDC is either not computed or marked as indicative only, never bare
    edc = json.loads((tmp_path / "b1" / "report.json").read_text())["edc"]
    assert edc["people"] < 20 and ("Indicative only" in report) != ("Not computed" in report)
    assert edc.get("indicative_only", False) == ("Indicative only" in report)  # absent when no curve was computed
    info = json.loads((sdir / "student.json").read_text())
    assert info["complete"] and info["student"] == "student_nano" and (sdir / "student.pt").exists()
    assert info["config"]["mirror_average"] is True  # it learns what the (mirror-averaged) bundle scores
    capsys.readouterr()

    assert main([*common, "--out", str(tmp_path / "b2"), "--faces", str(face_folder), "--student-arch",
                 "student_nano", "--distill-epochs", "2", "--distill-dir", str(sdir)]) == 2
    err = capsys.readouterr().err
    assert "other settings (epochs)" in err and "--distill-dir" in err
    # nor is one-pass scoring mixed into a distillation made for mirror-averaged bundles
    assert main([*common, "--out", str(tmp_path / "b2"), "--faces", str(face_folder), "--student-arch",
                 "student_nano", "--distill-epochs", "1", "--distill-dir", str(sdir), "--no-mirror-average"]) == 2
    assert "other settings (mirror_average)" in capsys.readouterr().err
    assert not (tmp_path / "b2").exists() and (sdir / "student.pt").exists()

    # a student stopped early (--max-minutes) is still usable, but the compile says so
    (sdir / "student.json").write_text(json.dumps({**info, "complete": False, "trained_steps": 1}))
    assert main([*common, "--out", str(tmp_path / "b3"), "--student", str(sdir)]) == 0
    manifest = json.loads((tmp_path / "b3" / "manifest.json").read_text())
    report = (tmp_path / "b3" / "report.md").read_text()
    assert manifest["target"] == "cpu" and f"given: {sdir} (INCOMPLETE: 1 of" in report
    assert "is incomplete" in capsys.readouterr().err

    # a gate the artifacts cannot meet fails the compile by name, and no bundle is left behind
    strict = ["--target", "cpu", "--precision", "fp32", "--utility-teacher", str(teachers / "utility"),
              "--perceptual-teacher", str(teachers / "perceptual"), "--threads", "1", "--student", str(sdir),
              "--min-srcc-teacher", "0.999", "--out", str(tmp_path / "b4")]
    assert main(strict) == 2
    err = capsys.readouterr().err
    assert "verification failed on 291 held-out faces" in err and "SRCC vs teacher" in err and "< 0.999" in err
    assert not (tmp_path / "b4").exists()

    # the other targets' branches of the compile
    import onnx

    from fiqa_compile.export.calibrators import read_trt_calibration_cache
    from fiqa_compile.export.tflite import score_output_range
    from fiqa_sdk import Scorer
    from fiqa_sdk.bundle import load_bundle

    face = load_sample("tom_hanks")  # already a 112x112 aligned crop
    base = ["--utility-teacher", str(teachers / "utility"), "--perceptual-teacher", str(teachers / "perceptual"),
            "--student", str(sdir), "--calibration-size", "100", "--threads", "1", "--min-srcc-teacher", "-1",
            "--min-srcc-fp32", "-1"]
    jetson = tmp_path / "jetson"
    assert main(["--target", "jetson-orin", "--calibration-method", "minmax", "--out", str(jetson), *base]) == 0
    manifest = json.loads((jetson / "manifest.json").read_text())
    assert [m["file"] for m in manifest["models"]] == ["student_qdq.onnx", "student_fp32.onnx"]
    assert manifest["tensorrt"]["onnx"] == "student_qdq.onnx"
    assert manifest["tensorrt"]["calibration_cache"] == "trt_calibration.cache"
    assert manifest["provenance"]["calibration"]["onnx_qdq"]["method"] == "minmax"
    assert manifest["mirror_average"] is True and manifest["schema_version"] == 2  # the default
    assert manifest["tensorrt"]["build"]["opt_batch"] == 2  # a face and its mirror
    assert "mean over each face and its mirror image" in (jetson / "report.md").read_text()
    cache = read_trt_calibration_cache(jetson / "trt_calibration.cache")  # for implicit INT8 from the fp32 ONNX
    fp32_tensors = {o for n in onnx.load(str(jetson / "student_fp32.onnx")).graph.node for o in n.output} | {"faces"}
    assert cache.algorithm == "EntropyCalibration2" and cache.scales and set(cache.scales) <= fp32_tensors
    assert all(np.isfinite(v) and v > 0 for v in cache.scales.values())
    assert load_bundle(jetson).tensorrt.calibration_cache == "trt_calibration.cache"
    assert np.isfinite(Scorer(jetson, backend="onnxruntime", detector=None).score(face).scores).all()

    phone = tmp_path / "phone"
    capsys.readouterr()
    assert main(["--target", "android-arm64", "--no-mirror-average", "--out", str(phone), *base]) == 0
    # the student learned the mirror mean (the compile's --faces default): one pass of it is shipped, with a warning
    assert "--no-mirror-average ships one pass of it" in capsys.readouterr().err
    manifest = json.loads((phone / "manifest.json").read_text())
    assert manifest["mirror_average"] is False and manifest["schema_version"] == 1
    assert [(m["file"], m["precision"]) for m in manifest["models"]] == [("student_int8.tflite", "int8")]
    assert manifest["tensorrt"] is None and not (phone / "trt_calibration.cache").exists()
    pinned = manifest["provenance"]["calibration"]["tflite_int8"]["output_range_z"]
    assert pinned == pytest.approx(list(score_output_range(info["scores"])))  # the student's span, not the faces'
    scorer = Scorer(phone, backend="litert", detector=None)
    assert scorer.info.precision == "int8" and not scorer.info.mirror_average and np.isfinite(scorer.score(face).scores).all()


def test_compile_with_faces_can_start_from_a_distilled_student(face_folder, teachers, tmp_path, capsys):
    """--distill-init: the --faces distillation fine-tunes a given student (recorded), at half the rate."""
    from fiqa_compile.cli import main
    from fiqa_compile.student_store import EMBEDDED_STUDENT

    common = ["--target", "cpu", "--utility-teacher", str(teachers / "utility"), "--perceptual-teacher",
              str(teachers / "perceptual"), "--calibration-method", "minmax", "--calibration-size", "100",
              "--min-srcc-teacher", "-1", "--min-srcc-fp32", "-1", "--threads", "1", "--distill-epochs", "1"]
    first, second = tmp_path / "first", tmp_path / "second"
    assert main([*common, "--out", str(tmp_path / "b1"), "--faces", str(face_folder), "--distill-dir", str(first),
                 "--student-arch", "student_nano"]) == 0
    # no --student-arch: the student starts as what --distill-init holds (a student_nano, not the default mfn)
    assert main([*common, "--out", str(tmp_path / "b2"), "--faces", str(face_folder), "--distill-dir", str(second),
                 "--distill-init", str(first)]) == 0
    start = json.loads((first / "student.json").read_text())
    info = json.loads((second / "student.json").read_text())
    assert info["student"] == "student_nano" == start["student"]
    assert info["init"]["sha256"] == start["sha256"] and info["init"]["path"] == str(first)
    assert info["config"]["lr"] == start["config"]["lr"] / 2
    assert json.loads((second / "settings.json").read_text())["init"] == start["sha256"]
    assert f"starting from the student in {first}" in (tmp_path / "b2" / "report.md").read_text()
    capsys.readouterr()
    # the embedded student is a student_mfn(_deep): starting a student_nano from it is refused before any work
    embedded = json.loads((EMBEDDED_STUDENT / "student.json").read_text())["student"]
    assert main([*common, "--out", str(tmp_path / "b3"), "--faces", str(face_folder), "--distill-dir",
                 str(tmp_path / "third"), "--distill-init", "default", "--student-arch", "student_nano"]) == 2
    err = capsys.readouterr().err
    assert f"--distill-init {EMBEDDED_STUDENT} is a {embedded}, which cannot start" in err and "--student-arch" in err
    assert not (tmp_path / "b3").exists()
    assert main(["--target", "cpu", "--distill-init", "default", "--out", str(tmp_path / "b4")]) == 2
    assert "--distill-init only applies with --faces" in capsys.readouterr().err

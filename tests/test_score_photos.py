"""fiqa-score: the gate's verdict on the faces of still photos, with the default bundle on shipped sample photos."""
from __future__ import annotations

import csv
import json
import re

import cv2
import numpy as np
import pytest

from fiqa_sdk import Scorer, load_sample
from fiqa_sdk.gate import CaptureGate
from fiqa_sdk.pipeline import face_observation, z_signs
from fiqa_sdk.score_photos import main


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    for name in ("t1", "grace_hopper", "astronaut"):
        cv2.imwrite(str(d / f"{name}.jpg"), load_sample(name))
    (d / "sub").mkdir()
    cv2.imwrite(str(d / "sub" / "blank.png"), np.full((200, 300, 3), 128, np.uint8))
    (d / "broken.jpg").write_bytes(b"not a jpeg")
    (d / "notes.txt").write_text("not a photo: ignored")
    return d


def test_every_photo_gets_a_row_and_the_verdicts_are_the_gates(photos, tmp_path, capsys):
    out_csv, out_json = tmp_path / "rows.csv", tmp_path / "rows.json"
    assert main([str(photos), "--backend", "onnxruntime", "--csv", str(out_csv), "--json", str(out_json)]) == 1
    stdout = capsys.readouterr().out
    assert "5 photos, 3 faces judged: " in stdout and "1 no_face" in stdout and "1 error" in stdout  # exit 1
    rows = list(csv.DictReader(out_csv.open()))
    by_image = {r["image"].split("/")[-1]: r for r in rows}
    assert set(by_image) == {"t1.jpg", "grace_hopper.jpg", "astronaut.jpg", "blank.png", "broken.jpg"}
    assert by_image["blank.png"]["verdict"] == "no_face" and by_image["broken.jpg"]["verdict"] == "error"
    assert "unreadable" in by_image["broken.jpg"]["reasons"]

    # each judged face's verdict is CaptureGate.assess on that face, recomputed here
    scorer = Scorer(backend="onnxruntime", detector="retinaface")
    gate = CaptureGate(scorer.bundle.gate_config())
    for name in ("t1", "grace_hopper", "astronaut"):
        image = cv2.imread(str(photos / f"{name}.jpg"))
        faces = scorer.score_frame(image)
        k = max(range(len(faces)), key=lambda i: faces[i].detection.size)  # the photo's subject
        decision = gate.assess(face_observation(faces[k], image, k, 0, 0.0, z_signs(scorer)))
        row = by_image[f"{name}.jpg"]
        assert row["verdict"] == ("accept" if decision.accepted else "reject")
        assert row["reasons"] == ";".join(r.value for r in decision.reasons)
        assert float(row["utility"]) == pytest.approx(faces[k].utility, abs=0.06)
    doc = json.loads(out_json.read_text())
    assert doc["bundle_id"] == scorer.info.bundle_id and len(doc["rows"]) == 5
    assert doc["gate"]["utility_accept"] == scorer.bundle.gate_config().utility_accept
    reasons = {r for row in rows for r in row["reasons"].split(";") if row["verdict"] == "reject"}
    assert reasons, "the sample photos should include rejected faces, so the reasons path is exercised"


def test_all_faces_sorted_best_first(photos, capsys):
    assert main([str(photos / "t1.jpg"), "--all-faces", "--sort", "utility", "--backend", "onnxruntime"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(str(photos))]
    utilities = [float(ln.split()[2]) for ln in lines]
    assert len(utilities) == 6 and utilities == sorted(utilities, reverse=True)


def test_assess_leaves_the_gate_state_alone(photos):
    scorer = Scorer(backend="onnxruntime", detector="retinaface")
    gate = CaptureGate(scorer.bundle.gate_config())
    image = cv2.imread(str(photos / "grace_hopper.jpg"))
    face = scorer.score_frame(image)[0]
    obs = face_observation(face, image, 1, 0, 0.0, z_signs(scorer))
    first = gate.assess(obs)
    assert gate.open_windows == {}  # no window opened, no track remembered, no cooldown started
    again = gate.assess(obs)
    assert (again.accepted, again.reasons) == (first.accepted, first.reasons)
    step = gate.update([obs], 0.0)  # the stateful path still starts from scratch: the face opens a window
    assert step.decisions == [] and gate.open_windows == {1: 1}


def test_bad_arguments_are_refused_without_touching_files(photos, tmp_path, capsys):
    mine = tmp_path / "mine.csv"
    mine.write_text("keep me")
    with pytest.raises(SystemExit) as e:
        main([str(photos), "--csv", str(mine)])
    assert e.value.code == 2 and "pass --force" in capsys.readouterr().err and mine.read_text() == "keep me"
    assert main([str(tmp_path / "missing")]) == 2
    assert "is neither a photo nor a folder" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 2
    assert "no photos found" in capsys.readouterr().err


def test_gate_overrides_change_the_verdicts_and_bad_ones_are_refused(photos, tmp_path, capsys):
    from fiqa_sdk.gate import parse_overrides

    assert parse_overrides(["utility_accept=70", "max_yaw_deg=off", "window_frames=5"]) == \
        {"utility_accept": 70.0, "max_yaw_deg": None, "window_frames": 5}
    for bad, why in ((["utility_acept=70"], "unknown gate key 'utility_acept'"), (["utility_accept"], "KEY=VALUE"),
                     (["min_iod_px=big"], "is not a number")):
        with pytest.raises(ValueError, match=why):
            parse_overrides(bad)
    t1 = str(photos / "t1.jpg")
    assert main([t1, "--all-faces", "--backend", "onnxruntime"]) == 0
    judged = re.search(r"6 faces judged: (?:\d accept, )?(\d) reject", capsys.readouterr().out)
    assert judged and int(judged[1]) >= 3  # the group photo's small, turned faces: most fail the bundle's checks
    off = [f"--gate={k}=off" for k in ("utility_accept", "perceptual_accept", "max_yaw_deg", "max_pitch_deg",
                                       "max_roll_deg", "min_iod_px", "max_outside_fraction", "min_sharpness",
                                       "min_brightness", "max_brightness", "explain_blur_below",
                                       "explain_dark_below", "explain_bright_above")]
    out_json = tmp_path / "open.json"
    assert main([t1, "--all-faces", "--backend", "onnxruntime", "--json", str(out_json), *off]) == 0
    assert "6 accept" in capsys.readouterr().out  # every check off: nothing left to reject for
    assert json.loads(out_json.read_text())["gate_overrides"]["utility_accept"] is None
    with pytest.raises(SystemExit):
        main([t1, "--gate", "utility_acept=70"])
    assert "unknown gate key" in capsys.readouterr().err
    assert main([t1, "--gate", "utility_release=99", "--backend", "onnxruntime"]) == 2  # above the accept
    assert "utility_release=99.0 must be <= utility_accept" in capsys.readouterr().err
    # lowering an accept alone moves its release along (the bundle's gap kept), as the README's example does
    scorer = Scorer(backend="onnxruntime", detector=None)
    base = scorer.bundle.gate_config()
    lowered = scorer.bundle.gate_config(utility_accept=base.utility_release - 5)
    assert lowered.utility_release == pytest.approx(base.utility_release - 5 - (base.utility_accept -
                                                                                 base.utility_release))
    assert main([t1, "--gate", f"utility_accept={base.utility_release - 5}", "--backend", "onnxruntime"]) == 0


def test_odd_inputs_each_get_their_row_once_and_outputs_are_never_clobbered(photos, tmp_path, capsys):
    odd = tmp_path / "odd"
    odd.mkdir()
    name = odd / "caf\udce9.jpg"  # not valid UTF-8 on disk: OpenCV's imread would crash on this name
    name.write_bytes((photos / "grace_hopper.jpg").read_bytes())
    (odd / "empty.png").write_bytes(b"")
    assert main([str(odd), str(name), "--sort", "utility", "--backend", "onnxruntime"]) == 1  # named twice: once
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith(str(odd))]
    assert len(lines) == 2 and "caf\\xe9.jpg" in lines[0] and lines[0].split()[4] in ("accept", "reject")
    assert lines[1].split()[1] == "error"  # rows without a score sort last
    assert "2 photos, 1 faces judged" in out
    same = tmp_path / "same.out"
    with pytest.raises(SystemExit):
        main([str(odd), "--csv", str(same), "--json", str(same)])
    assert "name the same file" in capsys.readouterr().err and not same.exists()
    with pytest.raises(SystemExit):
        main([str(odd), "--csv", str(tmp_path / "no-such-folder" / "x.csv")])
    assert "does not exist" in capsys.readouterr().err


def test_a_face_too_small_for_the_size_the_photo_was_searched_at_gets_a_max_side_hint(tmp_path, capsys):
    """A 4000x3000 photo is searched at 640 px; a face 34 px between the eyes (one the gate accepts at 28) is 5 px
    there and is not found. 'no_face' then says so and which --max-side finds it, and that one does."""
    face = cv2.resize(load_sample("grace_hopper"), None, fx=0.4, fy=0.4, interpolation=cv2.INTER_AREA)
    big = np.full((3000, 4000, 3), 90, np.uint8)
    big[1400:1400 + face.shape[0], 1900:1900 + face.shape[1]] = face
    cv2.imwrite(str(tmp_path / "big.jpg"), big)
    cv2.imwrite(str(tmp_path / "small_blank.png"), np.full((480, 640, 3), 90, np.uint8))
    out = tmp_path / "rows.json"
    main([str(tmp_path), "--backend", "onnxruntime", "--json", str(out)])
    rows = {r["image"].split("/")[-1]: r for r in json.loads(out.read_text())["rows"]}
    big_row, blank_row = rows["big.jpg"], rows["small_blank.png"]
    assert big_row["verdict"] == "no_face" and big_row["reasons"] == [
        "photo 4000x3000 was searched at 640 px (shrunk 6.25x), where a face under 56 px between the eyes may be too "
        "small to find: retry with --max-side 1312 (time grows with its square) or crop the photo to the person"]
    assert blank_row["verdict"] == "no_face" and blank_row["reasons"] == []  # seen at full size: it has no face
    capsys.readouterr()
    assert main([str(tmp_path / "big.jpg"), "--backend", "onnxruntime", "--max-side", "1312"]) == 0
    assert "1 photos, 1 faces judged" in capsys.readouterr().out

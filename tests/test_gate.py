"""CaptureGate: hysteresis, best-of-N windows, cooldown, reasons and their priority, config parsing."""
from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np
import pytest

from fiqa_sdk import align_face, create_detector, load_sample
from fiqa_sdk.measures import image_measures, landmark_measures
from fiqa_sdk.gate import Capture, CaptureGate, FaceObservation, GateConfig, GateDecision, Reason

GOOD_MEASURES = {"iod_px": 60.0, "yaw": 0.0, "pitch": 0.0, "roll": 0.0, "brightness": 128.0, "sharpness": 200.0}


def obs(track: int, frame: int, t: float, utility: float = 80.0, perceptual: float = 70.0,
        **measures: float) -> FaceObservation:
    return FaceObservation(track_id=track, frame_index=frame, timestamp=t, detection=None,
                           aligned_face=np.full((112, 112, 3), frame % 256, np.uint8),
                           scores={"utility": utility, "perceptual": perceptual},
                           measures={**GOOD_MEASURES, **measures})


def run(gate: CaptureGate, frames: list[list[FaceObservation]], times: list[float]):
    decisions: list[GateDecision] = []
    captures: list[Capture] = []
    for observations, t in zip(frames, times):
        step = gate.update(observations, t)
        decisions += step.decisions
        captures += step.captures
    step = gate.flush()
    return decisions + step.decisions, captures + step.captures


def by_frame(decisions):
    return {d.frame_index: d for d in decisions}


# -- hysteresis -------------------------------------------------------------------------------------------------------

def immediate(**kw) -> GateConfig:
    """Accept every good frame at once (window of one frame, no cooldown) to observe the band logic alone."""
    return GateConfig(window_frames=1, cooldown_s=0.0, **kw)


def accepted_flags(config: GateConfig, utilities: list[float]) -> list[bool]:
    gate = CaptureGate(config)
    frames = [[obs(1, i, i * 0.1, utility=u)] for i, u in enumerate(utilities)]
    decisions, _ = run(gate, frames, [i * 0.1 for i in range(len(utilities))])
    d = by_frame(decisions)
    assert len(d) == len(utilities)
    return [d[i].accepted for i in range(len(utilities))]


def test_hysteresis_enters_at_accept_and_leaves_below_release():
    seq = [65, 55, 55, 45, 55, 65]
    assert accepted_flags(immediate(utility_accept=60, utility_release=50), seq) == \
        [True, True, True, False, False, True]
    assert accepted_flags(immediate(utility_accept=60, utility_release=60), seq) == \
        [True, False, False, False, False, True]


def test_score_hovering_at_threshold_does_not_flicker():
    seq = [61, 59, 61, 59, 61, 59, 61, 59]
    with_band = accepted_flags(immediate(utility_accept=60, utility_release=50), seq)
    without = accepted_flags(immediate(utility_accept=60, utility_release=None), seq)
    assert with_band == [True] * 8
    assert without == [True, False] * 4


def test_hysteresis_state_is_per_track():
    gate = CaptureGate(immediate(utility_accept=60, utility_release=50))
    gate.update([obs(1, 0, 0.0, utility=70)], 0.0)
    step = gate.update([obs(1, 1, 0.1, utility=55), obs(2, 1, 0.1, utility=55)], 0.1)
    d = {x.track_id: x for x in step.decisions}
    assert d[1].accepted and not d[2].accepted
    assert d[2].reasons == (Reason.LOW_UTILITY,)


# -- best of N --------------------------------------------------------------------------------------------------------

def test_best_of_window_by_frame_count():
    gate = CaptureGate(GateConfig(window_frames=5, window_s=100.0))
    utilities = [70, 80, 75, 90, 85, 95]
    captures_at = []
    decisions = []
    for i, u in enumerate(utilities):
        step = gate.update([obs(1, i, i / 30, utility=u)], i / 30)
        decisions += step.decisions
        if step.captures:
            captures_at.append((i, [c.observation.frame_index for c in step.captures]))
    assert captures_at == [(4, [3])]  # closes on its 5th frame, keeps frame 3 (utility 90)
    d = by_frame(decisions)
    assert d[3].accepted and d[3].reasons == ()
    for f in (0, 1, 2, 4):
        assert d[f].reasons == (Reason.NOT_BEST_IN_WINDOW,) and not d[f].accepted
    assert d[5].reasons == (Reason.COOLDOWN,)  # one capture per track per 10 s by default
    step = gate.flush()
    assert step.decisions == [] and step.captures == []


def test_ties_on_utility_are_broken_by_perceptual():
    gate = CaptureGate(GateConfig(window_frames=3, window_s=100.0))
    frames = [[obs(1, 0, 0.0, 80, 60)], [obs(1, 1, 0.1, 80, 75)], [obs(1, 2, 0.2, 80, 65)]]
    _, captures = run(gate, frames, [0.0, 0.1, 0.2])
    assert [c.observation.frame_index for c in captures] == [1]
    assert captures[0].candidates == 3 and captures[0].window_start == 0.0


def at_100(frame: int, utility_z: float, perceptual_z: float = 1.0, iod_px: float = 60.0) -> FaceObservation:
    o = obs(1, frame, frame * 0.1, 100.0, 100.0, iod_px=iod_px)
    o.scores.update(utility_z=utility_z, perceptual_z=perceptual_z)
    return o


@pytest.mark.parametrize("frames, winner", [
    # 0-100 scores clip at 100: the raw z-scores tell the tied frames apart ...
    ([at_100(0, 1.2), at_100(1, 1.6), at_100(2, 1.4)], 1),
    ([at_100(0, 1.5, 0.9), at_100(1, 1.5, 1.3), at_100(2, 1.5, 1.1)], 1),
    # ... then the larger face wins, whatever its position in the window ...
    ([at_100(0, 1.5, iod_px=40), at_100(1, 1.5, iod_px=45), at_100(2, 1.5, iod_px=90)], 2),
    # ... and a missing or NaN z ranks below any real one ...
    ([at_100(0, math.nan, iod_px=90), at_100(1, 1.0), at_100(2, -3.0)], 1),
    # ... and utility's z outranks a perceptual score: utility is the primary score.
    ([at_100(0, 4.0), dataclasses.replace(at_100(1, 1.2), scores={"utility": 100.0, "perceptual": 80.1,
                                                                   "utility_z": 1.2})], 0),
])
def test_frames_tied_at_100_are_ranked_by_z_then_face_size(frames, winner):
    gate = CaptureGate(GateConfig(window_frames=len(frames), window_s=100.0))
    decisions, captures = run(gate, [[o] for o in frames], [o.timestamp for o in frames])
    assert [c.observation.frame_index for c in captures] == [winner]
    assert {d.frame_index for d in decisions if d.reasons == (Reason.NOT_BEST_IN_WINDOW,)} == \
        set(range(len(frames))) - {winner}


def test_window_closes_on_time_even_without_new_faces():
    gate = CaptureGate(GateConfig(window_s=0.5, window_frames=1000))
    for i in range(4):
        step = gate.update([obs(1, i, i * 0.1, utility=70 + i)], i * 0.1)
        assert step.captures == []
    assert gate.open_windows == {1: 4}
    assert gate.update([], 0.45).captures == []
    step = gate.update([], 0.5)
    assert [c.observation.frame_index for c in step.captures] == [3]
    assert gate.open_windows == {}


def test_track_end_closes_its_window_and_flush_closes_the_rest():
    gate = CaptureGate(GateConfig(window_s=10.0, window_frames=1000))
    gate.update([obs(1, 0, 0.0), obs(2, 0, 0.0)], 0.0)
    step = gate.update([], 0.1, ended=[1])
    assert [c.observation.track_id for c in step.captures] == [1]
    step = gate.flush()
    assert [c.observation.track_id for c in step.captures] == [2]


def test_rejected_frames_inside_a_window_do_not_displace_the_best():
    gate = CaptureGate(GateConfig(window_frames=3, window_s=100.0))
    frames = [[obs(1, 0, 0.0, 70)], [obs(1, 1, 0.1, 99, iod_px=10)], [obs(1, 2, 0.2, 75)]]
    decisions, captures = run(gate, frames, [0.0, 0.1, 0.2])
    assert [c.observation.frame_index for c in captures] == [2]
    assert by_frame(decisions)[1].reasons == (Reason.TOO_SMALL,)


# -- cooldown ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("max_accepts, expected", [(1, [0.0, 2.0, 4.0]), (2, [0.0, 0.5, 2.0, 2.5, 4.0, 4.5])])
def test_cooldown_limits_accepts_per_period(max_accepts, expected):
    gate = CaptureGate(GateConfig(window_frames=1, cooldown_s=2.0, max_accepts=max_accepts))
    times = [i * 0.5 for i in range(10)]
    decisions, captures = run(gate, [[obs(1, i, t)] for i, t in enumerate(times)], times)
    assert [c.observation.timestamp for c in captures] == expected
    for d in decisions:
        assert d.accepted == (d.timestamp in expected)
        if not d.accepted:
            assert d.reasons == (Reason.COOLDOWN,)


def test_cooldown_is_listed_after_quality_reasons():
    gate = CaptureGate(GateConfig(window_frames=1, cooldown_s=5.0))
    gate.update([obs(1, 0, 0.0)], 0.0)
    step = gate.update([obs(1, 1, 0.1, utility=10, yaw=80)], 0.1)
    assert step.decisions[0].reasons == (Reason.TURNED_AWAY, Reason.LOW_UTILITY, Reason.COOLDOWN)


# -- reasons ----------------------------------------------------------------------------------------------------------

def reasons_for(o: FaceObservation, **config) -> tuple[Reason, ...]:
    gate = CaptureGate(GateConfig(window_frames=1, cooldown_s=0.0, **config))
    step = gate.update([o], o.timestamp)
    assert len(step.decisions) == 1
    return step.decisions[0].reasons


@pytest.mark.parametrize("measures, scores, expected", [
    ({}, {}, ()),
    ({"iod_px": 20}, {}, (Reason.TOO_SMALL,)),
    ({"yaw": -50}, {}, (Reason.TURNED_AWAY,)),
    ({"pitch": -40}, {}, (Reason.TURNED_AWAY,)),
    ({"yaw": 39, "pitch": 34, "roll": -39}, {}, ()),
    ({"roll": 45}, {}, (Reason.TURNED_AWAY,)),
    ({"sharpness": 10}, {}, (Reason.BLURRED,)),
    ({"brightness": 30}, {}, (Reason.TOO_DARK,)),
    ({"brightness": 240}, {}, (Reason.TOO_BRIGHT,)),
    ({}, {"utility": 20}, (Reason.LOW_UTILITY,)),
    # A failing perceptual score is named by its cause when a measure shows one ...
    ({"brightness": 60}, {"perceptual": 20}, (Reason.TOO_DARK,)),
    ({"brightness": 200}, {"perceptual": 20}, (Reason.TOO_BRIGHT,)),
    ({"sharpness": 30}, {"perceptual": 20}, (Reason.BLURRED,)),
    ({"sharpness": 30, "brightness": 60}, {"perceptual": 20}, (Reason.BLURRED, Reason.TOO_DARK)),
    # ... and stays low_perceptual when none does (noise, compression, occlusion).
    ({}, {"perceptual": 20}, (Reason.LOW_PERCEPTUAL,)),
    # The explanation limits never reject a frame whose perceptual score is fine.
    ({"brightness": 60, "sharpness": 30}, {}, ()),
    ({"iod_px": 10, "yaw": 60, "brightness": 30}, {"utility": 5, "perceptual": 5},
     (Reason.TOO_SMALL, Reason.TURNED_AWAY, Reason.TOO_DARK, Reason.LOW_UTILITY)),
    # A face cut by the frame edge: part of its aligned crop is padding.
    ({"outside_fraction": 0.2}, {}, (Reason.AT_EDGE,)),
    ({"outside_fraction": 0.05}, {}, ()),
    ({"outside_fraction": 0.0}, {}, ()),
    ({"outside_fraction": 0.4, "iod_px": 10, "yaw": 60}, {}, (Reason.TOO_SMALL, Reason.AT_EDGE, Reason.TURNED_AWAY)),
])
def test_reason_rules_and_priority(measures, scores, expected):
    s = {"utility": 80.0, "perceptual": 70.0, **scores}
    o = obs(1, 0, 0.0, s["utility"], s["perceptual"], **measures)
    assert reasons_for(o) == expected


def test_default_limits_fit_real_measures_of_degraded_photos():
    """The default limits are in the units of fiqa_sdk.measures: a real portrait passes, and darkening or
    blurring it yields the matching reason (hard limit alone, or as the cause of a failing perceptual score)."""
    # Scaled so the eyes are ~38 px apart, as in the 112-px template: sharpness is then in LFW-like units.
    frame = cv2.resize(load_sample("grace_hopper"), None, fx=0.45, fy=0.45, interpolation=cv2.INTER_AREA)
    det = create_detector(max_side=320)(frame)[0]

    def observe(image, perceptual):
        aligned = align_face(image, det.landmarks)
        measures = {**image_measures(aligned), **landmark_measures(det.landmarks)}
        return FaceObservation(1, 0, 0.0, det, aligned, {"utility": 80.0, "perceptual": perceptual}, measures)

    dim = np.clip(frame * 0.45, 0, 255).astype(np.uint8)
    assert reasons_for(observe(frame, 70)) == ()
    assert reasons_for(observe(dim, 70)) == ()  # dim but scored fine: the explanation limit does not reject
    assert reasons_for(observe(dim, 20)) == (Reason.TOO_DARK,)
    assert reasons_for(observe(np.clip(frame * 0.2, 0, 255).astype(np.uint8), 70)) == (Reason.TOO_DARK,)
    soft = cv2.GaussianBlur(frame, (0, 0), 2.5)
    assert reasons_for(observe(soft, 70)) == ()
    assert reasons_for(observe(soft, 20)) == (Reason.BLURRED,)
    assert reasons_for(observe(cv2.GaussianBlur(frame, (0, 0), 4.0), 70)) == (Reason.BLURRED,)
    assert reasons_for(observe(frame, 20)) == (Reason.LOW_PERCEPTUAL,)


def test_decision_carries_scores_measures_and_serialises():
    o = obs(7, 3, 1.25, utility=20, brightness=30)
    step = CaptureGate(GateConfig(window_frames=1)).update([o], 1.25)
    d = step.decisions[0].to_dict()
    assert d["track_id"] == 7 and d["frame_index"] == 3 and d["timestamp"] == 1.25 and d["accepted"] is False
    assert d["reasons"] == ["too_dark", "low_utility"]
    assert d["scores"]["utility"] == 20 and d["measures"]["brightness"] == 30


def test_disabled_checks_need_no_inputs_and_enabled_ones_say_what_is_missing():
    o = FaceObservation(1, 0, 0.0, None, None, scores={"utility": 90.0}, measures={})
    config = dict(perceptual_accept=None, min_iod_px=None, max_yaw_deg=None,
                  max_pitch_deg=None, max_roll_deg=None, min_brightness=None, max_brightness=None,
                  min_sharpness=None)
    assert reasons_for(o, **config) == ()
    with pytest.raises(ValueError, match=r"scores\['perceptual'\].*perceptual_accept"):
        reasons_for(o, **{**config, "perceptual_accept": 50.0})
    with pytest.raises(ValueError, match=r"measures\['iod_px'\]"):
        reasons_for(o, **{**config, "min_iod_px": 20.0})
    with pytest.raises(ValueError, match="is nan"):
        reasons_for(obs(1, 0, 0.0, utility=math.nan))


def test_edge_check_can_be_disabled_and_rejects_a_non_finite_fraction():
    cut = obs(1, 0, 0.0, outside_fraction=0.9)
    assert reasons_for(cut) == (Reason.AT_EDGE,)
    assert reasons_for(cut, max_outside_fraction=None) == ()
    assert reasons_for(cut, max_outside_fraction=0.95) == ()
    # Observations built without the measure (the documented measures recipe lacks it) are not edge-checked.
    assert "outside_fraction" not in obs(1, 0, 0.0).measures and reasons_for(obs(1, 0, 0.0)) == ()
    with pytest.raises(ValueError, match=r"measures\['outside_fraction'\].*is nan"):
        reasons_for(obs(1, 0, 0.0, outside_fraction=math.nan))


def test_a_bad_observation_raises_before_the_gate_changes():
    """A non-finite score must not cost the capture of a window that was due to close in the same step."""
    gate = CaptureGate(GateConfig(window_s=1.0))
    gate.update([obs(1, 0, 0.0)], 0.0)
    with pytest.raises(ValueError, match=r"scores\['utility'\] of track 2 frame 30 is nan"):
        gate.update([obs(1, 30, 1.0), obs(2, 30, 1.0, utility=math.nan)], 1.0)
    assert gate.open_windows == {1: 1}  # not settled and dropped with the failed step
    step = gate.update([obs(1, 30, 1.0)], 1.0)
    assert [c.observation.frame_index for c in step.captures] == [0]
    assert by_frame(step.decisions)[30].reasons == (Reason.COOLDOWN,)


def test_a_failed_update_leaves_the_hysteresis_state_alone():
    gate = CaptureGate(immediate(utility_accept=60, utility_release=50))
    assert gate.update([obs(1, 0, 0.0, utility=70)], 0.0).decisions[0].accepted  # track 1 is in its band
    with pytest.raises(ValueError, match="is nan"):
        gate.update([obs(1, 1, 0.1, utility=45), obs(2, 1, 0.1, perceptual=math.nan)], 0.1)
    # Had the failed step dropped track 1 out of its band, 55 (below accept) would be rejected now.
    assert gate.update([obs(1, 2, 0.2, utility=55)], 0.2).decisions[0].accepted


def test_a_failed_update_does_not_move_the_gate_clock():
    gate = CaptureGate(immediate())
    gate.update([obs(1, 0, 0.0)], 0.0)
    with pytest.raises(ValueError, match="is nan"):
        gate.update([obs(1, 1, 5.0, utility=math.nan)], 5.0)
    gate.update([obs(1, 1, 4.0)], 4.0)  # the retry, with the frame's real time, is not "going backwards"


def test_every_observation_gets_exactly_one_decision_and_quota_holds():
    rng = np.random.default_rng(1)
    config = GateConfig(window_s=0.4, window_frames=6, max_accepts=2, cooldown_s=1.5)
    gate = CaptureGate(config)
    seen, decisions, captures = [], [], []
    t = 0.0
    live = {1, 2, 3}
    next_id = 4
    for frame in range(300):
        t += float(rng.uniform(0.02, 0.08))
        ended = []
        if rng.random() < 0.03:
            gone = int(rng.choice(sorted(live)))
            live.discard(gone)
            ended.append(gone)
            live.add(next_id)
            next_id += 1
        observations = []
        for tid in sorted(live):
            if rng.random() < 0.8:
                observations.append(obs(tid, frame, t, utility=float(rng.uniform(30, 100)),
                                        perceptual=float(rng.uniform(20, 100)),
                                        brightness=float(rng.uniform(20, 250)), yaw=float(rng.uniform(-50, 50))))
        seen += [(o.track_id, o.frame_index) for o in observations]
        step = gate.update(observations, t, ended=ended)
        decisions += step.decisions
        captures += step.captures
    step = gate.flush()
    decisions += step.decisions
    captures += step.captures
    keys = [(d.track_id, d.frame_index) for d in decisions]
    assert sorted(keys) == sorted(seen) and len(set(keys)) == len(keys)
    accepted = {(d.track_id, d.frame_index) for d in decisions if d.accepted}
    assert accepted == {(c.decision.track_id, c.decision.frame_index) for c in captures}
    assert len(captures) > 10
    for d in decisions:
        assert d.accepted == (d.reasons == ())
        assert list(d.reasons) == sorted(d.reasons, key=list(Reason).index)
    for tid in {c.decision.track_id for c in captures}:
        ts = sorted(c.decision.timestamp for c in captures if c.decision.track_id == tid)
        for i, t0 in enumerate(ts):
            assert sum(1 for x in ts if t0 <= x < t0 + config.cooldown_s) <= config.max_accepts


def test_update_validates_its_inputs():
    gate = CaptureGate()
    gate.update([], 1.0)
    with pytest.raises(ValueError, match="backwards"):
        gate.update([], 0.5)
    with pytest.raises(ValueError, match="share a track id"):
        gate.update([obs(1, 0, 2.0), obs(1, 0, 2.0)], 2.0)


def test_capture_image_prefers_crop():
    o = obs(1, 0, 0.0)
    d = GateDecision(1, 0, 0.0, True, (), {}, {})
    assert Capture(o, d, 0.0, 1).image is o.aligned_face
    o.crop = np.zeros((150, 120, 3), np.uint8)
    assert Capture(o, d, 0.0, 1).image.shape == (150, 120, 3)
    o.crop = o.aligned_face = None
    with pytest.raises(ValueError, match="neither crop nor aligned_face"):
        Capture(o, d, 0.0, 1).image


# -- config -----------------------------------------------------------------------------------------------------------

def test_config_from_manifest_and_overrides():
    manifest = {"bundle_id": "x", "thresholds": {"utility_accept": 70, "utility_release": 62, "perceptual_accept": 55}}
    c = GateConfig.from_manifest(manifest)
    assert (c.utility_accept, c.utility_release, c.perceptual_accept) == (70, 62, 55)
    assert c.perceptual_release == GateConfig().perceptual_release
    assert c.max_outside_fraction == 0.05  # a manifest older than the edge check gets the default
    c = GateConfig.from_manifest(manifest, utility_accept=80, cooldown_s=3.0)
    assert c.utility_accept == 80 and c.utility_release == 72 and c.cooldown_s == 3.0  # the bundle's gap of 8 kept
    c = GateConfig.from_manifest(manifest, utility_accept=50)  # below the bundle's release: no second override
    assert (c.utility_accept, c.utility_release) == (50, 42)
    c = GateConfig.from_manifest(manifest, utility_accept=80, utility_release=50)  # both given: as given
    assert (c.utility_accept, c.utility_release) == (80, 50)


@pytest.mark.parametrize("manifest, overrides, match", [
    ({}, {}, "no 'thresholds' section"),
    ({"thresholds": [1, 2]}, {}, "must be a mapping"),
    ({"thresholds": {"utility_acept": 70}}, {}, r"unknown manifest thresholds key\(s\) \['utility_acept'\]"),
    ({"thresholds": {}}, {"colldown_s": 1}, r"unknown overrides key"),
    ({"thresholds": {"utility_accept": "70"}}, {}, "finite number"),
    ({"thresholds": {"utility_accept": 50, "utility_release": 60}}, {}, "must be <= utility_accept"),
    ({"thresholds": {"utility_accept": 150}}, {}, "0-100"),
    ({"thresholds": {"window_frames": 0}}, {}, "integer >= 1"),
    ({"thresholds": {"cooldown_s": None}}, {}, "finite number, got None"),
    ({"thresholds": {"min_brightness": 200, "max_brightness": 100}}, {}, "must be below"),
    ({"thresholds": {"max_outside_fraction": 1.5}}, {}, "fraction of the aligned crop and must be <= 1"),
    ({"thresholds": {"max_outside_fraction": -0.1}}, {}, "must be >= 0"),
])
def test_config_rejects_bad_values(manifest, overrides, match):
    with pytest.raises(ValueError, match=match):
        GateConfig.from_manifest(manifest, **overrides)


@pytest.mark.parametrize("item, counts", [("window_frames=1.5", "frames"), ("max_accepts=two", "captures")])
def test_a_count_override_that_is_not_a_whole_number_says_it_must_be_one(item, counts, capsys):
    """``--gate window_frames=1.5`` was called "not a number"; 1.5 is a number, just not a count."""
    from fiqa_sdk.gate import parse_overrides
    from fiqa_sdk.score_photos import parse_args

    key, _, text = item.partition("=")
    why = rf"{key} counts {counts}, so it must be a whole number such as {key}=2, not '{text}'"
    with pytest.raises(ValueError, match=why):
        parse_overrides([item])
    with pytest.raises(SystemExit):
        parse_args(["photo.jpg", "--gate", item])
    err = capsys.readouterr().err
    assert "must be a whole number" in err and "is not a number" not in err
    assert parse_overrides([f"{key}=3"]) == {key: 3}


def test_check_timestamp_refuses_what_update_would_and_changes_nothing():
    gate = CaptureGate(GateConfig())
    gate.update([obs(1, 0, 2.0)], 2.0)
    for bad in (1.0, math.nan, math.inf, "3"):
        with pytest.raises(ValueError, match="went backwards" if bad == 1.0 else "finite number of seconds"):
            gate.check_timestamp(bad)
    gate.check_timestamp(2.0)  # equal times are allowed (two frames in one clock tick)
    gate.update([], 2.0)  # the refused checks did not move the gate's clock

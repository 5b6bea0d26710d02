"""DSL-FIQA teacher: authors' layout, MANIQA/Swin pieces, landmark guidance, crops, checkpoints, the DSL loss."""
from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fiqa_compile.models import create_model, get_config
from fiqa_compile.models.checkpoints import CheckpointMismatch
from fiqa_compile.models.degradation_encoder import (DegradationEncoder, DegradationEncoderConfig,
                                                     DualSetDegradationLoss, soft_proximity_map, synthetic_pairs,
                                                     two_random_crops)
from fiqa_compile.models.dsl_fiqa import (MEAN_LANDMARKS_68_ARCFACE112, DecoderAttention, DSLFIQA, DSLFIQAConfig,
                                          TABlock, WindowAttention, authors_state_dicts, eval_crop_boxes,
                                          landmark_index_code, landmarks_in_crops, load_dsl_fiqa_checkpoint,
                                          positional_encoding, relative_position_index, shifted_window_mask)

PAPER: DSLFIQAConfig = get_config("dsl_fiqa")
# The paper's layout (every authors-only tensor, shifted windows, 68 landmarks) at toy width and size.
SMALL_AUTHORS = replace(
    PAPER, input_size=40, face_size=40, img_size=32, patch_size=8, vit_dim=32, vit_depth=4, vit_heads=2,
    feature_blocks=(1, 2), embed_dim=16, swin_depths=(2,), swin_heads=(2,), window_size=2, dim_mlp=16,
    de_widths=(8, 8, 8, 8, 16, 16), de_token_grid=(2, 3), decoder_depth=2, decoder_heads=2,
    landmark_slots=68, landmark_freqs=2, landmark_hidden=16, vit_num_classes=10)


# ----------------------------------------------------------------------------------------------------------
# The authors' state_dict layout, written out from their models/iqa.py, swin.py, transformer_decoder.py
# and timm's VisionTransformer -- independently of our modules, so a wrong name or shape fails here.
# ----------------------------------------------------------------------------------------------------------

def authors_iqa_layout(c: DSLFIQAConfig) -> dict[str, tuple[int, ...]]:
    d, n, g, e, de = c.vit_dim, c.num_tokens, c.grid_size, c.embed_dim, c.de_widths[-1]
    out: dict[str, tuple[int, ...]] = {}

    def lin(name: str, i: int, o: int) -> None:
        out[f"{name}.weight"], out[f"{name}.bias"] = (o, i), (o,)

    def norm(name: str, dim: int) -> None:
        out[f"{name}.weight"], out[f"{name}.bias"] = (dim,), (dim,)

    def conv(name: str, i: int, o: int, k: int, groups: int = 1) -> None:
        out[f"{name}.weight"], out[f"{name}.bias"] = (o, i // groups, k, k), (o,)

    out["vit.cls_token"], out["vit.pos_embed"] = (1, 1, d), (1, n + 1, d)
    conv("vit.patch_embed.proj", 3, d, c.patch_size)
    for i in range(c.vit_depth):
        b = f"vit.blocks.{i}"
        norm(f"{b}.norm1", d), lin(f"{b}.attn.qkv", d, 3 * d), lin(f"{b}.attn.proj", d, d)
        norm(f"{b}.norm2", d), lin(f"{b}.mlp.fc1", d, 4 * d), lin(f"{b}.mlp.fc2", 4 * d, d)
    norm("vit.norm", d), lin("vit.head", d, c.vit_num_classes)
    for t in ("tablock1", "tablock2"):
        for i in range(c.num_tab):
            for q in ("c_q", "c_k", "c_v"):
                lin(f"{t}.{i}.{q}", n, n)
    conv("conv1", d * len(c.feature_blocks), e, 1)
    conv("conv2", e, e // 2, 1)
    ws = min(c.window_size, g)
    for s, dim in (("swintransformer1", e), ("swintransformer2", e // 2)):
        conv(f"{s}.downsample", dim, dim, 3)
        for li, (depth, heads) in enumerate(zip(c.swin_depths, c.swin_heads)):
            conv(f"{s}.layers.{li}.conv", dim, dim, 3)
            for bi in range(depth):
                b = f"{s}.layers.{li}.blocks.{bi}"
                norm(f"{b}.norm1", dim), norm(f"{b}.norm2", dim)
                out[f"{b}.attn.relative_position_bias_table"] = ((2 * ws - 1) ** 2, heads)
                out[f"{b}.attn.relative_position_index"] = (ws * ws, ws * ws)
                lin(f"{b}.attn.qkv", dim, 3 * dim), lin(f"{b}.attn.proj", dim, dim)
                lin(f"{b}.mlp.fc1", dim, c.dim_mlp), lin(f"{b}.mlp.fc2", c.dim_mlp, dim)
                if bi % 2 == 1 and g > ws:
                    out[f"{b}.attn_mask"] = ((g // ws) ** 2, ws * ws, ws * ws)
    for i in range(c.decoder_depth):
        b, h = f"decoder.{i}", int(de * c.decoder_mlp_ratio)
        norm(f"{b}.norm1", de), norm(f"{b}.norm2", de)
        out[f"{b}.attn.task_query"] = (1, 1, de)
        lin(f"{b}.attn.q", de, de), lin(f"{b}.attn.kv", de, 2 * de), lin(f"{b}.attn.proj", de, de)
        lin(f"{b}.mlp.fc1", de, h), conv(f"{b}.mlp.dwconv.dwconv", h, h, 3, groups=h), lin(f"{b}.mlp.fc2", h, de)
    conv("conv_decoder", e // 2, de, 1)
    lin("testmlp.0", de, de), lin("testmlp.3", de, de)
    lin("embed_mlp.0", c.landmark_slots * (1 + 2 * c.landmark_freqs), c.landmark_hidden)
    lin("embed_mlp.3", c.landmark_hidden, n)
    for head in ("fc_score", "fc_weight"):
        lin(f"{head}.0", de + 1, de + 1), lin(f"{head}.3", de + 1, 1)
    return out


def authors_de_layout(c: DSLFIQAConfig) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    c_in = 3
    for i, w in enumerate(c.de_widths):
        out[f"E.{3 * i}.weight"], out[f"E.{3 * i}.bias"] = (w, c_in, 3, 3), (w,)
        for s in ("weight", "bias", "running_mean", "running_var"):
            out[f"E.{3 * i + 1}.{s}"] = (w,)
        out[f"E.{3 * i + 1}.num_batches_tracked"] = ()
        c_in = w
    w = c.de_widths[-1]
    out["mlp.0.weight"], out["mlp.0.bias"], out["mlp.2.weight"], out["mlp.2.bias"] = (w, w), (w,), (w, w), (w,)
    return out


def _n_params(layout: dict[str, tuple[int, ...]]) -> int:
    buffers = ("relative_position_index", "attn_mask", "running_mean", "running_var", "num_batches_tracked")
    return sum(math.prod(s) for k, s in layout.items() if not k.endswith(buffers))


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Distinct values in every float tensor (BN stats too) so that a wrong or missing load shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point() and not name.endswith(("attn_mask", "relative_position_index")):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if "running_var" in name
                        else torch.randn(t.shape, generator=g) * 0.1)
    return model.eval()


# ----------------------------------------------------------------------------------------------------------
# Build, params, shapes
# ----------------------------------------------------------------------------------------------------------

def test_paper_model_matches_authors_layout_and_builds_on_meta() -> None:
    with torch.device("meta"):
        model = create_model("dsl_fiqa").eval()
        scores = model(torch.zeros(2, 3, 112, 112))                     # shapes only: 10 crops at 384
        tokens = model.iqa.token_features(torch.zeros(1, 3, 384, 384), torch.zeros(1, 96, 256))
    assert scores.shape == (2,) and tokens.shape == (1, 576, 256)
    ours_iqa = {k: tuple(v.shape) for k, v in model.iqa.state_dict().items()}
    ours_de = {k: tuple(v.shape) for k, v in model.degradation_encoder.state_dict().items()}
    assert ours_iqa == authors_iqa_layout(PAPER)
    assert ours_de == authors_de_layout(PAPER)
    assert ours_iqa["vit.pos_embed"] == (1, 577, 768) and ours_iqa["conv1.weight"] == (768, 3072, 1, 1)
    assert ours_iqa["embed_mlp.0.weight"] == (10500, 10500) and ours_iqa["fc_score.0.weight"] == (257, 257)
    assert sum(p.numel() for p in model.iqa.parameters()) == _n_params(authors_iqa_layout(PAPER))
    assert sum(p.numel() for p in model.degradation_encoder.parameters()) == _n_params(authors_de_layout(PAPER))


def test_tiny_config_is_small() -> None:
    with torch.device("meta"):
        model = create_model("dsl_fiqa_tiny")
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    assert model.cfg.input_shape == (3, 112, 112) and not model.cfg.authors_layout


def test_config_validation_names_the_problem() -> None:
    with pytest.raises(ValueError, match="window_size"):
        replace(PAPER, window_size=5)
    with pytest.raises(ValueError, match="landmark_slots"):
        replace(PAPER, landmark_slots=10)
    with pytest.raises(ValueError, match="feature_blocks"):
        replace(PAPER, feature_blocks=(6, 12))


# ----------------------------------------------------------------------------------------------------------
# Crops and landmark guidance
# ----------------------------------------------------------------------------------------------------------

def test_eval_crop_boxes() -> None:
    assert eval_crop_boxes(512, 384, 5) == [(0, 0), (0, 128), (64, 64), (128, 0), (128, 128)]
    assert eval_crop_boxes(512, 384, 1) == [(64, 64)]
    assert eval_crop_boxes(144, 128, 9) == [(t, l) for t in (0, 8, 16) for l in (0, 8, 16)]
    with pytest.raises(ValueError, match="num_eval_crops"):
        eval_crop_boxes(512, 384, 3)


def test_landmark_membership_and_code_hand_computed() -> None:
    lm = torch.full((1, 68, 2), 1000.0)               # everything far outside ...
    lm[0, 2] = torch.tensor([10.0, 20.0])             # ... but landmarks 2, 5 and 67
    lm[0, 5] = torch.tensor([30.0, 30.0])             # (5 and 67 on the inclusive border of the first crop)
    lm[0, 67] = torch.tensor([5.0, 30.0])
    inside = landmarks_in_crops(lm, [(0, 0), (25, 25)], crop_size=30)
    assert inside[0, 0].nonzero().flatten().tolist() == [2, 5, 67]
    assert inside[0, 1].nonzero().flatten().tolist() == [5]
    code = landmark_index_code(inside, slots=500)
    # sorted indices [2, 5, 67] then 69 (= 68 + 1) padding; min-max to [-1, 1] with the 1e-6 guard
    expect = [(v - 2) / (69 - 2 + 1e-6) * 2 - 1 for v in (2, 5, 67, 69)]
    assert code.shape == (1, 2, 500)
    torch.testing.assert_close(code[0, 0, :4], torch.tensor(expect), rtol=0, atol=1e-6)
    assert torch.all(code[0, 0, 3:] == code[0, 0, 3])
    assert code[0, 1, 0].item() == -1.0 and code[0, 1, 1].item() == pytest.approx(1.0, abs=1e-6)
    empty = landmark_index_code(torch.zeros(1, 68, dtype=torch.bool), slots=68)
    assert torch.all(empty == -1.0)


def test_positional_encoding_hand_computed() -> None:
    x = torch.tensor([[0.25, -0.5]])
    pe = positional_encoding(x, num_freqs=2)          # as released: no pi, input first, function-major
    s, c = math.sin, math.cos
    expect = [0.25, -0.5, s(0.25), s(-0.5), c(0.25), c(-0.5), s(0.5), s(-1.0), c(0.5), c(-1.0)]
    torch.testing.assert_close(pe, torch.tensor([expect]))
    pe_pi = positional_encoding(torch.tensor([[0.25]]), num_freqs=2, use_pi=True)
    r = math.sqrt(0.5)
    torch.testing.assert_close(pe_pi, torch.tensor([[0.25, r, r, 1.0, 0.0]]), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------------------------
# MANIQA / Swin / decoder pieces against direct formulas
# ----------------------------------------------------------------------------------------------------------

def test_shifted_window_mask_tiny_case() -> None:
    # 4x4 grid, 2x2 windows, shift 1: regions rows/cols [0,2) [2,3) [3,4) -> labels
    #   0 0 1 2 / 0 0 1 2 / 3 3 4 5 / 6 6 7 8 ; windows (row-major) hold labels
    #   [0 0 0 0], [1 2 1 2], [3 3 6 6], [4 5 7 8]
    m = shifted_window_mask(4, 4, 2, 1)
    assert m.shape == (4, 4, 4)
    labels = [[0, 0, 0, 0], [1, 2, 1, 2], [3, 3, 6, 6], [4, 5, 7, 8]]
    for w, lab in enumerate(labels):
        want = torch.tensor([[0.0 if a == b else -100.0 for b in lab] for a in lab])
        assert torch.equal(m[w], want), w
    idx = relative_position_index(2)
    assert idx.tolist() == [[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]]


def test_window_attention_equals_explicit_formula() -> None:
    torch.manual_seed(0)
    att = WindowAttention(dim=8, ws=2, num_heads=2).eval()
    x, mask = torch.randn(2 * 4, 4, 8), shifted_window_mask(4, 4, 2, 1)
    q, k, v = att.qkv(x).reshape(8, 4, 3, 2, 4).permute(2, 0, 3, 1, 4)
    logits = (q * 4 ** -0.5) @ k.transpose(-2, -1)
    bias = att.relative_position_bias_table[att.relative_position_index.view(-1)].view(4, 4, 2).permute(2, 0, 1)
    logits = (logits + bias).view(2, 4, 2, 4, 4) + mask[None, :, None]
    ref = att.proj((logits.softmax(-1).view(8, 2, 4, 4) @ v).transpose(1, 2).reshape(8, 4, 8))
    torch.testing.assert_close(att(x, 4, mask), ref)


def test_tablock_keeps_maniqa_reshape() -> None:
    torch.manual_seed(0)
    tab = TABlock(num_tokens=6, drop=0.0).eval()
    x = torch.randn(2, 3, 6)
    attn = torch.softmax(tab.c_q(x) @ tab.c_k(x).transpose(1, 2) / math.sqrt(6), dim=-1)
    ref = (attn @ tab.c_v(x)).transpose(1, 2).reshape(2, 3, 6) + x
    torch.testing.assert_close(tab(x), ref)


def test_decoder_queries_stretch_like_nearest_interpolation() -> None:
    torch.manual_seed(0)
    att = DecoderAttention(dim=8, num_heads=2, drop=0.0, authors_layout=True).eval()
    x, queries = torch.randn(2, 10, 8), torch.randn(2, 4, 8)          # 4 degradation tokens -> 10 image tokens
    q = att.q(queries).reshape(2, 4, 2, 4).permute(0, 2, 1, 3)
    q = F.interpolate(q, size=(10, 4))                                  # what the released code does
    k, v = att.kv(x).reshape(2, 10, 2, 2, 4).permute(2, 0, 3, 1, 4)
    y = ((q @ k.transpose(-2, -1)) * 4 ** -0.5).softmax(-1) @ v
    torch.testing.assert_close(att(x, queries), att.proj(y.transpose(1, 2).reshape(2, 10, 8)))


# ----------------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------------

def test_paper_authors_state_dict_round_trips_with_no_missing_or_unexpected() -> None:
    with torch.device("meta"):
        iqa = {k: torch.empty(s) for k, s in authors_iqa_layout(PAPER).items()}
        de = {k: torch.empty(s) for k, s in authors_de_layout(PAPER).items()}
        model, report = load_dsl_fiqa_checkpoint([iqa, de])
    assert report.ok and not report.missing and not report.unexpected and not report.ignored
    assert report.parts_loaded == ("iqa", "degradation")
    assert isinstance(model, DSLFIQA)


def test_checkpoint_values_load_from_files(tmp_path) -> None:
    src = randomise(DSLFIQA(SMALL_AUTHORS), seed=1)
    iqa, de = authors_state_dicts(src)
    assert {k: tuple(v.shape) for k, v in iqa.items()} == authors_iqa_layout(SMALL_AUTHORS)
    torch.save(iqa, tmp_path / "IQA.pt")
    torch.save({"state_dict": {f"module.{k}": v for k, v in de.items()}}, tmp_path / "DE.pt")  # DataParallel
    model, report = load_dsl_fiqa_checkpoint([tmp_path / "IQA.pt", tmp_path / "DE.pt"], SMALL_AUTHORS)
    assert report.ok and report.parts_loaded == ("iqa", "degradation")
    for k, v in {**iqa, **{f"E_or_mlp.{k}": v for k, v in de.items()}}.items():
        mine = model.iqa.state_dict()[k] if not k.startswith("E_or_mlp.") else \
            model.degradation_encoder.state_dict()[k.split(".", 1)[1]]
        assert torch.equal(mine, v), k
    faces = torch.rand(2, 3, 40, 40) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(faces), src(faces))


def test_either_part_alone_and_authors_only_tensors_dropped_on_purpose() -> None:
    src = randomise(DSLFIQA(SMALL_AUTHORS), seed=2)
    iqa, de = authors_state_dicts(src)
    _, report = load_dsl_fiqa_checkpoint(de, SMALL_AUTHORS)
    assert report.parts_loaded == ("degradation",) and report.ok
    lean = replace(SMALL_AUTHORS, authors_layout=False)
    model, report = load_dsl_fiqa_checkpoint(iqa, lean)
    assert report.ok and report.parts_loaded == ("iqa",)
    assert sorted(report.ignored) == sorted(k for k in iqa if k.startswith(("vit.head.", "testmlp."))
                                            or ".downsample." in k or k.endswith("attn.task_query"))
    faces = torch.rand(1, 3, 40, 40) * 2 - 1
    model.degradation_encoder.load_state_dict(src.degradation_encoder.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(faces), src(faces))


def test_mismatched_checkpoint_is_refused_naming_the_keys() -> None:
    iqa, de = authors_state_dicts(DSLFIQA(SMALL_AUTHORS))
    del iqa["fc_weight.3.bias"]
    iqa["conv2.weight"] = torch.zeros(3, 16, 1, 1)
    de["E.99.weight"] = torch.zeros(1)
    iqa["not_a_module.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatch) as e:
        load_dsl_fiqa_checkpoint([iqa, de], SMALL_AUTHORS)
    msg = str(e.value)
    for key in ("fc_weight.3.bias", "conv2.weight", "E.99.weight", "not_a_module.weight"):
        assert key in msg
    _, report = load_dsl_fiqa_checkpoint([iqa, de], SMALL_AUTHORS, strict=False)
    assert "fc_weight.3.bias" in report.missing and "conv2.weight" in [k for k, _, _ in report.shape_mismatch]
    with pytest.raises(CheckpointMismatch, match="no DSL-FIQA keys"):
        load_dsl_fiqa_checkpoint({"foo.weight": torch.zeros(1)}, SMALL_AUTHORS)


# ----------------------------------------------------------------------------------------------------------
# The tiny model on a real aligned face with real 68-point landmarks
# ----------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def face_and_landmarks() -> tuple[torch.Tensor, torch.Tensor]:
    """insightface's aligned 112x112 Tom Hanks sample and its dlib 68 landmarks (112-px coordinates)."""
    import cv2
    import dlib  # required, not skipped: scripts/setup.sh installs dlib-bin and face_recognition_models

    from fiqa_sdk.samples import load_sample

    models_spec = importlib.util.find_spec("face_recognition_models")
    assert models_spec is not None, "pip install face_recognition_models (dlib's 68-point model)"
    img = load_sample("tom_hanks")
    big = np.ascontiguousarray(cv2.resize(img, (224, 224))[..., ::-1])       # dlib finds faces >= ~80 px
    rects = dlib.get_frontal_face_detector()(big, 0)
    assert len(rects) == 1
    sp = dlib.shape_predictor(os.path.join(models_spec.submodule_search_locations[0], "models",
                                           "shape_predictor_68_face_landmarks.dat"))
    pts = np.array([[p.x, p.y] for p in sp(big, rects[0]).parts()], dtype=np.float32) / 2
    face = torch.from_numpy(((img[..., ::-1] - 127.5) / 127.5).astype(np.float32).transpose(2, 0, 1).copy())
    return face, torch.from_numpy(pts)


def test_tiny_forward_backward_on_real_faces_with_landmarks(face_and_landmarks) -> None:
    face, lm = face_and_landmarks
    assert float((lm - torch.tensor(MEAN_LANDMARKS_68_ARCFACE112)).abs().mean()) < 8.0  # sane dlib result
    blurred = F.avg_pool2d(face[None], 5, stride=1, padding=2, count_include_pad=False)[0]
    faces, lms = torch.stack([face, blurred]), torch.stack([lm, lm])
    torch.manual_seed(0)
    model = create_model("dsl_fiqa_tiny").train()
    scores = model(faces, lms)
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    F.mse_loss(scores, torch.tensor([0.8, 0.3])).backward()
    for name in ("iqa.vit.patch_embed.proj.weight", "iqa.embed_mlp.0.weight", "iqa.decoder.0.attn.q.weight",
                 "degradation_encoder.E.0.weight", "iqa.fc_weight.3.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    model.eval()
    with torch.no_grad():
        base = model(faces, lms)
        # landmark guidance is live: moving every landmark out of all crops changes the scores ...
        assert not torch.allclose(base, model(faces, torch.full_like(lms, -500.0)))
        # ... and landmarks=None is exactly the documented mean ArcFace layout
        mean = torch.tensor(MEAN_LANDMARKS_68_ARCFACE112).expand(2, -1, -1)
        torch.testing.assert_close(model(faces), model(faces, mean))


def test_bad_inputs_raise_with_the_fix() -> None:
    with torch.device("meta"):
        model = create_model("dsl_fiqa_tiny").eval()
        with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
            model(torch.zeros(1, 112, 112))
        with pytest.raises(ValueError, match="landmarks must be"):
            model(torch.zeros(1, 3, 112, 112), torch.zeros(1, 5, 2))
        with pytest.raises(ValueError, match="landmark_code"):
            model.iqa(torch.zeros(1, 3, 128, 128), torch.zeros(1, 16, 32), None)


# ----------------------------------------------------------------------------------------------------------
# The dual-set degradation objective
# ----------------------------------------------------------------------------------------------------------

def _textures(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """Random smooth colour textures in [-1, 1]: different 'faces' (content) for the toy problem."""
    low = torch.rand(n, 3, size // 4, size // 4, generator=g) * 2 - 1
    return F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


def _blur(sigma: float):
    r = 3
    k1 = torch.exp(-torch.arange(-r, r + 1).float() ** 2 / (2 * sigma ** 2))
    k = (k1[:, None] * k1[None, :] / k1.sum() ** 2).expand(3, 1, -1, -1)
    return lambda im: F.conv2d(F.pad(im[None], (r,) * 4, mode="reflect"), k, groups=3)[0]


def _noise(sigma: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    return lambda im: (im + sigma * torch.randn(im.shape, generator=g)).clamp(-1, 1)


def test_soft_proximity_map_picks_the_nearest_member() -> None:
    support = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]), dim=1)
    proxy = soft_proximity_map(F.normalize(torch.tensor([[0.9, 0.2]]), dim=1), support, temperature=0.01)
    torch.testing.assert_close(proxy, torch.tensor([[1.0, 0.0]]), atol=1e-4, rtol=0)


def test_queue_masks_same_degradation_but_not_unknown_labels() -> None:
    torch.manual_seed(0)
    a, b, ra, rb = (F.normalize(torch.randn(2, 8), dim=1) for _ in range(4))
    u, w = F.normalize(torch.randn(2, 8), dim=1)
    labels, tau = torch.tensor([0, 1]), 0.2
    loss_fn = DualSetDegradationLoss(8, temperature=tau, queue_size=3).eval()
    loss_fn._enqueue("syn", torch.stack([u, w]), torch.tensor([0, -1]))   # u: degradation 0, w: unknown
    # by hand: anchors a0 a1 b0 b1, positives b0 b1 a0 a1; negatives = other-label batch samples, u only
    # for anchors whose degradation is not 0, w always, the empty third queue slot never
    anchors, positives, lab = [a[0], a[1], b[0], b[1]], [b[0], b[1], a[0], a[1]], [0, 1, 0, 1]
    losses = []
    for i, (x, p) in enumerate(zip(anchors, positives)):
        negs = [anchors[j] for j in range(4) if lab[j] != lab[i]] + ([u] if lab[i] != 0 else []) + [w]
        logits = torch.stack([x @ p] + [x @ n for n in negs]) / tau
        losses.append(torch.logsumexp(logits, 0) - logits[0])
    torch.testing.assert_close(loss_fn(a, b, ra, rb, labels).synthetic, torch.stack(losses).mean())


def test_dsl_loss_decreases_and_decouples_degradation_from_content() -> None:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    degs = [_blur(1.2), _blur(2.5), _noise(0.15, 1), _noise(0.4, 2)]           # 0, 1: blur; 2, 3: noise
    real_degs = [_blur(1.8), _noise(0.25, 3)]                                   # unlabelled, unseen strengths
    enc = DegradationEncoder(DegradationEncoderConfig(widths=(8, 8, 16, 16, 16, 16), token_grid=(2, 2)))
    loss_fn = DualSetDegradationLoss(16, temperature=0.2, proximity_temperature=0.1)
    opt = torch.optim.Adam(enc.parameters(), lr=3e-3)

    def batch(gen: torch.Generator):
        labels = torch.randint(0, 4, (8,), generator=gen)
        a, b = synthetic_pairs(_textures(8, 32, gen), degs, labels)
        real = torch.stack([real_degs[i % 2](t) for i, t in enumerate(_textures(8, 32, gen))])
        ra, rb = two_random_crops(real, 24, gen)
        return a, b, F.interpolate(ra, size=32), F.interpolate(rb, size=32), labels

    def evaluate(data) -> float:
        a, b, ra, rb, labels = data
        enc.eval(), loss_fn.eval()
        with torch.no_grad():
            proj = enc(torch.cat([a, b, ra, rb])).projection
            return float(loss_fn(*proj.split(8), labels).total)

    held_out = batch(torch.Generator().manual_seed(123))
    before = evaluate(held_out)
    for _ in range(30):
        a, b, ra, rb, labels = batch(g)
        enc.train(), loss_fn.train()
        loss = loss_fn(*enc(torch.cat([a, b, ra, rb])).projection.split(8), labels).total
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = evaluate(held_out)
    assert after < 0.8 * before, (before, after)

    # content decoupling: same degradation on different faces is closer than one face under blur vs noise
    faces = _textures(6, 32, torch.Generator().manual_seed(7))
    enc.eval()
    with torch.no_grad():
        z = {k: F.normalize(enc(torch.stack([degs[k](f) for f in faces])).projection, dim=1) for k in (1, 3)}
    same_deg = (z[1] @ torch.roll(z[1], 1, 0).T).diagonal().mean()
    same_face = (z[1] * z[3]).sum(1).mean()
    assert same_deg > same_face + 0.2, (float(same_deg), float(same_face))


def test_dsl_loss_rejects_batches_without_negatives() -> None:
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match="no negatives"):
        DualSetDegradationLoss(8)(x, x, x, x, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(N, 8\)"):
        DualSetDegradationLoss(8)(x[:, :4], x, x, x)

"""ViT-FIQA teacher: architecture faithful to the authors' layout, checkpoint loading, margin heads, CR target."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from fiqa_compile.models.checkpoints import CheckpointMismatch
from fiqa_compile.models.margin import (ArcFaceHead, CosFaceHead, ViTFIQACriterion, arcface_logits,
                                        certainty_ratio, cosface_logits)
from fiqa_compile.models.vit_fiqa import (VIT_FIQA_B, VIT_FIQA_S, VIT_FIQA_TINY, ViTFIQA, ViTFIQAConfig,
                                          infer_config, load_vit_fiqa_checkpoint, to_authors_state_dict)

# A paper-layout model shrunk in width/depth only: same 9x9 patches, 145 tokens, heads, ReLU6, no qkv bias.
SMALL_FULL = replace(VIT_FIQA_S, dim=64, depth=2, embedding_dim=32)
SMALL_TOKEN = replace(SMALL_FULL, mode="token")


def expected_params(c: ViTFIQAConfig) -> int:
    """Parameter count written out from the authors' vit_qs.py layer list."""
    d, h = c.dim, int(c.dim * c.mlp_ratio)
    block = 4 * d + 3 * d * d + (3 * d if c.qkv_bias else 0) + d * d + d + d * h + h + h * d + d
    patch = c.in_chans * c.patch_size ** 2 * d + d
    tokens = c.num_tokens * d + d + (d if c.mask_ratio > 0 else 0)  # pos_embed, qs_token, mask_token
    feature = c.feature_in * d + 2 * d + d * c.embedding_dim + 2 * c.embedding_dim
    qs_in = c.embedding_dim if c.mode == "full" else d
    return patch + tokens + c.depth * block + 2 * d + feature + 3 * qs_in


def randomise(model: ViTFIQA, seed: int = 0) -> ViTFIQA:
    """Non-trivial values everywhere, BN running stats included, so a bad load cannot go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if "running_var" in name
                        else torch.randn(t.shape, generator=g) * 0.05)
    return model.eval()


def images(n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, 112, 112, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ------------------------------------------------------------------------------------------- architecture

@pytest.mark.parametrize("cfg", [VIT_FIQA_S, VIT_FIQA_B, VIT_FIQA_TINY, SMALL_TOKEN])
def test_param_count_matches_layer_list(cfg: ViTFIQAConfig) -> None:
    with torch.device("meta"):
        model = ViTFIQA(cfg)
    assert sum(p.numel() for p in model.parameters()) == expected_params(cfg)


def test_paper_s_geometry_and_size() -> None:
    with torch.device("meta"):
        model = ViTFIQA(VIT_FIQA_S)
    sd = model.state_dict()
    assert VIT_FIQA_S.num_tokens == 145
    assert tuple(sd["feature.0.weight"].shape) == (512, 145 * 512)  # the released 'full' checkpoint's shape
    assert tuple(sd["pos_embed"].shape) == (1, 145, 512)
    assert tuple(sd["head_qs.1.weight"].shape) == (1, 512) and "head_qs.1.bias" not in sd
    assert "blocks.0.attn.qkv.bias" not in sd and "blocks.11.mlp.fc2.bias" in sd and "blocks.12.norm1.weight" not in sd
    assert model.feature[1].eps == 2e-5 and isinstance(model.blocks[0].mlp.act, torch.nn.ReLU6)
    assert 75e6 < sum(p.numel() for p in model.parameters()) < 77e6  # the authors' ~76M


def test_paper_configs_run_on_meta_device() -> None:
    for cfg in (VIT_FIQA_S, VIT_FIQA_B):
        with torch.device("meta"):
            out = ViTFIQA(cfg).eval()(torch.empty(4, 3, 112, 112))
        assert out.embedding.shape == (4, 512) and out.quality.shape == (4,)


def test_tiny_is_small_and_trains() -> None:
    model = ViTFIQA(VIT_FIQA_TINY)
    assert sum(p.numel() for p in model.parameters()) < 6e6
    model.train()
    out = model(images(2))
    assert out.embedding.shape == (2, 512) and out.quality.shape == (2,)
    (out.embedding.square().mean() + out.quality.mean()).backward()
    assert model.qs_token.grad is not None and torch.isfinite(model.patch_embed.proj.weight.grad).all()


def test_quality_head_input_per_mode() -> None:
    x = images()
    full = randomise(ViTFIQA(SMALL_FULL))
    out = full(x)
    torch.testing.assert_close(out.quality, full.head_qs(out.embedding).squeeze(-1))  # authors: head_qs(feature)
    tok = randomise(ViTFIQA(SMALL_TOKEN))
    tokens = tok.forward_tokens(x)
    out = tok(x)
    torch.testing.assert_close(out.quality, tok.head_qs(tokens[:, 0]).squeeze(-1))
    torch.testing.assert_close(out.embedding, tok.feature(tokens[:, 1:].reshape(2, -1)))


def test_training_masks_tokens_with_mask_token() -> None:
    model = randomise(ViTFIQA(SMALL_FULL)).train()
    tokens = model.forward_tokens(images(3))
    is_mask = (tokens == model.mask_token).all(dim=-1)  # (B, 145)
    assert (is_mask.sum(dim=1) == 145 - int(145 * 0.9)).all()
    model.eval()
    assert not (model.forward_tokens(images(3)) == model.mask_token).all(dim=-1).any()


def test_bad_input_and_config_are_refused() -> None:
    model = ViTFIQA(SMALL_TOKEN).eval()
    with pytest.raises(ValueError, match="112"):
        model(torch.zeros(1, 3, 128, 128))
    with pytest.raises(ValueError, match="num_heads"):
        ViTFIQAConfig(dim=100, num_heads=8)
    with pytest.raises(ValueError, match="mode"):
        ViTFIQAConfig(mode="crfiqa")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- checkpoints

def test_authors_checkpoint_round_trips(tmp_path) -> None:
    model = randomise(ViTFIQA(SMALL_FULL))
    path = tmp_path / "model.pt"
    torch.save({f"module.{k}": v for k, v in to_authors_state_dict(model).items()}, path)  # DDP-saved layout
    loaded, report = load_vit_fiqa_checkpoint(path)
    assert report.ok and not report.missing and not report.unexpected and not report.ignored
    for f in ("dim", "depth", "num_heads", "patch_size", "img_size", "mode", "embedding_dim", "qkv_bias"):
        assert getattr(loaded.cfg, f) == getattr(SMALL_FULL, f), f
    x = images()
    a, b = model(x), loaded(x)
    assert torch.equal(a.embedding, b.embedding) and torch.equal(a.quality, b.quality)


def test_paper_layout_inferred_from_meta_state_dict() -> None:
    for cfg in (VIT_FIQA_S, VIT_FIQA_B, replace(VIT_FIQA_S, mode="token")):
        with torch.device("meta"):
            sd = ViTFIQA(cfg).state_dict()
        found = infer_config(sd)
        assert (found.dim, found.depth, found.patch_size, found.img_size, found.mode, found.mlp_ratio) == \
            (cfg.dim, cfg.depth, 9, 112, cfg.mode, 4.0)


@pytest.mark.parametrize("cfg", [SMALL_FULL, SMALL_TOKEN])
def test_mode_chosen_from_checkpoint(cfg: ViTFIQAConfig) -> None:
    sd = to_authors_state_dict(randomise(ViTFIQA(cfg)))
    model, _ = load_vit_fiqa_checkpoint(sd)
    assert model.cfg.mode == cfg.mode
    width = sd["feature.0.weight"].shape[1]
    assert width == (145 if cfg.mode == "full" else 144) * 64


def _sd() -> dict[str, torch.Tensor]:
    return to_authors_state_dict(randomise(ViTFIQA(SMALL_FULL)))


def test_missing_key_refused() -> None:
    sd = _sd()
    del sd["blocks.1.mlp.fc2.bias"]
    with pytest.raises(CheckpointMismatch, match=r"missing: blocks\.1\.mlp\.fc2\.bias"):
        load_vit_fiqa_checkpoint(sd)


def test_renamed_key_refused() -> None:
    sd = _sd()
    sd["blocks.0.attn.out_proj.weight"] = sd.pop("blocks.0.attn.proj.weight")
    with pytest.raises(CheckpointMismatch) as err:
        load_vit_fiqa_checkpoint(sd)
    assert "blocks.0.attn.out_proj.weight" in str(err.value) and "blocks.0.attn.proj.weight" in str(err.value)


def test_wrong_shape_refused() -> None:
    sd = _sd()
    sd["head_qs.1.weight"] = torch.zeros(1, 31)
    with pytest.raises(CheckpointMismatch, match=r"head_qs\.1\.weight ckpt\(1, 31\) vs model\(1, 32\)"):
        load_vit_fiqa_checkpoint(sd)


def test_config_disagreeing_with_checkpoint_refused() -> None:
    with pytest.raises(CheckpointMismatch, match=r"mode: checkpoint 'full' vs config 'token'"):
        load_vit_fiqa_checkpoint(_sd(), config=SMALL_TOKEN)
    sd = _sd()
    del sd["mask_token"]  # a checkpoint trained without masking, loaded into a masking config
    with pytest.raises(CheckpointMismatch, match="missing: mask_token"):
        load_vit_fiqa_checkpoint(sd, config=SMALL_FULL)
    model, _ = load_vit_fiqa_checkpoint(sd)  # inferred: no mask token, so masking off
    assert model.cfg.mask_ratio == 0.0 and model.mask_token is None
    with pytest.raises(ValueError, match="num_heads"):
        load_vit_fiqa_checkpoint(sd, config=SMALL_FULL, num_heads=4)
    with pytest.raises(CheckpointMismatch, match="num_heads"):
        load_vit_fiqa_checkpoint(sd, num_heads=7)  # 64 is not divisible by 7


def test_not_a_vit_fiqa_checkpoint_refused(tmp_path) -> None:
    sd = _sd()
    del sd["qs_token"]
    with pytest.raises(CheckpointMismatch, match="qs_token"):
        load_vit_fiqa_checkpoint(sd)
    sd = _sd()
    sd["feature.0.weight"] = torch.zeros(64, 100 * 64)
    with pytest.raises(CheckpointMismatch, match=r"feature\.0\.weight \(64, 6400\) fits neither mode"):
        load_vit_fiqa_checkpoint(sd)
    with pytest.raises(FileNotFoundError):
        load_vit_fiqa_checkpoint(tmp_path / "absent.pt")


def test_strict_false_loads_rest_and_reports() -> None:
    sd = _sd()
    sd["extra.weight"] = torch.zeros(3)
    model, report = load_vit_fiqa_checkpoint(sd, strict=False)
    assert report.unexpected == ["extra.weight"] and not report.missing
    assert torch.equal(model.state_dict()["pos_embed"], sd["pos_embed"])


# ------------------------------------------------------------------------------------------- margin heads

COS = torch.tensor([[0.8, 0.1, -0.3], [0.2, 0.6, 0.5], [-0.95, 0.0, 0.3]])
LABELS = torch.tensor([0, 2, 0])


def test_cosface_penalises_target_only() -> None:
    out = cosface_logits(COS, LABELS, s=64.0, m=0.35)
    expected = 64.0 * COS.clone()
    expected[0, 0] = 64.0 * (0.8 - 0.35)
    expected[1, 2] = 64.0 * (0.5 - 0.35)
    expected[2, 0] = 64.0 * (-0.95 - 0.35)
    torch.testing.assert_close(out, expected)


def test_arcface_margin_and_threshold() -> None:
    out = arcface_logits(COS, LABELS, s=64.0, m=0.5)
    expected = 64.0 * COS.clone()
    expected[0, 0] = 64.0 * math.cos(math.acos(0.8) + 0.5)  # 0.41441...
    expected[1, 2] = 64.0 * math.cos(math.acos(0.5) + 0.5)
    # theta = acos(-0.95) = 2.82 > pi - 0.5: cos(theta + m) would wrap; fall back to cos - sin(pi - m) * m
    expected[2, 0] = 64.0 * (-0.95 - math.sin(math.pi - 0.5) * 0.5)
    torch.testing.assert_close(out, expected)
    easy = arcface_logits(COS, LABELS, s=1.0, m=0.5, easy_margin=True)
    assert easy[2, 0].item() == pytest.approx(-0.95)  # easy margin: no penalty where cos <= 0
    assert easy[0, 0].item() == pytest.approx(math.cos(math.acos(0.8) + 0.5))


def test_arcface_gradient_finite_at_cos_one() -> None:
    cos = torch.tensor([[1.0, 0.0], [-1.0, 0.2]], requires_grad=True)
    arcface_logits(cos, torch.tensor([0, 0])).sum().backward()
    assert torch.isfinite(cos.grad).all()


def test_certainty_ratio_hand_computed() -> None:
    cr = certainty_ratio(COS, LABELS)
    expected = torch.tensor([0.8 / (0.1 + 1), 0.5 / (0.6 + 1), -0.95 / (0.3 + 1)])
    torch.testing.assert_close(cr, expected)
    with pytest.raises(ValueError, match="labels"):
        certainty_ratio(COS, torch.tensor([0, 3, 0]))


def test_heads_and_criterion() -> None:
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(6, 16, generator=g, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    head = CosFaceHead(16, 5)
    logits, cos = head(emb, labels)
    manual = torch.nn.functional.normalize(emb, dim=1) @ torch.nn.functional.normalize(head.weight, dim=1).T
    torch.testing.assert_close(cos, manual)
    torch.testing.assert_close(logits, cosface_logits(cos, labels))
    crit = ViTFIQACriterion(ArcFaceHead(16, 5))
    quality = torch.zeros(6, requires_grad=True)
    loss = crit(emb, quality, labels)
    torch.testing.assert_close(loss.total, loss.recognition + 10.0 * loss.quality)
    torch.testing.assert_close(loss.target, certainty_ratio(crit.head.cosine(emb), labels))
    loss.total.backward()
    assert quality.grad.abs().sum() > 0 and torch.isfinite(emb.grad).all()

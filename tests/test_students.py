"""The compact two-output students: registry, budget, output contract, BatchNorm folding."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fiqa_compile.models import create_model, get_config, list_models
from fiqa_compile.models.profile import profile_model
from fiqa_compile.models.students import OUTPUT_NAMES, FIQAStudent, StudentConfig, deepen_state_dict, export_ready


STUDENTS = ("student_mfn", "student_mfn_full", "student_nano")


def test_registered_in_three_sizes():
    assert set(STUDENTS) <= set(list_models())
    assert all(isinstance(create_model(n), FIQAStudent) for n in STUDENTS)


def test_budgets_at_112():
    mfn, full, nano = (profile_model(n) for n in STUDENTS)
    assert mfn.input_shape == (3, 112, 112)
    for p in (mfn, full):
        assert 0.7e6 <= p.params <= 1.3e6, p           # MobileFaceNet class, ~1M parameters
        assert p.macs < 0.5e9, p                       # well under 0.5 GMAC
    assert full.macs == pytest.approx(221e6, rel=0.02)  # the paper's layout, as published
    assert mfn.macs < 0.6 * full.macs                  # the default is re-balanced for the 2 ms INT8 budget
    assert nano.params < mfn.params / 3 and nano.macs < mfn.macs / 2, (nano, mfn)


def test_deep_variant_fits_the_budget_and_only_adds_repeats():
    mfn, deep = profile_model("student_mfn"), profile_model("student_mfn_deep")
    assert 0.7e6 <= deep.params <= 1.3e6 and deep.macs < 0.5e9, deep
    assert mfn.macs < deep.macs < 1.4 * mfn.macs, (mfn, deep)
    small, large = get_config("student_mfn"), get_config("student_mfn_deep")
    assert [s[:2] + s[3:] for s in small.stages] == [s[:2] + s[3:] for s in large.stages]


def _trained_like(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters everywhere, as training leaves them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.4 - 0.2)
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()


def test_deepen_starts_the_deeper_student_exactly_where_the_small_one_is():
    small = StudentConfig(stem_ch=16, stages=((2, 16, 1, 2), (2, 24, 2, 2)), feat_ch=32, embed_dim=16, head_hidden=8)
    large = StudentConfig(stem_ch=16, stages=((2, 16, 3, 2), (2, 24, 4, 2)), feat_ch=32, embed_dim=16, head_hidden=8)
    a = _trained_like(FIQAStudent(small), 0)
    b = FIQAStudent(large)
    b.load_state_dict(deepen_state_dict(a.state_dict(), small, large))
    x = torch.randn(2, 3, 112, 112)
    assert torch.allclose(a(x), b.eval()(x), atol=1e-5)
    # the kept blocks carry the small student's weights in order; stage 0's added blocks sit before stage 1's
    assert torch.equal(b.blocks[3].expand.conv.weight, a.blocks[1].expand.conv.weight)
    assert torch.equal(b.blocks[4].expand.conv.weight, a.blocks[2].expand.conv.weight)
    assert torch.all(b.blocks[1].project.bn.weight == 0) and torch.all(b.blocks[6].project.bn.weight == 0)
    # and it can learn: the added blocks are not frozen at zero
    b.train()
    b(x).sum().backward()
    assert b.blocks[1].project.bn.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("other, why", [
    (StudentConfig(stem_ch=16, stages=((2, 16, 1, 2), (2, 32, 2, 2)), feat_ch=32, embed_dim=16, head_hidden=8),
     "stage 1"),
    (StudentConfig(stem_ch=16, stages=((2, 16, 1, 2), (2, 24, 1, 2)), feat_ch=32, embed_dim=16, head_hidden=8),
     "stage 1"),
    (StudentConfig(stem_ch=16, stages=((2, 16, 1, 2), (2, 24, 2, 2)), feat_ch=64, embed_dim=16, head_hidden=8),
     "only the repeats"),
])
def test_deepen_refuses_what_is_not_a_deeper_copy(other, why):
    small = StudentConfig(stem_ch=16, stages=((2, 16, 1, 2), (2, 24, 2, 2)), feat_ch=32, embed_dim=16, head_hidden=8)
    with pytest.raises(ValueError, match=why):
        deepen_state_dict(FIQAStudent(small).state_dict(), small, other)


def test_two_scores_from_one_pass():
    model = create_model("student_nano").eval()
    x = torch.randn(3, 3, 112, 112)
    y = model(x)
    assert y.shape == (3, len(OUTPUT_NAMES)) and OUTPUT_NAMES == ("utility", "perceptual")
    # Batch items are independent (no cross-batch op sneaked in).
    assert torch.allclose(model(x[1:2]), y[1:2], atol=1e-5)


def test_only_quantisation_friendly_layers():
    allowed = (FIQAStudent, nn.Sequential, nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Identity, nn.Linear)
    for name in STUDENTS:
        model = create_model(name)
        odd = {type(m).__name__ for m in model.modules()
               if not isinstance(m, allowed) and type(m).__module__ != "fiqa_compile.models.students"}
        assert not odd, f"{name} uses {odd}"


def test_fuse_bn_is_exact_and_leaves_the_original_alone():
    torch.manual_seed(0)
    model = create_model("student_nano")
    # Give BatchNorm non-trivial statistics and affine parameters, as training would.
    model.train()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
        for _ in range(3):
            model(torch.randn(8, 3, 112, 112))
    model.eval()
    x = torch.randn(4, 3, 112, 112)
    fused = export_ready(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        ref, got = model(x), fused(x)
    assert ref.abs().max() > 1e-3  # a meaningful comparison, not two near-zero outputs
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_fuse_bn_refuses_training_mode():
    with pytest.raises(RuntimeError, match="eval"):
        create_model("student_nano").train().fuse_bn()


@pytest.mark.parametrize("bad, match", [
    (dict(img_size=100), "divisible by 16"),
    (dict(stages=((2, 32, 1, 3),)), "stride"),
    (dict(stages=()), "at least one stage"),
    (dict(num_outputs=3), "num_outputs"),
])
def test_config_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        StudentConfig(**bad)


def test_overrides_reach_the_config():
    cfg = get_config("student_nano", feat_ch=128)
    assert cfg.feat_ch == 128 and create_model("student_nano", feat_ch=128).gdc.conv.out_channels == 128

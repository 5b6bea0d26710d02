"""The compact two-output students: registry, budget, output contract, BatchNorm folding."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fiqa_compile.models import create_model, get_config, list_models
from fiqa_compile.models.profile import profile_model
from fiqa_compile.models.students import OUTPUT_NAMES, FIQAStudent, StudentConfig, export_ready


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

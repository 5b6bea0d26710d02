"""Model registry by name and the param/MAC profiler used to compare teachers and students."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from fiqa_compile.models import create_model, get_config, list_models, register_model
from fiqa_compile.models.profile import count_macs, count_params, native_input_shape, profile_model
from fiqa_compile.models.vit_fiqa import ViTFIQA


def test_lists_vit_fiqa_names() -> None:
    assert {"vit_fiqa_s", "vit_fiqa_b", "vit_fiqa_tiny"} <= set(list_models())


def test_unknown_name_rejected_with_available_names() -> None:
    with pytest.raises(KeyError, match="vit_fiqa_tiny"):
        create_model("vit_fiqa_xxl")


def test_overrides_reach_the_model() -> None:
    model = create_model("vit_fiqa_tiny", depth=2, mode="full")
    assert isinstance(model, ViTFIQA) and len(model.blocks) == 2 and model.cfg.mode == "full"
    assert get_config("vit_fiqa_tiny").depth == 6  # the registered config is unchanged
    with pytest.raises(ValueError, match="mode"):
        create_model("vit_fiqa_tiny", mode="bogus")
    with pytest.raises(TypeError):
        create_model("vit_fiqa_tiny", not_a_field=1)


def test_duplicate_registration_rejected() -> None:
    with pytest.raises(ValueError, match="twice"):
        register_model("vit_fiqa_tiny", get_config("vit_fiqa_tiny"), ViTFIQA)


def test_macs_of_linear_and_conv_equal_hand_count() -> None:
    assert count_macs(torch.nn.Linear(7, 5), torch.zeros(3, 7)) == 3 * 7 * 5
    conv = torch.nn.Conv2d(3, 4, kernel_size=3, stride=1)
    assert count_macs(conv, torch.zeros(2, 3, 8, 8)) == 2 * (4 * 6 * 6) * (3 * 3 * 3)  # out elems * C_in*k*k
    assert count_params(conv) == 4 * 3 * 3 * 3 + 4


def test_profile_of_vit_matches_hand_count() -> None:
    cfg = get_config("vit_fiqa_tiny")
    prof = profile_model("vit_fiqa_tiny")
    d, n, h = cfg.dim, cfg.num_tokens, int(cfg.dim * cfg.mlp_ratio)
    per_block = n * (3 * d * d + d * d + 2 * d * h) + 2 * n * n * d  # qkv, proj, mlp; q@k^T and attn@v
    expected = (cfg.num_patches * cfg.in_chans * cfg.patch_size ** 2 * d + cfg.depth * per_block
                + cfg.feature_in * d + d * cfg.embedding_dim + d)  # patch conv, blocks, feature, head_qs
    assert prof.macs == expected
    assert prof.params == count_params(create_model("vit_fiqa_tiny"))
    assert prof.input_shape == (3, 112, 112)


def test_native_input_shape_convention() -> None:
    @dataclass(frozen=True)
    class Sized:
        img_size: tuple[int, int] = (96, 128)
        in_chans: int = 1

    @dataclass(frozen=True)
    class Unsized:
        depth: int = 2

    assert native_input_shape(Sized()) == (1, 96, 128)
    assert native_input_shape(get_config("vit_fiqa_s")) == (3, 112, 112)
    with pytest.raises(TypeError, match="input_shape"):
        native_input_shape(Unsized())

"""Compact CNN students: one pass over a 112x112 aligned face -> ``scores`` [B, 2] = (utility, perceptual).

The trunk follows MobileFaceNet (Chen et al. 2018): a stride-2 stem, inverted-residual bottlenecks
(1x1 expand, 3x3 depthwise, 1x1 linear projection, residual add), a 1x1 conv to ``feat_ch`` and a global
*depthwise* conv over the final 7x7 map ("GDC", which learns where on the face to look, unlike average
pooling). ``student_mfn_full`` is the paper's stage layout; the default ``student_mfn`` re-balances it to fit
a 2 ms full-INT8 budget (see the configs at the end). Changes from the paper, all for quantised deployment:

* ReLU instead of PReLU: TFLite's PT2E quantiser fuses Conv+ReLU into one int8 kernel and TensorRT fuses it
  too, while PReLU/hardswish would run as separate (and, in litert-torch 0.10, unquantised) ops.
* No squeeze-excite / hardsigmoid, no BatchNorm1d on the embedding: every BatchNorm follows a conv and
  :meth:`FIQAStudent.fuse_bn` folds it away before export, so exporters see Conv/Add/ReLU/Gemm only.
* Two outputs from one shared trunk: a small MLP head whose last Linear emits both scores.

Output order is :data:`OUTPUT_NAMES`; scores are in whatever (normalised) units the distillation trained
them in -- keep both targets on a similar scale, because an INT8 output tensor shares one scale.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from fiqa_compile.models.registry import register_model

OUTPUT_NAMES: tuple[str, str] = ("utility", "perceptual")
INPUT_SHAPE: tuple[int, int, int] = (3, 112, 112)  # fiqa_sdk.preprocess.SPEC: NCHW float32 RGB in [-1, 1]


@dataclass(frozen=True)
class StudentConfig:
    """Architecture of one student. ``stages``: (expansion, out_channels, repeats, first_stride) per stage."""

    img_size: int = 112
    stem_ch: int = 64
    stages: tuple[tuple[int, int, int, int], ...] = (
        (2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))
    feat_ch: int = 512
    embed_dim: int = 128
    head_hidden: int = 64
    num_outputs: int = len(OUTPUT_NAMES)
    bn_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.img_size % 16:
            raise ValueError(f"img_size={self.img_size} must be divisible by 16 (stem and stages downsample x16)")
        if not self.stages:
            raise ValueError("a student needs at least one stage")
        for i, st in enumerate(self.stages):
            if len(st) != 4 or min(st) < 1 or st[3] not in (1, 2):
                raise ValueError(f"stage {i} = {st}: expected (expansion>=1, out_ch>=1, repeats>=1, stride in 1|2)")
        if self.num_outputs != len(OUTPUT_NAMES):
            raise ValueError(f"num_outputs must be {len(OUTPUT_NAMES)} ({OUTPUT_NAMES}); exporters rely on it")
        if self.final_size < 1:
            raise ValueError(f"img_size={self.img_size} downsamples to nothing with {self.stages}")

    @property
    def final_size(self) -> int:
        """Side of the last feature map (7 for 112 input with the default x16 downsampling)."""
        s = self.img_size // 2  # stem
        for *_, stride in self.stages:
            s //= stride
        return s


class ConvBNAct(nn.Module):
    """Conv2d (no bias) + BatchNorm2d + optional ReLU; :meth:`fuse_bn` folds the BN into the conv."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True,
                 padding: int | None = None, eps: float = 1e-5):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, (k - 1) // 2 if padding is None else padding,
                              groups=groups, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(cout, eps=eps)
        self.act: nn.Module = nn.ReLU(inplace=False) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    def fuse_bn(self) -> None:
        if isinstance(self.bn, nn.BatchNorm2d):
            self.conv = fuse_conv_bn_eval(self.conv.eval(), self.bn.eval())
            self.bn = nn.Identity()


class Bottleneck(nn.Module):
    """MobileNetV2 inverted residual: expand (1x1) -> depthwise 3x3 -> linear projection (1x1), + skip."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int, eps: float):
        super().__init__()
        mid = cin * expansion
        self.use_skip = stride == 1 and cin == cout
        self.expand = ConvBNAct(cin, mid, 1, eps=eps)
        self.dw = ConvBNAct(mid, mid, 3, stride, groups=mid, eps=eps)
        self.project = ConvBNAct(mid, cout, 1, act=False, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.dw(self.expand(x)))
        return x + y if self.use_skip else y


class ScoreHead(nn.Module):
    """Embedding -> hidden -> 2 scores. Kept small so it can stay float where a deployment wants that."""

    def __init__(self, cin: int, hidden: int, n_out: int):
        super().__init__()
        self.fc1 = nn.Linear(cin, hidden)
        self.act = nn.ReLU(inplace=False)
        self.fc2 = nn.Linear(hidden, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class FIQAStudent(nn.Module):
    """Faces [B,3,112,112] (``fiqa_sdk.preprocess.SPEC``) -> scores [B,2] in :data:`OUTPUT_NAMES` order."""

    output_names = OUTPUT_NAMES

    def __init__(self, cfg: StudentConfig):
        super().__init__()
        self.cfg = cfg
        e = cfg.bn_eps
        self.stem = nn.Sequential(ConvBNAct(3, cfg.stem_ch, 3, 2, eps=e),
                                  ConvBNAct(cfg.stem_ch, cfg.stem_ch, 3, 1, groups=cfg.stem_ch, eps=e))
        blocks: list[nn.Module] = []
        cin = cfg.stem_ch
        for expansion, cout, repeats, stride in cfg.stages:
            for i in range(repeats):
                blocks.append(Bottleneck(cin, cout, stride if i == 0 else 1, expansion, e))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.conv_feat = ConvBNAct(cin, cfg.feat_ch, 1, eps=e)
        # Global depthwise conv over the whole final map: one learned spatial weighting per channel.
        self.gdc = ConvBNAct(cfg.feat_ch, cfg.feat_ch, cfg.final_size, groups=cfg.feat_ch, act=False, padding=0,
                             eps=e)
        self.embed = nn.Linear(cfg.feat_ch, cfg.embed_dim)
        self.embed_act = nn.ReLU(inplace=False)
        self.head = ScoreHead(cfg.embed_dim, cfg.head_hidden, cfg.num_outputs)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        # Zero-init the last BN of each residual block so deep stacks start as identities (Goyal et al. 2017).
        for b in self.modules():
            if isinstance(b, Bottleneck) and b.use_skip:
                nn.init.zeros_(b.project.bn.weight)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last spatial map [B, feat_ch, final_size, final_size] (distillation matches it to teacher tokens)."""
        return self.conv_feat(self.blocks(self.stem(x)))

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        """:meth:`feature_map` -> the shared embedding [B, embed_dim] that both scores read."""
        return self.embed_act(self.embed(torch.flatten(self.gdc(fmap), 1)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The shared embedding [B, embed_dim] that both scores read."""
        return self.pool(self.feature_map(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def fuse_bn(self) -> "FIQAStudent":
        """Fold every BatchNorm into its conv, in place (eval-mode statistics). Returns self."""
        if self.training:
            raise RuntimeError("fuse_bn() folds running statistics; call model.eval() first")
        for m in self.modules():
            if isinstance(m, ConvBNAct):
                m.fuse_bn()
        return self


def export_ready(model: nn.Module) -> nn.Module:
    """An eval-mode deep copy with BatchNorm folded when the model supports it; ``model`` is untouched.

    Exporters call this so that ONNX, TFLite and TensorRT all see the same BN-free graph (and so that
    fp32-vs-exported comparisons are made against exactly the network that was exported).
    """
    m = copy.deepcopy(model).eval()
    if hasattr(m, "fuse_bn"):
        m.fuse_bn()
    return m


def deepen_state_dict(state: dict[str, torch.Tensor], small: StudentConfig, large: StudentConfig
                      ) -> dict[str, torch.Tensor]:
    """Map a trained ``small`` student's weights into ``large``, which has the same layout with more repeats per stage.

    Why: a deeper student can start from what a trained one knows instead of from scratch (Net2DeeperNet). Stage
    ``i``'s blocks keep their weights in order; the blocks ``large`` adds at the end of a stage are residual blocks
    whose last BatchNorm starts at zero, so they begin as identities and the deeper network computes exactly what
    the small one did. Raises ``ValueError`` naming the first stage that cannot be mapped.
    """
    if len(small.stages) != len(large.stages) or (small.img_size, small.stem_ch, small.feat_ch, small.embed_dim,
                                                   small.head_hidden) != (large.img_size, large.stem_ch, large.feat_ch,
                                                                          large.embed_dim, large.head_hidden):
        raise ValueError("only the repeats per stage may differ between the two students")
    mapping: dict[int, int] = {}
    src = dst = 0
    for i, ((t, c, n, s), (t2, c2, n2, s2)) in enumerate(zip(small.stages, large.stages)):
        if (t, c, s) != (t2, c2, s2) or n2 < n:
            raise ValueError(f"stage {i}: {(t, c, n, s)} cannot grow into {(t2, c2, n2, s2)} "
                             "(same expansion, channels and stride, at least as many repeats)")
        mapping.update({src + k: dst + k for k in range(n)})
        src, dst = src + n, dst + n2
    target = FIQAStudent(large).state_dict()  # added blocks: fresh weights, zero-initialised last BN
    for key, value in state.items():
        if key.startswith("blocks."):
            _, idx, rest = key.split(".", 2)
            key = f"blocks.{mapping[int(idx)]}.{rest}"
        if key not in target or target[key].shape != value.shape:
            raise ValueError(f"weight {key} {tuple(value.shape)} has no place in the larger student")
        target[key] = value.clone()
    return target


# The exact MobileFaceNet layout (1.00M params, 221 MMACs at 112x112): 2.3 ms per face as full-INT8 TFLite on one
# core of the 2-core dev VM, over the 2 ms budget -- most of its MACs sit in the 56x56/28x28/14x14 stages.
STUDENT_MFN_FULL = StudentConfig()
# Default: the same blocks re-balanced for the budget -- a 32-channel stem and fewer high-resolution blocks, with
# capacity moved to the cheap 7x7 stage (0.92M params, 110 MMACs, 1.2 ms as full-INT8 TFLite on the same core).
STUDENT_MFN = StudentConfig(stem_ch=32, stages=((2, 48, 2, 2), (4, 128, 1, 2), (2, 128, 3, 1), (4, 160, 1, 2),
                                                (2, 160, 3, 1)))
# ~3x cheaper again: narrower, fewer blocks; for low-end phones and the tests.
STUDENT_NANO = StudentConfig(stem_ch=32, stages=((2, 32, 2, 2), (2, 64, 2, 2), (2, 64, 2, 1), (2, 96, 2, 2)),
                             feat_ch=256, embed_dim=64, head_hidden=32)

# The default with two more 14x14 blocks and one more 7x7 block (1.17M params, 141 MMACs, 1.3 ms full-INT8 TFLite on
# one core), grown from a trained student_mfn with :func:`deepen_state_dict` (``fiqa-distill --init``). On lfw-dev a
# cycle grown from the embedded student gained little (held-out utility SRCC 0.9309 vs 0.9294): with ~6k photos the
# limit is the faces seen, not capacity; it is here for users distilling on more of their own.
STUDENT_MFN_DEEP = StudentConfig(stem_ch=32, stages=((2, 48, 2, 2), (4, 128, 1, 2), (2, 128, 5, 1), (4, 160, 1, 2),
                                                     (2, 160, 4, 1)))

register_model("student_mfn", STUDENT_MFN, FIQAStudent)
register_model("student_mfn_deep", STUDENT_MFN_DEEP, FIQAStudent)
register_model("student_mfn_full", STUDENT_MFN_FULL, FIQAStudent)
register_model("student_nano", STUDENT_NANO, FIQAStudent)

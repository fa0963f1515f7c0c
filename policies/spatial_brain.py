"""The spatial brain: a small multimodal transformer with a spatial-QA head and one goal head per embodiment.

Contract. A batch is a dict for one embodiment (its name under ``"embodiment"``; every item in a batch
shares it, because each embodiment's proprioception has its own length; mixed training alternates
per-embodiment batches):

- ``image``: uint8 (B, S, S, 3) RGB, S = ``image_size``; normalised here.
- ``depth`` (optional; only when ``config.depth``): float (B, S, S) metres. Clipped to
  [0, ``depth_max``] and scaled to [0, 1] here; non-finite or non-positive pixels count as missing.
- ``proprio``: float (B, P_e) in the embodiment's own units, P_e = its ``proprio_dim``.
- ``text``: float (B, L, 384) and ``text_mask``: bool (B, L), True = a real token, from
  :func:`policies.language.token_states` (L <= ``max_text_tokens``).

Outputs: ``qa`` logits over a closed answer vocabulary (``n_answers``), and for ``act`` a diagonal
Gaussian over the embodiment's goal, its mean bounded to ``center + scale * tanh(.)``:
``uav`` the goal offset (m) in the vehicle's yaw frame (x forward, y left, z up: the body frame
with roll and pitch removed, so the goal does not swing with the attitude); ``swimmer`` the goal
offset (m) in the plane, in the head frame; ``kitchen`` the interaction point (m, world frame).
Samples are not bounded: the controller that consumes a goal clips it.

Architecture, ACE-Brain-0 scaled to two CPU cores (a ViT + MLP projector and an 8B LLM decoder there):

- ``vision``: a conv patch encoder (three stride-2 3x3 convs over RGB, depth and a depth-valid flag),
  an MLP projector per patch and learned 2-D position embeddings: 32x32 pixels -> 4x4 = 16 tokens.
- ``text_proj``: an MLP from the frozen MiniLM's token states into the model width.
- ``proprio.<name>``: per embodiment, a linear projector into ``proprio_tokens`` tokens (inputs
  standardised with statistics kept in buffers, so a checkpoint carries them).
- ``trunk``: the shared scaffold, pre-norm transformer encoder layers over
  [readout, embodiment, proprio..., visual..., text...] with the text padding masked out of attention.
- ``embodiment.<name>``: a learned embodiment embedding, the token that says which body the trunk serves.
- Heads: ``qa_head`` reads the readout token's output; ``heads.<name>`` reads the embodiment
  token's output (a per-embodiment query) and holds the state-independent log-std.

Everything shared is named ``vision.``, ``text_proj.``, ``trunk.``, ``trunk_norm.``, ``readout``, ``segment``,
``proprio_pos``, ``qa_head.``;
everything one embodiment owns is named ``embodiment.<name>``, ``proprio.<name>.`` or ``heads.<name>.``
(:meth:`SpatialBrain.owner_of`), so merging trunk task vectors never has to guess, and an
embodiment's parts receive no gradient from another embodiment's batches. Adding an embodiment is
config only (``SpatialBrainConfig.embodiments``).

Size: width 128, 4 layers, 4 heads, ffn 512, about 1.06 M parameters. The trunk's linear layers
cost ~0.2 M multiply-adds per token per layer, so the token count sets the price: a query is 31
tokens (2 special, 1 proprio, 16 visual, ~12 text). An 8x8 visual grid (64 tokens) would
more than double both the query latency (over the 15 ms budget on one loaded core) and the training
step. With 16 tokens of 8x8 pixels, position inside a patch is left to the token's 128 conv
channels, which see pixel offsets through their 3x3 kernels.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
from torch import nn

from policies.typed import check_field_types

TASKS = ("qa", "act")
PER_EMBODIMENT = ("embodiment", "proprio", "heads")  # the top-level names of the parts one embodiment owns
PIXEL_MEAN, PIXEL_STD = 0.5, 0.25  # uint8 / 255 -> roughly zero-mean, unit-variance input for a conv net trained from scratch
STD_CLIP = (1e-2, 10.0)  # proprio standardisation std, as MT-ACT: a constant input must not blow up
EMBODIMENT_KEYS = ("proprio_dim", "goal_dim", "goal_scale", "goal_center", "pointing_fovy_deg")
POINT_RANGE = (0.05, 20.0)  # m, the distance along a pointing ray a patch may propose

# Upper bounds of the sizes: far above any model here; beyond them a config is a typo.
LIMITS = {"image_size": 1024, "width": 4096, "layers": 64, "heads": 64, "ffn": 16384, "text_dim": 8192,
          "max_text_tokens": 4096, "proprio_tokens": 64, "n_answers": 100_000}
DIM_LIMIT = 4096  # largest proprio_dim / goal_dim


def default_embodiments() -> dict[str, dict]:
    """The three bodies of this stack; see :class:`SpatialBrainConfig.embodiments` for what each number is."""
    return {
        # uav_find's state: world position (3) and velocity (3), attitude (9), gyro (3), last action (4)
        # (envs/uav/find.py). The goal is pointed at in the onboard camera (70 deg vertical field of view)
        # and lifted along the pixel's ray; a residual within 1 m (the goal is 0.5 m above a landmark's top).
        "uav": {"proprio_dim": 22, "goal_dim": 3, "goal_scale": [1.0, 1.0, 1.0], "pointing_fovy_deg": 70.0},
        # swimmer_find's state (envs/swimmer/find.py): 5 joint angles, 18 body velocities, head xy and heading,
        # the clock. The goal is pointed at in the head camera (80 deg); a residual within 0.5 m.
        "swimmer": {"proprio_dim": 28, "goal_dim": 3, "goal_scale": [0.5, 0.5, 0.5], "pointing_fovy_deg": 80.0},
        # kitchen_point's state: 7 arm joints and the gripper opening. The interaction point is pointed at in
        # the fixed scene camera (45 deg); it lies on the object, so the residual stays within 10 cm.
        "kitchen": {"proprio_dim": 8, "goal_dim": 3, "goal_scale": [0.1, 0.1, 0.1], "pointing_fovy_deg": 45.0},
        # the generic QA arenas (envs/generic_scene.py): the agent's pose seen from the camera (7), no body to move
        "generic": {"proprio_dim": 7, "goal_dim": 0},
    }


@dataclass
class SpatialBrainConfig:
    """Sizes and the embodiments; defaults fit two CPU cores (about 1.06 M parameters)."""

    image_size: int = 32  # pixels per side; with three stride-2 convs, a 4x4 grid of patch tokens
    depth: bool = True  # read a depth image beside RGB (two more input channels: depth and depth-valid)
    depth_max: float = 10.0  # m; depth is clipped here then scaled to [0, 1]: the UAV find camera's range (10 m)
    vision_channels: tuple[int, ...] = (32, 64, 128)  # one stride-2 3x3 conv each: 32 px -> 4x4 patches of 8 px
    width: int = 128  # token width of the trunk; 128 is the smallest that still gives 4 heads of 32 channels
    layers: int = 4  # trunk depth; query latency and step time grow linearly with it, 4 fits the 15 ms budget
    heads: int = 4  # attention heads (width / heads = 32 channels each)
    ffn: int = 512  # feed-forward width, the usual 4 x width
    dropout: float = 0.0  # 0: the QA data are generated without end, and GRPO's ratio needs a deterministic policy
    text_dim: int = 384  # MiniLM-L6's hidden size (token_states)
    max_text_tokens: int = 24  # longest text read (with [CLS]/[SEP]); the longest kitchen instruction is 14
    proprio_tokens: int = 1  # tokens per proprio vector; proprio is <= 25 numbers, far fewer than a token's width
    n_answers: int = 64  # closed QA vocabulary: room for directions, distance bins, yes/no, counts, objects
    log_std_init: float = -1.0  # goal std starts at e^-1 = 0.37 x the goal scale: broad enough for GRPO to explore
    log_std_min: float = -5.0  # std >= 0.7% of the scale: NLL training cannot collapse the Gaussian to a spike
    log_std_max: float = 0.0  # std <= the scale: wider would put most samples outside the bounded mean's range
    # name -> {"proprio_dim": P_e, "goal_dim": G_e, "goal_scale": G_e positive numbers (or one),
    # "goal_center": G_e numbers (optional, zeros)}; the goal mean is center + scale * tanh(raw), in metres.
    embodiments: dict = field(default_factory=default_embodiments)

    def __post_init__(self):
        self.vision_channels = tuple(self.vision_channels)
        check_field_types(self)
        for name, cap in LIMITS.items():
            if not 1 <= getattr(self, name) <= cap:
                raise ValueError(f"SpatialBrainConfig.{name} must be 1..{cap}, got {getattr(self, name)}")
        if self.width % self.heads:
            raise ValueError(f"SpatialBrainConfig.width ({self.width}) must be a multiple of heads ({self.heads})")
        if not self.vision_channels or any(not 1 <= c <= 4096 for c in self.vision_channels):
            raise ValueError(f"SpatialBrainConfig.vision_channels must be 1..4096 each, got {self.vision_channels}")
        stride = 2 ** len(self.vision_channels)
        if self.image_size % stride:
            raise ValueError(f"SpatialBrainConfig.image_size ({self.image_size}) must be a multiple of {stride} "
                             f"(one stride-2 conv per vision_channels entry)")
        if not self.depth_max > 0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"SpatialBrainConfig: depth_max must be > 0 and dropout in [0, 1), got "
                             f"{self.depth_max}, {self.dropout}")
        if not self.n_answers >= 2:
            raise ValueError(f"SpatialBrainConfig.n_answers must be at least 2, got {self.n_answers}")
        if not self.log_std_min <= self.log_std_init <= self.log_std_max:
            raise ValueError(f"SpatialBrainConfig: need log_std_min <= log_std_init <= log_std_max, got "
                             f"{self.log_std_min}, {self.log_std_init}, {self.log_std_max}")
        if not self.embodiments:
            raise ValueError("SpatialBrainConfig.embodiments must name at least one embodiment")
        self.embodiments = {name: _embodiment_spec(name, spec) for name, spec in self.embodiments.items()}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["vision_channels"] = list(self.vision_channels)
        d["embodiments"] = copy.deepcopy(self.embodiments)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SpatialBrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown SpatialBrainConfig keys: {', '.join(unknown)}")
        return cls(**copy.deepcopy(d))


def _numbers(value, n: int, what: str) -> list[float]:
    """One number or a list of ``n`` numbers -> a list of ``n`` floats; ValueError naming ``what``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = [value] * n
    if (not isinstance(value, list | tuple) or len(value) != n
            or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
        raise ValueError(f"{what} must be a number or a list of {n} finite numbers, got {value!r}")
    return [float(v) for v in value]


def _embodiment_spec(name, spec) -> dict:
    """One embodiment's entry, checked and completed (goal_scale and goal_center as full lists)."""
    where = f"SpatialBrainConfig.embodiments[{name!r}]"
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"embodiment names must be identifiers (they name parameters), got {name!r}")
    if not isinstance(spec, dict):
        raise ValueError(f"{where} must be a mapping with {', '.join(EMBODIMENT_KEYS)}, got {spec!r}")
    unknown = sorted(set(spec) - set(EMBODIMENT_KEYS))
    missing = [k for k in ("proprio_dim", "goal_dim") if k not in spec]
    if unknown or missing:
        raise ValueError(f"{where}: " + (f"unknown keys {unknown}" if unknown else f"missing {missing}"))
    out = {}
    for key, low in (("proprio_dim", 1), ("goal_dim", 0)):
        v = spec[key]
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= DIM_LIMIT:
            raise ValueError(f"{where}.{key} must be an integer {low}..{DIM_LIMIT}, got {v!r}")
        out[key] = v
    g = out["goal_dim"]
    if g and "goal_scale" not in spec:
        raise ValueError(f"{where}: missing ['goal_scale']")
    out["goal_scale"] = _numbers(spec.get("goal_scale", 1.0), g, f"{where}.goal_scale")
    if not all(s > 0 for s in out["goal_scale"]):
        raise ValueError(f"{where}.goal_scale must be positive, got {out['goal_scale']}")
    out["goal_center"] = _numbers(spec.get("goal_center", 0.0), g, f"{where}.goal_center")
    fovy = spec.get("pointing_fovy_deg")
    if fovy is not None:
        if isinstance(fovy, bool) or not isinstance(fovy, int | float) or not 0 < fovy < 180:
            raise ValueError(f"{where}.pointing_fovy_deg must be a camera's vertical field of view in (0, 180) "
                             f"degrees, got {fovy!r}")
        if g != 3:
            raise ValueError(f"{where}: a pointing goal is a 3-D point in the camera frame, so goal_dim must be 3, "
                             f"got {g}")
        out["pointing_fovy_deg"] = float(fovy)
    return out


# ---------------------------------------------------------------- parts


def _group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups: batch statistics are noisy at the small batches a CPU trains with."""
    groups = min(8, channels)
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels)


class PatchEncoder(nn.Module):
    """RGB(-D) image -> a grid of patch tokens (B, g*g, width): strided convs, an MLP projector, 2-D positions.

    The CPU-scale stand-in for a ViT and its MLP projector: each stride-2 conv halves the grid, so a
    patch token sees its own 2^n x 2^n pixels and (through the 3x3 kernels) a margin around them.
    """

    def __init__(self, cfg: SpatialBrainConfig):
        super().__init__()
        in_ch = 5 if cfg.depth else 3  # RGB, depth, depth-valid
        convs: list[nn.Module] = []
        for ch in cfg.vision_channels:
            convs += [nn.Conv2d(in_ch, ch, 3, stride=2, padding=1), _group_norm(ch), nn.GELU()]
            in_ch = ch
        self.convs = nn.Sequential(*convs)
        self.grid = cfg.image_size // 2 ** len(cfg.vision_channels)
        self.projector = nn.Sequential(nn.Linear(in_ch, cfg.width), nn.GELU(), nn.Linear(cfg.width, cfg.width))
        self.pos = nn.Parameter(torch.randn(self.grid * self.grid, cfg.width) * 0.02)  # row-major over the grid

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        feats = self.convs(pixels)  # (B, C, g, g)
        return self.projector(feats.flatten(2).transpose(1, 2)) + self.pos


class ProprioProjector(nn.Module):
    """One embodiment's proprio (B, P_e), standardised with its buffers, -> (B, k, width)."""

    def __init__(self, dim: int, width: int, n_tokens: int):
        super().__init__()
        self.n_tokens, self.width = n_tokens, width
        self.linear = nn.Linear(dim, n_tokens * width)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def forward(self, proprio: torch.Tensor) -> torch.Tensor:
        x = (proprio - self.mean) / self.std
        return self.linear(x).view(-1, self.n_tokens, self.width)


class GoalHead(nn.Module):
    """One embodiment's goal Gaussian: mean center + scale * tanh(MLP(token)), std scale * exp(clamped log_std).

    The log-std is a learned, state-independent parameter in units of the goal scale (so one init fits
    bodies of any size); it is clamped to [log_std_min, log_std_max] wherever it is read.
    """

    def __init__(self, width: int, spec: dict, cfg: SpatialBrainConfig):
        super().__init__()
        g = spec["goal_dim"]
        self.mlp = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Linear(width, g))
        with torch.no_grad():
            self.mlp[-1].weight.mul_(0.01)  # start near the centre of the range, away from tanh's flat tails
            self.mlp[-1].bias.zero_()
        self.log_std = nn.Parameter(torch.full((g,), float(cfg.log_std_init)))
        self.register_buffer("scale", torch.tensor(spec["goal_scale"], dtype=torch.float32), persistent=False)
        self.register_buffer("center", torch.tensor(spec["goal_center"], dtype=torch.float32), persistent=False)
        self.log_std_range = (cfg.log_std_min, cfg.log_std_max)

    def forward(self, token: torch.Tensor) -> torch.distributions.Normal:
        mean = self.center + self.scale * torch.tanh(self.mlp(token))
        std = self.scale * self.log_std.clamp(*self.log_std_range).exp()
        return torch.distributions.Normal(mean, std.expand_as(mean))


class PointingHead(nn.Module):
    """A goal pointed at in the camera image and lifted along its pixel ray: a 3-D point in the camera frame.

    Why: regressing metres from one pooled token must learn the camera's projection from data, and
    at 2-core budgets it stays about half a metre off. Here every patch token proposes a point on
    its own pixel ray (a sub-patch offset, a distance along the ray read from its depth channels,
    and a small free residual, e.g. "half a metre above the top"), and the embodiment token's query
    attends over the patches to pick the one the instruction names. The mean is the attention-weighted
    point, so the goal is exact in the pinhole geometry wherever the pointing is right. Camera frame
    as :mod:`envs.raycast_camera`: x right, y up, looking along -z. The embodiment's controller puts it
    in the world with the camera pose it knows. Same Gaussian interface as :class:`GoalHead`
    (``scale`` bounds the residual and is the std's unit).
    """

    def __init__(self, width: int, grid: int, spec: dict, cfg: SpatialBrainConfig):
        super().__init__()
        self.grid = grid
        self.query = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width))
        self.key = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width))
        # per patch: sub-patch offset (2), log distance along the ray (1), residual (3)
        self.point = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Linear(width, 6))
        with torch.no_grad():
            self.point[-1].weight.mul_(0.01)
            self.point[-1].bias.zero_()
            self.point[-1].bias[2] = math.log(2.0)  # start 2 m along each ray
        self.log_std = nn.Parameter(torch.full((3,), float(cfg.log_std_init)))
        self.register_buffer("scale", torch.tensor(spec["goal_scale"], dtype=torch.float32), persistent=False)
        self.register_buffer("center", torch.tensor(spec["goal_center"], dtype=torch.float32), persistent=False)
        half = math.tan(math.radians(spec["pointing_fovy_deg"]) / 2.0)  # square pixels: the same across
        centres = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid * 2.0 - 1.0  # -1..1 over the image
        rows, cols = torch.meshgrid(-centres, centres, indexing="ij")  # row 0 is the top: +y up
        self.register_buffer("patch_xy", torch.stack([cols, rows], -1).reshape(-1, 2), persistent=False)
        self.half_tan = half
        self.log_std_range = (cfg.log_std_min, cfg.log_std_max)

    def forward(self, token: torch.Tensor, patches: torch.Tensor) -> torch.distributions.Normal:
        return self.parts(token, patches)[0]

    def patch_of(self, point: torch.Tensor) -> torch.Tensor:
        """The patch whose pixels a camera-frame point (B, 3) projects into (row-major), -1 outside the image or behind."""
        ahead = -point[:, 2]
        xy = point[:, :2] / ahead.clamp_min(1e-6)[:, None] / self.half_tan  # -1..1 over the image
        cell = ((xy + 1.0) / 2.0 * self.grid).floor().long()
        col, row = cell[:, 0], self.grid - 1 - cell[:, 1]  # +y up, row 0 at the top
        inside = (ahead > 1e-6) & (col >= 0) & (col < self.grid) & (row >= 0) & (row < self.grid)
        return torch.where(inside, row * self.grid + col, -1)

    def parts(self, token: torch.Tensor, patches: torch.Tensor):
        """(the goal Gaussian, pointing logits (B, K), each patch's proposed point (B, K, 3)): the last two for
        supervising the pointing itself beside the goal's likelihood."""
        d = token.shape[-1]
        logits = torch.einsum("bd,bkd->bk", self.query(token), self.key(patches)) / math.sqrt(d)
        raw = self.point(patches)  # (B, K, 6)
        xy = self.patch_xy + torch.tanh(raw[..., :2]) * (1.5 / self.grid)  # may reach half a patch beyond its own
        ray = torch.cat([xy * self.half_tan, -torch.ones_like(xy[..., :1])], -1)
        ray = ray / ray.norm(dim=-1, keepdim=True)
        distance = raw[..., 2].clamp(math.log(POINT_RANGE[0]), math.log(POINT_RANGE[1])).exp()
        points = ray * distance[..., None] + self.scale * torch.tanh(raw[..., 3:])
        points = self.center + points
        mean = torch.einsum("bk,bkc->bc", torch.softmax(logits, -1), points)
        std = self.scale * self.log_std.clamp(*self.log_std_range).exp()
        return torch.distributions.Normal(mean, std.expand_as(mean)), logits, points


# ---------------------------------------------------------------- model


class SpatialBrain(nn.Module):
    """The network; see the module docstring for the batch it reads and how its parameters are named."""

    SEGMENTS = 5  # learned type vectors: readout, embodiment, proprio, vision, text

    def __init__(self, config: SpatialBrainConfig):
        super().__init__()
        cfg = self.config = config
        d = cfg.width
        self.vision = PatchEncoder(cfg)
        self.text_proj = nn.Sequential(nn.LayerNorm(cfg.text_dim), nn.Linear(cfg.text_dim, d), nn.GELU(),
                                       nn.Linear(d, d))
        self.readout = nn.Parameter(torch.randn(d) * 0.02)
        self.segment = nn.Parameter(torch.randn(self.SEGMENTS, d) * 0.02)
        self.proprio_pos = nn.Parameter(torch.randn(cfg.proprio_tokens, d) * 0.02)
        self.trunk = nn.ModuleList(
            nn.TransformerEncoderLayer(d, cfg.heads, cfg.ffn, cfg.dropout, activation="gelu", batch_first=True,
                                       norm_first=True)
            for _ in range(cfg.layers))
        self.trunk_norm = nn.LayerNorm(d)  # pre-norm layers leave the residual stream unnormalised
        self.qa_head = nn.Linear(d, cfg.n_answers)
        self.embodiment = nn.ParameterDict({name: nn.Parameter(torch.randn(d) * 0.02) for name in cfg.embodiments})
        self.proprio = nn.ModuleDict({name: ProprioProjector(spec["proprio_dim"], d, cfg.proprio_tokens)
                                      for name, spec in cfg.embodiments.items()})
        self.heads = nn.ModuleDict({
            name: PointingHead(d, self.vision.grid, spec, cfg) if "pointing_fovy_deg" in spec else GoalHead(d, spec, cfg)
            for name, spec in cfg.embodiments.items() if spec["goal_dim"]})  # goal_dim 0: a body that only answers

    # ----------------------------------------------------------- naming

    @property
    def embodiment_names(self) -> tuple[str, ...]:
        return tuple(self.config.embodiments)

    def owner_of(self, param_name: str) -> str | None:
        """The embodiment that owns a parameter or buffer (a ``state_dict`` key), None for a shared one.

        ValueError for a name this model does not have, so a merge step cannot silently skip a typo.
        """
        if param_name not in {n for n, _ in self.named_parameters()} | {n for n, _ in self.named_buffers()}:
            raise ValueError(f"SpatialBrain has no parameter or buffer named {param_name!r}")
        top, _, rest = param_name.partition(".")
        if top in PER_EMBODIMENT:
            return rest.partition(".")[0]
        return None

    # ----------------------------------------------------------- inputs

    def _tensor(self, batch: dict, key: str) -> torch.Tensor:
        x = batch[key]
        return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))

    def _inputs(self, batch: dict):
        """Check the batch against the config -> (embodiment, pixels (B,C,S,S), proprio, text, text_pad)."""
        cfg = self.config
        if not isinstance(batch, dict):
            raise ValueError(f"a SpatialBrain batch is a dict, got {type(batch).__name__}")
        missing = [k for k in ("embodiment", "image", "proprio", "text", "text_mask") if k not in batch]
        if missing:
            raise ValueError(f"the batch lacks {', '.join(missing)}")
        name = batch["embodiment"]
        if name not in cfg.embodiments:
            raise ValueError(f"unknown embodiment {name!r}; this brain knows {', '.join(cfg.embodiments)}")
        device = self.readout.device
        s = cfg.image_size
        image = self._tensor(batch, "image")
        if image.dtype != torch.uint8 or image.ndim != 4 or tuple(image.shape[1:]) != (s, s, 3):
            raise ValueError(f"image must be uint8 (B, {s}, {s}, 3), got {image.dtype} {tuple(image.shape)}")
        b = image.shape[0]
        pixels = (image.to(device).permute(0, 3, 1, 2).float() / 255.0 - PIXEL_MEAN) / PIXEL_STD
        depth = batch.get("depth")
        if depth is not None and not cfg.depth:
            raise ValueError("depth was given but this brain has no depth input (config.depth is false)")
        if cfg.depth:
            if depth is None:
                planes = pixels.new_zeros(b, 2, s, s)  # no depth: every pixel missing
            else:
                depth = self._tensor(batch, "depth")
                if not depth.is_floating_point() or tuple(depth.shape) != (b, s, s):
                    raise ValueError(f"depth must be float (B, {s}, {s}) metres with B = {b}, got "
                                     f"{depth.dtype} {tuple(depth.shape)}")
                depth = depth.to(device, torch.float32)
                valid = torch.isfinite(depth) & (depth > 0)
                scaled = torch.where(valid, depth, 0.0).clamp(0.0, cfg.depth_max) / cfg.depth_max
                planes = torch.stack([scaled, valid.float()], dim=1)
            pixels = torch.cat([pixels, planes], dim=1)
        p = cfg.embodiments[name]["proprio_dim"]
        proprio = self._tensor(batch, "proprio")
        if not proprio.is_floating_point() or tuple(proprio.shape) != (b, p):
            raise ValueError(f"proprio for {name} must be float (B, {p}) with B = {b}, got "
                             f"{proprio.dtype} {tuple(proprio.shape)}")
        text, mask = self._tensor(batch, "text"), self._tensor(batch, "text_mask")
        if (not text.is_floating_point() or text.ndim != 3 or text.shape[0] != b or text.shape[2] != cfg.text_dim
                or not 1 <= text.shape[1] <= cfg.max_text_tokens):
            raise ValueError(f"text must be float (B, L, {cfg.text_dim}) with B = {b} and 1 <= L <= "
                             f"{cfg.max_text_tokens}, got {text.dtype} {tuple(text.shape)}")
        if mask.dtype != torch.bool or tuple(mask.shape) != tuple(text.shape[:2]):
            raise ValueError(f"text_mask must be bool {tuple(text.shape[:2])} (True = a real token), got "
                             f"{mask.dtype} {tuple(mask.shape)}")
        return name, pixels, proprio.to(device, torch.float32), text.to(device, torch.float32), ~mask.to(device)

    # ----------------------------------------------------------- forward

    def encode(self, batch: dict) -> tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run the trunk -> (embodiment, readout output (B, width), embodiment-token output (B, width),
        visual tokens' outputs (B, g*g, width))."""
        name, pixels, proprio, text, text_pad = self._inputs(batch)
        b = pixels.shape[0]
        # Padding columns no sentence in the batch reaches cost a quarter of a training step and change
        # nothing (padded keys are masked, padded queries' outputs unread): drop them.
        real = (~text_pad).any(0).nonzero()
        longest = int(real.max()) + 1 if len(real) else 1
        text, text_pad = text[:, :longest], text_pad[:, :longest]
        seg = self.segment
        head = torch.stack([self.readout + seg[0], self.embodiment[name] + seg[1]])[None].expand(b, -1, -1)
        tokens = torch.cat([
            head,
            self.proprio[name](proprio) + self.proprio_pos + seg[2],
            self.vision(pixels) + seg[3],
            self.text_proj(text) + seg[4],
        ], dim=1)
        n_fixed = tokens.shape[1] - text.shape[1]
        pad = torch.cat([text_pad.new_zeros(b, n_fixed), text_pad], dim=1)
        for layer in self.trunk:
            tokens = layer(tokens, src_key_padding_mask=pad)
        first_visual = 2 + self.config.proprio_tokens
        out = self.trunk_norm(tokens[:, :first_visual + self.vision.grid ** 2])
        return name, out[:, 0], out[:, 1], out[:, first_visual:]

    def qa_logits(self, batch: dict) -> torch.Tensor:
        """(B, n_answers) logits over the closed answer vocabulary."""
        _, readout, _, _ = self.encode(batch)
        return self.qa_head(readout)

    def goal_distribution(self, batch: dict) -> torch.distributions.Normal:
        """The batch's embodiment's goal Gaussian, (B, goal_dim): for BC (NLL or MSE on ``.mean``) and GRPO."""
        if batch.get("embodiment") not in self.heads:
            raise ValueError(f"embodiment {batch.get('embodiment')!r} has no goal head (goal_dim 0 or unknown); "
                             f"goal heads: {', '.join(self.heads)}")
        name, _, body, patches = self.encode(batch)
        head = self.heads[name]
        return head(body, patches) if isinstance(head, PointingHead) else head(body)

    def pointing(self, batch: dict):
        """For a pointing head: (goal Gaussian, pointing logits (B, K), proposed points (B, K, 3), the head)."""
        name, _, body, patches = self.encode(batch)
        head = self.heads[name]
        if not isinstance(head, PointingHead):
            raise ValueError(f"embodiment {name!r} has a regression goal head, not a pointing one")
        return (*head.parts(body, patches), head)

    def forward(self, batch: dict, task: str = "qa") -> torch.Tensor:
        """``qa``: (B, n_answers) logits; ``act``: (B, goal_dim) the goal (the Gaussian's bounded mean)."""
        if task == "qa":
            return self.qa_logits(batch)
        if task == "act":
            return self.goal_distribution(batch).mean
        raise ValueError(f"unknown task {task!r}; the spatial brain does {', '.join(TASKS)}")

    # ----------------------------------------------------------- the rest

    def set_proprio_normalization(self, embodiment: str, mean, std) -> None:
        """Standardise an embodiment's proprio with these statistics (its units); std clipped to [1e-2, 10]."""
        if embodiment not in self.proprio:
            raise ValueError(f"unknown embodiment {embodiment!r}; this brain knows {', '.join(self.proprio)}")
        proj = self.proprio[embodiment]
        for buf, value, what in ((proj.mean, mean, "mean"), (proj.std, std, "std")):
            t = torch.as_tensor(np.asarray(value), dtype=torch.float32).reshape(-1)
            if t.shape != buf.shape:
                raise ValueError(f"{embodiment} proprio {what} has {t.numel()} entries, the brain expects "
                                 f"{buf.numel()}")
            buf.copy_(t.clamp(*STD_CLIP) if what == "std" else t)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

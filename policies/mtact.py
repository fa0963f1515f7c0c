"""MT-ACT: RoboAgent's multi-task action-chunking transformer, scaled for CPU training.

ACT is a conditional VAE: a transformer encoder reads the camera features, the proprioception
and a latent style variable z; a decoder turns ``chunk`` learned queries into the next ``chunk``
actions. During training a second encoder infers z from the demonstrated chunk; at inference
z = 0. MT-ACT adds a language vector that FiLM-modulates the vision backbone (ResNet stages 2-4)
and enters the encoder as one more token. Our defaults are small (hidden 256, ResNet width 32,
96x96 images) so the policy trains from scratch on a CPU.

The model takes raw proprio / object state / actions in env units and normalises them with
statistics kept in buffers, so a checkpoint carries them. It predicts normalised actions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from envs.kitchen import instructions
from policies.typed import check_field_types

STD_CLIP = (1e-2, 10.0)  # RoboAgent's clip on normalisation std
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZED = ("proprio", "object", "action")


# Upper bounds of the sizes: far above any model here; a config beyond them is a typo that would take minutes
# (layers are built one by one) before the parameter count could refuse it.
LIMITS = {"proprio_dim": 4096, "object_dim": 4096, "action_dim": 256, "chunk": 1000, "hidden": 8192, "heads": 256,
          "ffn": 65536, "enc_layers": 64, "dec_layers": 64, "latent": 4096, "backbone_width": 512, "lang_dim": 8192,
          "image_size": 1024}


@dataclass
class MTACTConfig:
    """Sizes and switches; defaults are the CPU-scaled model (the original: hidden 512, ffn 3200, width 64).

    ``cameras=()`` is the state-only variant (object state as one token, no backbone). ``cvae=False``
    drops the CVAE encoder (z = 0, no KL): with ``chunk=1`` this is single-step BC. ``norm="group"``
    because the backbone trains from scratch on small CPU batches, where batch statistics are noisy
    (RoboAgent also starts from random weights but trains with batch 64 on a GPU). ``decoder_quirk``
    reproduces ACT/RoboAgent's use of the first decoder layer's output only.
    """

    cameras: tuple[str, ...] = ("scene", "wrist")
    image_size: int = 96
    proprio_dim: int = 8
    object_dim: int = 17
    action_dim: int = 8
    chunk: int = 20
    hidden: int = 256
    heads: int = 8
    ffn: int = 1024
    enc_layers: int = 4
    dec_layers: int = 7
    cvae_layers: int = 4
    dropout: float = 0.1
    latent: int = 32
    cvae: bool = True
    kl_weight: float = 10.0
    backbone_width: int = 32
    norm: str = "group"
    language: str = "minilm"
    lang_dim: int = 384
    decoder_quirk: bool = False

    def __post_init__(self):
        self.cameras = tuple(self.cameras)
        check_field_types(self)
        for name, cap in LIMITS.items():
            if not 1 <= int(getattr(self, name)) <= cap:
                raise ValueError(f"MTACTConfig.{name} must be 1..{cap}, got {getattr(self, name)}")
        if not 0 <= self.cvae_layers <= LIMITS["enc_layers"] or not 0.0 <= self.dropout < 1.0 or self.kl_weight < 0:
            raise ValueError(f"MTACTConfig: cvae_layers must be 0..{LIMITS['enc_layers']}, dropout in [0, 1) and "
                             f"kl_weight >= 0, got {self.cvae_layers}, {self.dropout}, {self.kl_weight}")
        if self.cvae and self.cvae_layers < 1:
            raise ValueError("MTACTConfig.cvae_layers must be positive when cvae is on")
        if self.hidden % self.heads:
            raise ValueError(f"MTACTConfig.hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        if self.norm not in ("group", "batch"):
            raise ValueError(f"MTACTConfig.norm must be 'group' or 'batch', not {self.norm!r}")
        if self.language not in ("minilm", "onehot"):
            raise ValueError(f"MTACTConfig.language must be 'minilm' or 'onehot', not {self.language!r}")
        if self.language == "minilm" and self.lang_dim != 384:
            raise ValueError(f"MTACTConfig.lang_dim must be 384 for MiniLM sentence embeddings, got {self.lang_dim}")
        if self.cameras and (self.hidden % 4 or self.image_size < 32):
            raise ValueError("with cameras, hidden must be a multiple of 4 and image_size at least 32")
        if len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"MTACTConfig.cameras has duplicates: {self.cameras}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["cameras"] = list(self.cameras)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> MTACTConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown MTACTConfig keys: {', '.join(unknown)}")
        return cls(**d)


# ---------------------------------------------------------------- positions


def sine_1d(n: int, dim: int) -> torch.Tensor:
    """(n, dim) fixed sinusoidal positions (sin on the first half of the channels, cos on the second)."""
    half = dim // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / max(half, 1))
    angle = torch.arange(n, dtype=torch.float32)[:, None] * freq
    return F.pad(torch.cat([angle.sin(), angle.cos()], dim=1), (0, dim - 2 * half))


def sine_2d(h: int, w: int, dim: int) -> torch.Tensor:
    """(h*w, dim) positions of a feature map: half the channels encode the row, half the column."""
    half = dim // 2
    rows = sine_1d(h, half)[:, None, :].expand(h, w, half)
    cols = sine_1d(w, dim - half)[None, :, :].expand(h, w, dim - half)
    return torch.cat([rows, cols], dim=2).reshape(h * w, dim)


# ---------------------------------------------------------------- vision


def _norm(which: str, channels: int) -> nn.Module:
    if which == "batch":
        return nn.BatchNorm2d(channels)
    groups = min(32, max(1, channels // 8))  # at least 8 channels per group at small widths
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels)


class FiLMBlock(nn.Module):
    """A ResNet BasicBlock whose second norm's output is modulated, (1 + gamma) * out + beta, before the skip."""

    def __init__(self, inplanes: int, planes: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.norm1 = _norm(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.norm2 = _norm(norm, planes)
        self.shortcut = nn.Identity()
        if stride != 1 or inplanes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), _norm(norm, planes))

    def forward(self, x: torch.Tensor, gamma: torch.Tensor | None = None, beta: torch.Tensor | None = None):
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        if gamma is not None:
            out = (1 + gamma[:, :, None, None]) * out + beta[:, :, None, None]
        return F.relu(out + self.shortcut(x))


class FiLMResNet(nn.Module):
    """ResNet-18 layout (stem + 4 stages of 2 blocks, widths w, 2w, 4w, 8w); language FiLM in stages 2-4.

    The FiLM projections start at zero, so at initialisation the net is the unconditioned ResNet.
    """

    BLOCKS = 2

    def __init__(self, width: int, lang_dim: int, norm: str):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False), _norm(norm, width), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        self.stages = nn.ModuleList()
        self.film = nn.ModuleList()  # one per stage; stage 1 gets an empty placeholder (no FiLM there)
        inplanes = width
        for i, planes in enumerate((width, 2 * width, 4 * width, 8 * width)):
            stride = 1 if i == 0 else 2
            blocks = [FiLMBlock(inplanes if b == 0 else planes, planes, stride if b == 0 else 1, norm)
                      for b in range(self.BLOCKS)]
            self.stages.append(nn.ModuleList(blocks))
            if i == 0:
                self.film.append(nn.Identity())
            else:
                proj = nn.Linear(lang_dim, self.BLOCKS * 2 * planes)
                nn.init.zeros_(proj.weight)
                nn.init.zeros_(proj.bias)
                self.film.append(proj)
            inplanes = planes
        self.out_channels = inplanes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor, lang: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage, film in zip(self.stages, self.film):
            if isinstance(film, nn.Linear):
                params = film(lang).chunk(2 * self.BLOCKS, dim=1)  # gamma_0, beta_0, gamma_1, beta_1
                for b, block in enumerate(stage):
                    x = block(x, params[2 * b], params[2 * b + 1])
            else:
                for block in stage:
                    x = block(x)
        return x


def image_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (..., H, W, 3) camera images -> float32 (..., 3, H, W) in [0, 1], the model's image input."""
    t = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
    if t.dtype != torch.uint8 or t.ndim < 3 or t.shape[-1] != 3:
        raise ValueError(f"expected uint8 images shaped (..., H, W, 3), got {t.dtype} {tuple(t.shape)}")
    return t.movedim(-1, -3).to(torch.float32).div_(255.0)


# ---------------------------------------------------------------- model


def _encoder_layers(cfg: MTACTConfig, n: int) -> nn.ModuleList:
    return nn.ModuleList(nn.TransformerEncoderLayer(cfg.hidden, cfg.heads, cfg.ffn, cfg.dropout, batch_first=True)
                         for _ in range(n))


class MTACT(nn.Module):
    """The policy network. Transformer layers are post-norm, as in ACT; positions are added to the input tokens.

    Encoder tokens: [z, proprio, language, image tokens (2-D sine + camera embedding) | object state].
    Decoder: ``chunk`` learned queries cross-attending the encoder output -> ``chunk`` actions.
    """

    def __init__(self, config: MTACTConfig):
        super().__init__()
        cfg = self.config = config
        d = cfg.hidden
        if cfg.cameras:
            self.backbone = FiLMResNet(cfg.backbone_width, cfg.lang_dim, cfg.norm)
            self.image_proj = nn.Conv2d(self.backbone.out_channels, d, 1)
            self.camera_embed = nn.Parameter(torch.randn(len(cfg.cameras), d) * 0.02)
            self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1), persistent=False)
            self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(3, 1, 1), persistent=False)
        else:
            self.object_proj = nn.Linear(cfg.object_dim, d)
        self.latent_proj = nn.Linear(cfg.latent, d)
        self.proprio_proj = nn.Linear(cfg.proprio_dim, d)
        self.lang_proj = nn.Linear(cfg.lang_dim, d)
        self.token_pos = nn.Parameter(torch.randn(3 if cfg.cameras else 4, d) * 0.02)  # z, proprio, lang(, object)
        self.encoder = _encoder_layers(cfg, cfg.enc_layers)
        self.queries = nn.Embedding(cfg.chunk, d)
        self.decoder = nn.ModuleList(
            nn.TransformerDecoderLayer(d, cfg.heads, cfg.ffn, cfg.dropout, batch_first=True)
            for _ in range(cfg.dec_layers))
        self.decoder_norm = nn.LayerNorm(d)
        self.action_head = nn.Linear(d, cfg.action_dim)
        if cfg.cvae:
            self.cvae_cls = nn.Parameter(torch.randn(1, 1, d) * 0.02)
            self.cvae_proprio = nn.Linear(cfg.proprio_dim, d)
            self.cvae_action = nn.Linear(cfg.action_dim, d)
            self.cvae_encoder = _encoder_layers(cfg, cfg.cvae_layers)
            self.cvae_out = nn.Linear(d, 2 * cfg.latent)
            self.register_buffer("cvae_pos", sine_1d(cfg.chunk + 2, d), persistent=False)
        for name, dim in (("proprio", cfg.proprio_dim), ("object", cfg.object_dim), ("action", cfg.action_dim)):
            self.register_buffer(f"{name}_mean", torch.zeros(dim))
            self.register_buffer(f"{name}_std", torch.ones(dim))

    # ----------------------------------------------------------- normalisation

    def set_normalization(self, stats: dict[str, np.ndarray]) -> None:
        """Set any of ``{proprio,object,action}_{mean,std}`` (env units); std is clipped to [1e-2, 10]."""
        for key, value in stats.items():
            name, _, which = key.rpartition("_")
            if name not in NORMALIZED or which not in ("mean", "std"):
                raise ValueError(f"unknown normalisation statistic {key!r}")
            buf = getattr(self, key)
            t = torch.as_tensor(np.asarray(value), dtype=torch.float32).reshape(-1)
            if t.shape != buf.shape:
                raise ValueError(f"{key} has {t.numel()} entries, the model expects {buf.numel()}")
            if which == "std":
                t = t.clamp(*STD_CLIP)
            buf.copy_(t)

    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return (actions - self.action_mean) / self.action_std

    def denormalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Predicted (normalised) actions -> env units."""
        return actions * self.action_std + self.action_mean

    # ----------------------------------------------------------- parts

    def _check(self, images, proprio, object_state, lang, actions, pad) -> None:
        cfg = self.config
        b = proprio.shape[0]
        if proprio.shape != (b, cfg.proprio_dim):
            raise ValueError(f"proprio must be (B, {cfg.proprio_dim}), got {tuple(proprio.shape)}")
        if lang.shape != (b, cfg.lang_dim):
            raise ValueError(f"lang must be (B, {cfg.lang_dim}) ({cfg.language}), got {tuple(lang.shape)}")
        if cfg.cameras:
            want = (b, len(cfg.cameras), 3, cfg.image_size, cfg.image_size)
            if images is None or tuple(images.shape) != want or not images.is_floating_point():
                got = None if images is None else tuple(images.shape)
                raise ValueError(f"images must be float (B, n_cam, 3, H, W) = {want} for cameras {cfg.cameras}, got {got}")
        elif object_state is None or object_state.shape != (b, cfg.object_dim):
            got = None if object_state is None else tuple(object_state.shape)
            raise ValueError(f"the state-only MT-ACT needs object_state (B, {cfg.object_dim}), got {got}")
        if actions is not None and actions.shape != (b, cfg.chunk, cfg.action_dim):
            raise ValueError(f"actions must be (B, {cfg.chunk}, {cfg.action_dim}), got {tuple(actions.shape)}")
        if pad is not None and pad.shape != (b, cfg.chunk):
            raise ValueError(f"pad must be (B, {cfg.chunk}), got {tuple(pad.shape)}")

    def image_tokens(self, images: torch.Tensor, lang: torch.Tensor) -> torch.Tensor:
        """(B, n_cam, 3, H, W) in [0, 1] -> (B, n_cam*h*w, hidden) tokens with positions; one shared backbone."""
        b, n_cam = images.shape[:2]
        x = (images.flatten(0, 1) - self.pixel_mean) / self.pixel_std
        feats = self.image_proj(self.backbone(x, lang.repeat_interleave(n_cam, dim=0)))  # (B*n_cam, d, h, w)
        _, d, h, w = feats.shape
        pos = sine_2d(h, w, d).to(feats)[None] + self.camera_embed[:, None, :]  # (n_cam, h*w, d)
        tokens = feats.flatten(2).transpose(1, 2).reshape(b, n_cam, h * w, d) + pos
        return tokens.reshape(b, n_cam * h * w, d)

    def encode_latent(self, proprio_n: torch.Tensor, actions_n: torch.Tensor, pad: torch.Tensor):
        """CVAE posterior q(z | proprio, chunk) -> (mu, logvar); padded steps are masked out of attention."""
        b = proprio_n.shape[0]
        x = torch.cat([self.cvae_cls.expand(b, -1, -1), self.cvae_proprio(proprio_n)[:, None],
                       self.cvae_action(actions_n)], dim=1) + self.cvae_pos
        mask = torch.cat([torch.zeros(b, 2, dtype=torch.bool, device=pad.device), pad], dim=1)
        for layer in self.cvae_encoder:
            x = layer(x, src_key_padding_mask=mask)
        mu, logvar = self.cvae_out(x[:, 0]).chunk(2, dim=1)
        return mu, logvar

    def decode(self, memory: torch.Tensor) -> torch.Tensor:
        """Learned queries -> hidden states; with ``decoder_quirk`` the first layer's output (ACT's bug).

        Under the quirk the later layers still run, as in ACT, so its cost and parameter count are the original's.
        """
        x = self.queries.weight[None].expand(memory.shape[0], -1, -1)
        outputs = []
        for layer in self.decoder:
            x = layer(x, memory)
            outputs.append(x)
        return self.decoder_norm(outputs[0] if self.config.decoder_quirk else outputs[-1])

    # ----------------------------------------------------------- API

    def forward(self, images, proprio, object_state, lang, actions=None, pad=None):
        """-> (normalised action chunk (B, k, A), mu, logvar); mu/logvar are None without a CVAE pass.

        With ``actions`` (training) z is sampled from the CVAE posterior (its mean in eval mode);
        without them z = 0. ``pad`` (B, k) marks padded chunk steps (True = padding). ``images`` is None
        for the state-only variant; ``object_state`` is only read by it (with cameras it may be None).
        """
        cfg = self.config
        self._check(images, proprio, object_state, lang, actions, pad)
        b = proprio.shape[0]
        proprio_n = (proprio - self.proprio_mean) / self.proprio_std
        mu = logvar = None
        if cfg.cvae and actions is not None:
            pad = torch.zeros(b, cfg.chunk, dtype=torch.bool, device=proprio.device) if pad is None else pad.bool()
            actions_n = self.normalize_actions(actions).masked_fill(pad[..., None], 0.0)
            mu, logvar = self.encode_latent(proprio_n, actions_n, pad)
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if self.training else mu
        else:
            z = proprio.new_zeros(b, cfg.latent)
        extra = [self.latent_proj(z), self.proprio_proj(proprio_n), self.lang_proj(lang)]
        if not cfg.cameras:
            extra.append(self.object_proj((object_state - self.object_mean) / self.object_std))
        tokens = torch.stack(extra, dim=1) + self.token_pos
        if cfg.cameras:
            tokens = torch.cat([tokens, self.image_tokens(images, lang)], dim=1)
        for layer in self.encoder:
            tokens = layer(tokens)
        return self.action_head(self.decode(tokens)), mu, logvar

    def loss(self, images, proprio, object_state, lang, actions, pad=None) -> dict[str, torch.Tensor]:
        """L1 on unpadded steps (normalised units) + kl_weight * KL(q(z) || N(0, I)), ACT's objective."""
        pred, mu, logvar = (None if t is None else t.float()  # the loss in fp32, also under bf16 autocast
                            for t in self(images, proprio, object_state, lang, actions, pad))
        valid = ~pad.bool() if pad is not None else torch.ones(pred.shape[:2], dtype=torch.bool, device=pred.device)
        target = self.normalize_actions(actions).masked_fill(~valid[..., None], 0.0)  # no NaN from padding
        err = torch.where(valid[..., None], (pred - target).abs(), 0.0)
        l1 = err.sum() / (valid.sum().clamp(min=1) * pred.shape[-1])
        if mu is None:
            kl = pred.new_zeros(())
        else:
            kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).sum(dim=1).mean()
        return {"loss": l1 + self.config.kl_weight * kl, "l1": l1, "kl": kl}

    def predict_chunk(self, images, proprio, object_state, lang) -> torch.Tensor:
        """(B, k, A) actions in env units, z = 0, no dropout, no grad; the training flag is restored."""
        images, proprio, object_state, lang = (None if x is None else torch.as_tensor(x, dtype=torch.float32)
                                               for x in (images, proprio, object_state, lang))
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                pred, _, _ = self(images, proprio, object_state, lang)
        finally:
            self.train(was_training)
        return self.denormalize_actions(pred)

    def parameter_count(self) -> int:
        """All parameters, including decoder layers the quirk leaves unused."""
        return sum(p.numel() for p in self.parameters())


# ---------------------------------------------------------------- what it reads

def observation_description(config: MTACTConfig) -> dict:
    """The Dict observation keys this model reads (its bundle's ``observation``): cameras and proprio,
    or proprio and object state for the state-only variant, and the instruction's words."""
    keys = {cam: {"shape": [config.image_size, config.image_size, 3], "dtype": "uint8"} for cam in config.cameras}
    keys["proprio"] = {"shape": [config.proprio_dim], "dtype": "float64"}
    if not config.cameras:
        keys["object_state"] = {"shape": [config.object_dim], "dtype": "float64"}
    keys["instruction"] = {"text": instructions.MAX_CHARS}
    return {"keys": keys}

"""
model.py: the video diffusion transformer (DiT) of svi, written from scratch.

It predicts the rectified-flow velocity of a whole clip from the noisy clip, the flow time t, the
conditioning frames, a prompt and an optional control stream:

    v_hat = VideoDiT(x_t, t, cond, prompt tokens, control)      # all shapes [B, C, T, H, W]

Notable features: spatio-temporal patches (patch_t frames x patch_s x patch_s pixels), one token
each, under full attention with 3-D rotary positions, as Wan; adaLN-Zero blocks (DiT, Peebles &
Xie 2023): flow time and prompt modulate every block, and the output layer starts at zero, so an
untrained model predicts v = 0 exactly; conditioning on channels, as Wan image-to-video
(condition(): the motion frames, then the anchor or zeros); a byte-level text encoder trained
from scratch, its summary of the prompt joining the flow time as DiT's class label does; an
optional per-frame control vector (the paper's "skeleton") added to the tokens of its frames.

Shape letters: B batch, C channels, T frames, H/W height/width, N tokens, D width, L text bytes.
Try it: python model.py   (prints the parameter count of every preset)
"""
import math
import os
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from flow import v_from_x0


@dataclass
class DiTConfig:
    width: int = 128          # D, the token width
    depth: int = 4            # number of DiT blocks
    heads: int = 4            # attention heads (head size = width // heads)
    mlp_ratio: float = 4.0    # hidden width of the MLPs, as a multiple of D
    frames: int = 8           # T, frames per clip
    resolution: int = 32      # H = W, pixels
    channels: int = 3         # C, RGB
    patch_t: int = 2          # frames per token
    patch_s: int = 4          # pixels per token side
    text_len: int = 64        # prompt bytes kept (longer prompts are cut)
    text_width: int = 128     # width of the text encoder
    text_depth: int = 2       # transformer layers of the text encoder
    control_dim: int = 2      # size of the per-frame control vector (a keypoint x, y)
    rope: bool = True         # 3-D rotary positions in attention, on top of the sinusoidal ones
    prediction: str = "v"     # the output: "v", or "x" the clean clip (Li & He 2025; v_from_x0)
    long_skip: bool = False   # U-ViT's long skip: the input tokens joined to the last block's
    out_conv: bool = False    # U-ViT's 3x3 convolution on the output frames


# The DiT paper's sizes (S, B, L, XL); T is the tiny one that trains on a laptop CPU.
PRESETS = {
    "T": dict(width=128, depth=4, heads=4),
    "S": dict(width=384, depth=12, heads=6),
    "B": dict(width=768, depth=12, heads=12),
    "L": dict(width=1024, depth=24, heads=16),
    "XL": dict(width=1152, depth=28, heads=16),
}

BOS, PAD = 256, 257  # byte ids go 0..255; a begin token every prompt has, and padding


def tokenize(prompts: list[str], text_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """UTF-8 bytes of each prompt, cut to text_len, after a BOS token. Any string is accepted:
    the empty prompt (used for classifier-free guidance) is BOS alone. -> ids, mask [B, L + 1]."""
    ids = torch.full((len(prompts), text_len + 1), PAD, dtype=torch.long)
    ids[:, 0] = BOS
    for i, prompt in enumerate(prompts):
        data = prompt.encode("utf-8", errors="replace")[:text_len]
        ids[i, 1:1 + len(data)] = torch.tensor(list(data), dtype=torch.long)
    return ids, ids != PAD


def condition(motion: torch.Tensor, anchor: torch.Tensor | None, frames: int) -> torch.Tensor:
    """The conditioning input [mask, cond]: motion [B, C, m, H, W] in the first m frame slots,
    then the anchor [B, C, H, W] repeated (shot mode) or zeros (anchor None, film mode).
    Returns [B, C + 1, T, H, W]."""
    B, C, m, H, W = motion.shape
    rest = torch.zeros(B, C, frames - m, H, W, device=motion.device, dtype=motion.dtype)
    if anchor is not None:
        rest = rest + anchor[:, :, None]  # [B, C, 1, H, W] broadcast over the free slots
    cond = torch.cat([motion, rest], dim=2)  # [B, C, T, H, W]
    mask = torch.zeros(B, 1, frames, H, W, device=motion.device, dtype=motion.dtype)
    mask[:, :, :m] = 1.0
    return torch.cat([mask, cond], dim=1)  # [B, C + 1, T, H, W]


# -----------------------------------------------------------------------------
# Patches and positions

def patchify(x: torch.Tensor, pt: int, ps: int) -> torch.Tensor:
    """[B, C, T, H, W] -> [B, N, pt * ps * ps * C], tokens in (frame, row, column) order."""
    B, C, T, H, W = x.shape
    x = x.reshape(B, C, T // pt, pt, H // ps, ps, W // ps, ps)  # [B, C, t, pt, h, ps, w, ps]
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)                       # [B, t, h, w, pt, ps, ps, C]
    return x.reshape(B, (T // pt) * (H // ps) * (W // ps), pt * ps * ps * C)


def unpatchify(x: torch.Tensor, C: int, T: int, H: int, W: int, pt: int, ps: int) -> torch.Tensor:
    """The inverse of patchify: [B, N, pt * ps * ps * C] -> [B, C, T, H, W]."""
    B = x.shape[0]
    x = x.reshape(B, T // pt, H // ps, W // ps, pt, ps, ps, C)  # [B, t, h, w, pt, ps, ps, C]
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)                       # [B, C, t, pt, h, ps, w, ps]
    return x.reshape(B, C, T, H, W)


def sincos(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer sinusoids of positions [N] -> [N, dim] (dim even)."""
    half = torch.arange(dim // 2, dtype=torch.float32, device=positions.device)  # [dim / 2]
    freqs = torch.exp(-math.log(10000.0) * half / (dim // 2))
    angles = positions.float()[:, None] * freqs[None]  # [N, dim / 2]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def position_embedding(t: int, h: int, w: int, width: int) -> torch.Tensor:
    """Fixed 3-D sinusoidal positions of a t x h x w token grid -> [1, N, width]: a third of the
    channels each for frame, row and column (the remainder stays zero)."""
    d = (width // 6) * 2
    grid = torch.stack(torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w),
                                      indexing="ij"), dim=-1).reshape(-1, 3)  # [N, 3]
    emb = torch.cat([sincos(grid[:, i], d) for i in range(3)], dim=1)         # [N, 3d]
    return F.pad(emb, (0, width - 3 * d))[None]


def rope_angles(t: int, h: int, w: int, head_dim: int) -> torch.Tensor:
    """Rotary angles of a t x h x w token grid -> [N, head_dim / 2]: of each head's pairs of
    channels, a third (rounded to pairs) turns with the row, a third with the column, the rest
    with the frame (Wan's split), so q . k depends on the offset between two tokens."""
    d_space = 2 * (head_dim // 6)
    d_time = head_dim - 2 * d_space
    grid = torch.stack(torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w),
                                      indexing="ij"), dim=-1).reshape(-1, 3)  # [N, 3]
    angles = []
    for axis, d in zip(range(3), (d_time, d_space, d_space)):
        freqs = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)  # [d / 2]
        angles.append(grid[:, axis, None].float() * freqs)                     # [N, d / 2]
    return torch.cat(angles, dim=1)


def rotate(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Turn channel pairs (i, i + hd / 2) of x [B, heads, N, hd] by angles [N, hd / 2]."""
    x1, x2 = x.float().chunk(2, dim=-1)
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


# -----------------------------------------------------------------------------
# Building blocks

def modulate(x, shift, scale):
    return x * (1 + scale) + shift


class Attention(nn.Module):
    """Multi-head self-attention; `mask` [B, N] (True: attend) hides padding keys; `angles`
    [N, hd / 2] (rope_angles) rotate queries and keys."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        assert width % heads == 0, f"width {width} must be divisible by heads {heads}"
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x, mask=None, angles=None):
        B, N, D = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.heads, D // self.heads)   # [B, N, 3, heads, hd]
        q, k, v = qkv.permute(2, 0, 3, 1, 4)                            # [B, heads, N, hd] each
        if angles is not None:
            q, k = rotate(q, angles), rotate(k, angles)
        mask = None if mask is None else mask[:, None, None, :]         # [B, 1, 1, N]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, heads, N, hd]
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class MLP(nn.Module):
    def __init__(self, width: int, ratio: float):
        super().__init__()
        self.fc1 = nn.Linear(width, int(width * ratio))
        self.fc2 = nn.Linear(int(width * ratio), width)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class TextEncoder(nn.Module):
    """Prompt bytes -> one vector [B, D]: a byte embedding and a few pre-norm transformer layers,
    trained from scratch with the DiT (nothing is downloaded); the output at the BOS token, which
    attends to every byte, summarises the prompt."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        D, heads = cfg.text_width, max(1, cfg.text_width // 64)
        self.embed = nn.Embedding(PAD + 1, D)
        pos = sincos(torch.arange(cfg.text_len + 1), D)[None]  # [1, L + 1, D]
        self.register_buffer("pos", pos, persistent=False)
        self.norms = nn.ModuleList(nn.LayerNorm(D) for _ in range(2 * cfg.text_depth))
        self.attns = nn.ModuleList(Attention(D, heads) for _ in range(cfg.text_depth))
        self.mlps = nn.ModuleList(MLP(D, cfg.mlp_ratio) for _ in range(cfg.text_depth))
        self.norm_out = nn.LayerNorm(D)
        self.proj = nn.Linear(D, cfg.width)

    def forward(self, ids, mask):
        x = self.embed(ids) + self.pos  # [B, L + 1, D]
        for i, (attn, mlp) in enumerate(zip(self.attns, self.mlps)):
            x = x + attn(self.norms[2 * i](x), mask)
            x = x + mlp(self.norms[2 * i + 1](x))
        return self.proj(self.norm_out(x[:, 0]))  # the BOS token


class TimestepEmbedder(nn.Module):
    """Flow time t in [0, 1] -> [B, D]: sinusoids of 1000 t (the Wan scale), then an MLP."""

    def __init__(self, width: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t):
        return self.mlp(sincos(1000.0 * t, self.freq_dim).to(t.dtype))


class DiTBlock(nn.Module):
    """adaLN-Zero block: self-attention over the clip, then an MLP, each scaled and shifted by
    the conditioning vector (flow time + prompt). The modulation layer starts at zero, so every
    gate is 0 and the block is the identity at init."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        D = cfg.width
        self.norm1 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(D, cfg.heads)
        self.norm2 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.mlp = MLP(D, cfg.mlp_ratio)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * D))

    def forward(self, x, c, angles=None):
        shift1, scale1, gate1, shift2, scale2, gate2 = \
            self.adaLN_modulation(c)[:, None].chunk(6, dim=-1)  # 6 x [B, 1, D]
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1), angles=angles)
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))


# -----------------------------------------------------------------------------
# The video DiT

class VideoDiT(nn.Module):

    def __init__(self, cfg: DiTConfig, sampling: "Sampling | None" = None, grad_ckpt=False):
        super().__init__()
        self.cfg = cfg
        self.sampling = sampling or Sampling()  # how to roll it out (from its checkpoint)
        C, pt, ps, D = cfg.channels, cfg.patch_t, cfg.patch_s, cfg.width
        assert cfg.frames % pt == 0 and cfg.resolution % ps == 0, \
            f"frames {cfg.frames} / resolution {cfg.resolution} must divide by patch {pt} / {ps}"
        self.x_embedder = nn.Linear(pt * ps * ps * (2 * C + 1), D)  # input [x_t, mask, cond]
        self.t_embedder = TimestepEmbedder(D)
        self.text_encoder = TextEncoder(cfg)
        self.control_embedder = nn.Linear(pt * (cfg.control_dim + 1), D)  # + 1: "control given"
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.adaLN_out = nn.Sequential(nn.SiLU(), nn.Linear(D, 2 * D))
        self.final_layer = nn.Linear(D, pt * ps * ps * C)
        self.skip = nn.Linear(2 * D, D) if cfg.long_skip else None
        self.conv_out = nn.Conv3d(C, C, (1, 3, 3), padding=(0, 1, 1)) if cfg.out_conv else None
        grid = (cfg.frames // pt, cfg.resolution // ps, cfg.resolution // ps)
        self.register_buffer("pos", position_embedding(*grid, D), persistent=False)
        angles = rope_angles(*grid, D // cfg.heads) if cfg.rope else None
        self.register_buffer("angles", angles, persistent=False)
        self.grad_ckpt = grad_ckpt  # recompute blocks in backward (train.py --grad-ckpt)
        self.initialize_weights()

    def initialize_weights(self):
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.text_encoder.embed.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:  # adaLN-Zero: each block starts as the identity
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for layer in (self.adaLN_out[-1], self.final_layer):  # and the output starts at zero
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        if self.conv_out is not None:  # a convolution of zeros without a bias is zero
            nn.init.zeros_(self.conv_out.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, x_t, t, cond, text_ids, text_mask, control=None, text=None):
        """x_t [B, C, T, H, W] noisy clip, t [B] flow time, cond [B, C + 1, T, H, W] (condition()),
        text_ids/text_mask [B, L + 1] from tokenize(), control [B, T, control_dim] (NaN or None:
        no control); text [B, D]: the prompt already encoded (self.text_encoder), in place of
        ids and mask, as the sampler does once per clip.
        Returns the predicted velocity [B, C, T, H, W]."""
        cfg = self.cfg
        B, C, T, H, W = x_t.shape
        pt, ps = cfg.patch_t, cfg.patch_s
        tokens = patchify(torch.cat([x_t, cond], dim=1), pt, ps)  # [B, N, pt * ps * ps * (2C + 1)]
        x = self.x_embedder(tokens) + self.pos                    # [B, N, D]
        if control is None:  # NaN marks "no control" (per sample, or all of them)
            control = torch.full((B, T, cfg.control_dim), float("nan"), device=x.device)
        given = (~torch.isnan(control[..., :1])).to(x.dtype)            # [B, T, 1]
        control = torch.cat([control.nan_to_num(0.0).to(x.dtype), given], dim=-1)  # [B, T, c + 1]
        control = self.control_embedder(control.reshape(B, T // pt, -1))  # [B, t, D]
        x = x.view(B, T // pt, -1, x.shape[-1]) + control[:, :, None]  # [B, t, h * w, D]
        x = first = x.view(B, -1, x.shape[-1])                          # [B, N, D]
        if text is None:
            text = self.text_encoder(text_ids, text_mask)              # [B, D]
        c = self.t_embedder(t) + text                                   # [B, D]
        for block in self.blocks:
            if self.grad_ckpt and torch.is_grad_enabled():
                x = checkpoint(block, x, c, self.angles, use_reentrant=False)
            else:
                x = block(x, c, self.angles)
        if self.skip is not None:
            x = self.skip(torch.cat([x, first], dim=-1))                # [B, N, 2D] -> [B, N, D]
        shift, scale = self.adaLN_out(c)[:, None].chunk(2, dim=-1)      # 2 x [B, 1, D]
        x = self.final_layer(modulate(self.norm_out(x), shift, scale))  # [B, N, pt * ps * ps * C]
        out = unpatchify(x, C, T, H, W, pt, ps)                         # [B, C, T, H, W]
        out = out if self.conv_out is None else self.conv_out(out)
        return v_from_x0(x_t, out, t) if cfg.prediction == "x" else out  # x: out is x0_hat


# -----------------------------------------------------------------------------
# Low-rank adapters (LoRA, Hu et al. 2021) for fine-tuning, as SVI fine-tunes Wan

class LoRALinear(nn.Module):
    """y = W x + B A x with W frozen, A [r, in], B [out, r]; B starts at zero, so the adapted
    model starts exactly as the base model."""

    def __init__(self, base: nn.Linear, rank: int):
        super().__init__()
        self.base = base
        fan_in = base.in_features
        self.lora_a = nn.Parameter(torch.randn(rank, fan_in) / math.sqrt(fan_in))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x):
        return self.base(x) + F.linear(F.linear(x, self.lora_a), self.lora_b)


def add_lora(model: VideoDiT, rank: int) -> VideoDiT:
    """Wrap the attention and MLP linears of every DiT block in LoRALinear and freeze everything
    but the adapters."""
    for p in model.parameters():
        p.requires_grad_(False)
    for block in model.blocks:
        for parent, names in ((block.attn, ("qkv", "proj")), (block.mlp, ("fc1", "fc2"))):
            for name in names:
                setattr(parent, name, LoRALinear(getattr(parent, name), rank))
    return model


def merged_state_dict(state: dict) -> dict:
    """A LoRA state dict folded into plain weights (W + B A), loadable by a plain VideoDiT."""
    plain = {k.replace(".base.", "."): v for k, v in state.items() if ".lora_" not in k}
    for layer in [k[:-len(".lora_a")] for k in state if k.endswith(".lora_a")]:  # adapted ones
        plain[f"{layer}.weight"] = plain[f"{layer}.weight"] + state[f"{layer}.lora_b"] \
            @ state[f"{layer}.lora_a"]
    return plain


# -----------------------------------------------------------------------------
# Checkpoints: written by train.py, read by every script, all through here

@dataclass
class Sampling:
    """What a rollout needs besides the weights. Every checkpoint records it (train.save), and it
    gives sample.py, eval.py and bench.py their defaults: a flag given overrides it."""
    motion_frames: int = 2    # m, frames carried from one clip to the next, as trained
    shift: float = 1.0        # schedule shift, as trained (flow.shift_t)
    steps: int = 20           # sampler steps per clip (flow.euler_sample)
    eta: float | str = 1.0    # share of the noise drawn anew at each step, or "ancestral"
    guidance: float = 1.0     # classifier-free guidance scale (1: none)
    world: str = ""           # the synthetic world it was trained on (data.WORLDS)


BANKS = ("bank_vid", "bank_noise", "bank_roll")  # a run's error banks (train.Run), on disk


@dataclass
class Checkpoint:
    """What a checkpoint holds, its keys spelled here alone; on disk a dict of plain tensors,
    numbers and strings (weights_only=True). An export (train.py --export) holds no more than
    the EMA weights, the step and the configs."""
    model_cfg: DiTConfig
    sampling: Sampling
    ema: dict | None = None        # the EMA weights: what every script samples with
    step: int = 0
    train_cfg: dict = field(default_factory=dict)  # train.TrainConfig as it trained, a dict
    model: dict | None = None      # a run's: the weights being trained,
    optimizer: dict | None = None  # the optimiser's state,
    banks: tuple | None = None     # and with --erft the states of its BANKS (ErrorBank)
    pool: dict | None = None       # and with --p-pool its rollout pool's (errors.RolloutPool)


def save_checkpoint(path: str, ckpt: Checkpoint):
    """Write to a temporary file, then rename: a crash at any moment leaves the old one intact."""
    state = dict(model_cfg=asdict(ckpt.model_cfg), sampling=asdict(ckpt.sampling), ema=ckpt.ema,
                 step=ckpt.step, train_cfg=ckpt.train_cfg, **dict(zip(BANKS, ckpt.banks or ())))
    if ckpt.model is not None:
        state.update(model=ckpt.model, optimizer=ckpt.optimizer, pool=ckpt.pool)
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)


def load_checkpoint(path: str) -> Checkpoint:
    """A checkpoint of plain tensors and dicts. It is never unpickled as code (weights_only=True):
    a file that would need that, or is no checkpoint at all, is refused with a ValueError."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle.UnpicklingError for code, RuntimeError for a broken file
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path}: refused, not a plain-tensor checkpoint (loading it would need "
                         f"arbitrary unpickling, or the file is damaged): {first_line}")
    if not isinstance(state, dict) or "model_cfg" not in state:
        raise ValueError(f"{path}: not a checkpoint written by svi's train.py")
    if state["model_cfg"].get("prediction", "v") not in ("v", "x"):
        raise ValueError(f"{path}: prediction {state['model_cfg']['prediction']!r}; "
                         "this svi knows v and x")
    if "sampling" not in state:  # written before checkpoints recorded it (checkpoints/vpred/)
        old = state.get("train_cfg", {})
        state["sampling"] = dict(motion_frames=old.get("motion_frames", 2),
                                 shift=old.get("shift", 1.0), world=old.get("world", "hard"))
    banks = tuple(state.get(name) for name in BANKS) if BANKS[0] in state else None
    rest = {k: state[k] for k in ("ema", "step", "train_cfg", "model", "optimizer", "pool")
            if k in state}
    return Checkpoint(DiTConfig(**state["model_cfg"]), Sampling(**state["sampling"]),
                      banks=banks, **rest)


def from_checkpoint(path: str, device="cpu") -> VideoDiT:
    """A model rebuilt from a checkpoint's EMA weights, in eval mode, with the checkpoint's
    sampling defaults as model.sampling."""
    ckpt = load_checkpoint(path)
    model = VideoDiT(ckpt.model_cfg, ckpt.sampling)
    model.load_state_dict(merged_state_dict(ckpt.ema))
    return model.to(device).eval()


if __name__ == "__main__":
    for name, sizes in PRESETS.items():
        cfg = DiTConfig(**sizes)
        print(f"{name:>2}: width {cfg.width:4d} depth {cfg.depth:2d} heads {cfg.heads:2d} "
              f"params {VideoDiT(cfg).num_params() / 1e6:7.2f}M")

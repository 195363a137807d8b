"""
errors.py: Error-Recycling Fine-Tuning (ERFT), the contribution of Stable Video Infinity.

A model trained on clean conditions meets its own flawed frames at test time and drifts. ERFT
trains it on its own errors instead, in a closed loop that costs almost nothing extra:

1. calculate: from the training forward pass itself, one Euler step of the predicted velocity to
   each end of the flow path, compared with the same step of the target velocity, gives the
   error the model would make at the data end (e_vid) and at the noise end (e_noise)
   (paper Eq. 4; one_step_errors);
2. bank: the errors go into replay memories bucketed by flow time, aligned with the sampler's
   timesteps (ErrorBank);
3. inject: later steps add banked errors to the clean clip, the noise and the conditioning
   (motion) frames, each behind a Bernoulli gate, and still regress the velocity that points at
   the clean clip (paper Eq. 3 and 6; inject).

The conditioning error may also come from the errors rollouts really make: train.py
--error-source rollout banks the difference between clips the model samples and the real ones
(one bucket, the same replacement rule), and conditioning_error draws from it; with
--rollout-chain, rollouts start from motion frames that carry such an error, so errors are
recycled across clips as well as across steps. Those errors still go into other videos than
their own; train.py --p-pool keeps each in its own (RolloutPool): a pool of live rollouts whose
motion frames condition training clips whose target is the same video's real next clip.

The conditioning-frame error is what matters most (paper Tab. 4): it shows the model motion
frames as flawed as its own outputs, next to a clean target.
Names follow the paper, not the official code, whose `y_error_buffer` holds e_vid and whose
`latent_error_buffer` holds e_noise.

Try it: python -m pytest tests/test_errors.py
"""
import imageio.v3 as iio
import numpy as np
import torch
import torch.distributed as dist

from data import to_unit
from flow import interpolate, noise_from_v, x0_from_v


@torch.no_grad()
def one_step_errors(v_hat, v_target, t):
    """The bidirectional one-step errors of a prediction (no extra forward pass):
        e_vid   = x0_from_v(x_t, v_hat, t)    - x0_from_v(x_t, v_target, t)    = -t (v_hat - v*)
        e_noise = noise_from_v(x_t, v_hat, t) - noise_from_v(x_t, v_target, t) = (1-t)(v_hat - v*)
    x_t cancels out of both differences, so a zero state stands in for it."""
    x_t = torch.zeros_like(v_hat)
    e_vid = x0_from_v(x_t, v_hat, t) - x0_from_v(x_t, v_target, t)
    e_noise = noise_from_v(x_t, v_hat, t) - noise_from_v(x_t, v_target, t)
    return e_vid.float(), e_noise.float()


class ErrorBank:
    """Replay memory of errors, one bucket per sampler timestep (`times`, nearest wins), at most
    `capacity` errors per bucket. A full bucket makes room by `replace`:
      "l2"     - the new error replaces its most similar stored one (L2), as the official code
                 does, which keeps the bucket diverse;
      "random" - a uniformly chosen one;  "fifo" - the oldest one."""

    def __init__(self, times, capacity: int, replace: str = "l2", device="cpu",
                 dtype=torch.float16):
        assert replace in ("l2", "random", "fifo"), f"unknown replacement {replace!r}"
        assert capacity > 0, "capacity must be positive"
        self.times = torch.as_tensor(times, dtype=torch.float32)
        self.capacity, self.replace, self.device, self.dtype = capacity, replace, device, dtype
        self.errors = None                                  # [buckets, capacity, ...] on first add
        self.count = torch.zeros(len(self.times), dtype=torch.long)  # filled slots per bucket
        self.added = torch.zeros(len(self.times), dtype=torch.long)  # ever added (fifo order)
        self.replace_gen = torch.Generator().manual_seed(0)   # for "random" replacement

    def bucket_of(self, t) -> torch.Tensor:
        """The bucket of each flow time: the nearest of the bank's times. [B] -> [B] long."""
        t = torch.as_tensor(t, dtype=torch.float32).reshape(-1, 1).cpu()
        return (t - self.times[None]).abs().argmin(dim=1)

    def __len__(self):
        return int(self.count.sum())

    @torch.no_grad()
    def add(self, errors, t):
        """Store one error per sample, errors [B, ...] at flow times t [B]."""
        if self.errors is None:
            self.errors = torch.zeros(len(self.times), self.capacity, *errors.shape[1:],
                                      device=self.device, dtype=self.dtype)
        for error, b in zip(errors.to(self.device, self.dtype), self.bucket_of(t).tolist()):
            n = int(self.count[b])
            if n < self.capacity:
                slot = n
                self.count[b] += 1
            elif self.replace == "l2":
                stored = self.errors[b].flatten(1).float()                    # [capacity, D]
                slot = int((stored - error.flatten().float()).norm(dim=1).argmin())
            elif self.replace == "random":
                slot = int(torch.randint(self.capacity, (1,), generator=self.replace_gen))
            else:  # fifo: the slots are overwritten in the order they were filled
                slot = int(self.added[b] % self.capacity)
            self.errors[b, slot] = error
            self.added[b] += 1

    def sample(self, t, generator):
        """One stored error per flow time, uniform within its bucket: [B, ...]. A sample whose
        bucket is empty gets zeros (no error); None when the whole bank is empty."""
        if len(self) == 0:
            return None
        buckets = self.bucket_of(t)
        out = torch.zeros(len(buckets), *self.errors.shape[2:], dtype=torch.float32,
                          device=self.errors.device)
        for i, b in enumerate(buckets.tolist()):
            if self.count[b] > 0:
                out[i] = self.errors[b, int(torch.randint(int(self.count[b]), (1,),
                                                          generator=generator))].float()
        return out

    def sample_pooled(self, n: int, generator, t_max: float = 1.0):
        """n errors drawn uniformly from everything stored in the buckets at flow time t_max or
        below, whatever their bucket: [n, ...]; None when those buckets are empty."""
        count = self.count if t_max >= 1 else torch.where(self.times <= t_max, self.count, 0)
        if int(count.sum()) == 0:
            return None
        index = torch.randint(int(count.sum()), (n,), generator=generator)  # into those errors
        end = count.cumsum(0)                                          # [buckets]
        bucket = torch.searchsorted(end, index, right=True)            # which bucket holds each
        slot = index - (end[bucket] - count[bucket])                   # and where in it
        return self.errors[bucket, slot].float()

    def stats(self) -> dict:
        """Count and mean L2 norm of the errors of each bucket."""
        norms = [self.errors[b, :int(c)].flatten(1).float().norm(dim=1).mean().item() if c else 0.0
                 for b, c in enumerate(self.count)] if self.errors is not None else []
        return dict(count=self.count.tolist(), mean_norm=norms)

    def first_frames(self, n: int) -> list:
        """For a picture: the first frame [C, H, W] of the first error of n buckets spread over
        the filled ones, noisy first."""
        filled = [b for b, c in enumerate(self.count.tolist()) if c]
        pick = [filled[i] for i in np.linspace(0, len(filled) - 1, n).round().astype(int)]
        return [self.errors[b, 0, :, 0] for b in pick]

    def state_dict(self) -> dict:
        """Plain tensors, numbers and strings, so a checkpoint holding the bank loads with
        weights_only=True; with its sizes, so from_state_dict needs nothing else."""
        return dict(times=self.times, count=self.count, added=self.added,
                    errors=self.errors if self.errors is not None else torch.empty(0),
                    replace_gen=self.replace_gen.get_state(), capacity=self.capacity,
                    replace=self.replace)

    @classmethod
    def from_state_dict(cls, state: dict) -> "ErrorBank":
        """A bank rebuilt from its state_dict alone, on the CPU in float16 (for reading it)."""
        bank = cls(state["times"], state["capacity"], state["replace"])
        bank.load_state_dict(state)
        return bank

    def load_state_dict(self, state: dict):
        self.times = state["times"]
        self.count, self.added = state["count"], state["added"]
        errors = state["errors"]
        self.errors = errors.to(self.device, self.dtype) if errors.numel() else None
        self.replace_gen.set_state(state["replace_gen"])


def inject(x0, noise, cond, t, bank_vid, bank_noise, generator, *, p_img=0.9, p_vid=0.9,
           p_noise=0.01, p_clean=0.2, motion_frames=2, img_banks=None, img_t_max=1.0):
    """Error injection (paper Eq. 3, as the official code does it). Per sample, Bernoulli gates:
        x0~    = x0    + [vid]   e_vid     e_vid from the bucket of t in bank_vid
        noise~ = noise + [noise] e_noise   e_noise from the bucket of t in bank_noise
        cond   motion slots += [img] e_img  (conditioning_error: from img_banks, default bank_vid)
    and a clean gate (p_clean) that switches all three off. Returns
        x_t = (1 - t) x0~ + t noise~,   v* = noise~ - x0 (it points at the CLEAN clip: Eq. 6),
        cond, and the clean gates [B] (bool).
    With empty banks, or every clean gate on, this is exactly plain flow matching.
    The paper adds the image error to the whole conditioning latent; the code adds it to the
    first frames only (the motion slots), as here."""
    B = x0.shape[0]
    gates = torch.rand(B, 4, generator=generator)
    clean = gates[:, 3] < p_clean
    use_img, use_vid, use_noise = [(gates[:, i] < p) & ~clean for i, p in
                                   enumerate((p_img, p_vid, p_noise))]
    x0_tilde, noise_tilde, cond = x0, noise, cond.clone()
    e_vid, e_noise = bank_vid.sample(t, generator), bank_noise.sample(t, generator)
    e_img = conditioning_error(img_banks or [bank_vid], B, motion_frames, generator, img_t_max)
    gate = lambda g: g.to(x0.dtype).view(B, 1, 1, 1, 1).to(x0.device)
    if e_vid is not None:
        x0_tilde = x0 + gate(use_vid) * e_vid.to(x0.device, x0.dtype)
    if e_noise is not None:
        noise_tilde = noise + gate(use_noise) * e_noise.to(x0.device, x0.dtype)
    if e_img is not None:
        cond[:, 1:, :motion_frames] += gate(use_img) * e_img.to(x0.device, x0.dtype)  # not mask
    return interpolate(x0_tilde, noise_tilde, t), noise_tilde - x0, cond, clean


def conditioning_error(banks, n: int, m: int, generator, t_max: float = 1.0):
    """n errors for the m motion frames, [n, C, m, H, W], or None while the banks are empty.
    Each bank gives a window of m frames from a random start in each error it draws, pooled over
    its buckets at flow time t_max or below (ErrorBank.sample_pooled); with several banks, each
    sample takes one of them at random (train.py --error-source both)."""
    windows = []
    for bank in banks:
        errors = bank.sample_pooled(n, generator, t_max)                 # [n, C, T', H, W]
        if errors is not None:
            starts = torch.randint(errors.shape[2] - m + 1, (n,), generator=generator).tolist()
            windows.append(torch.stack([e[:, s:s + m] for e, s in zip(errors, starts)]))
    if len(windows) < 2:
        return windows[0] if windows else None
    pick = torch.randint(len(windows), (n,), generator=generator)
    return torch.stack(windows)[pick, torch.arange(n)]                  # [n, C, m, H, W]


class RolloutPool:
    """The closed-loop conditioning error (train.py --p-pool): live rollouts of training videos,
    each error kept in the video it came from: scheduled sampling (Bengio et al. 2015) at the
    level of clips. Entry i is a video of the source (source.video_key / source.video) that the
    EMA model has rolled out for k_i clips, 1 <= k_i <= clips; it holds the model's own last m
    frames of its clip k_i - 1 (clips numbered from 0 as in sample.rollout). A training clip
    that takes the entry is conditioned on them, and its target is the real clip k_i of the same
    video, frames [k_i (T - m), k_i (T - m) + T). The error recycled,
        e_img = own motion frames - real motion frames,
    goes back into its own video, where it may miss a shape that the anchor and the target
    still show. train.advance_pool moves a few entries on by one clip at a time; an entry
    retires after `clips` clips and a fresh video starts at clip 0 in its place."""

    def __init__(self, source, size: int, clips: int, frames: int, motion_frames: int,
                 p_film: float = 0.0):
        self.source, self.size, self.clips, self.p_film = source, size, clips, p_film
        self.T, self.m = frames, motion_frames
        self.length = clips * (frames - motion_frames) + frames  # the frames a video needs
        videos = getattr(source, "videos", [])  # a folder's (data.VideoFolder): too short skipped
        self.skipped = sum(len(video) < self.length for video in videos)
        if videos and self.skipped == len(videos):
            raise ValueError(f"--p-pool: no video has the {self.length} frames of --pool-clips "
                             f"{clips} clips; give fewer clips or longer videos")
        self.keys = torch.zeros(size, 2, dtype=torch.long)  # each entry's video (source's key)
        self.k = torch.zeros(size, dtype=torch.long)         # clips rolled out; 0: just started
        self.film = torch.zeros(size, dtype=torch.bool)      # film mode: no anchor
        self.motion = self.real = None  # [size, C, m, H, W]: own and real motion frames (fp32)
        self.cursor = 0                 # the next entry due() hands out
        self.videos = [None] * size     # each entry's (frames, prompt, control), from its key

    @property
    def started(self) -> bool:
        return self.motion is not None

    def restart(self, i: int, rng: np.random.Generator):
        """Entry i becomes a fresh video at clip 0: its motion frames are the real first m."""
        key = self.source.video_key(rng, self.length)
        self.keys[i], self.k[i] = torch.tensor(key), 0
        self.film[i] = bool(rng.random() < self.p_film)
        self.videos[i] = self.source.video(key, self.length)
        real = to_unit(self.videos[i][0][:self.m])                     # [C, m, H, W]
        if not self.started:
            self.motion, self.real = (torch.zeros(self.size, *real.shape) for _ in range(2))
        self.motion[i], self.real[i] = real, real

    def due(self, n: int, rng: np.random.Generator) -> list:
        """The next n entries in turn; those done with their `clips` clips restart first."""
        index = [(self.cursor + j) % self.size for j in range(min(n, self.size))]
        self.cursor = (self.cursor + len(index)) % self.size
        for i in index:
            if self.k[i] >= self.clips:
                self.restart(i, rng)
        return index

    def clip(self, i: int):
        """Entry i's real clip k_i [C, T, H, W], prompt, control stream [T, 2] and anchor
        [C, H, W] (the video's first frame; zeros in film mode)."""
        frames, prompt, control = self.videos[i]
        s = int(self.k[i]) * (self.T - self.m)
        anchor = to_unit(frames[:1])[:, 0] * (not self.film[i])       # [C, H, W]
        return (to_unit(frames[s:s + self.T]), prompt,
                torch.from_numpy(control[s:s + self.T]).float(), anchor)

    def advance(self, index: list, clips: torch.Tensor):
        """Entries `index` move on by the clips generated from them [n, C, T, H, W]: their
        motion frames become the clips' last m, beside the real frames of the same times."""
        for i, clip in zip(index, clips.float().cpu()):
            frames = self.videos[i][0]
            s = (int(self.k[i]) + 1) * (self.T - self.m)
            self.motion[i], self.real[i] = clip[:, -self.m:], to_unit(frames[s:s + self.m])
            self.k[i] += 1

    def draw(self, n: int, rng: np.random.Generator):
        """n training clips from entries chosen at random: video [n, C, T, H, W], prompts,
        control [n, T, 2], anchor [n, C, H, W] and the entries' own motion frames
        [n, C, m, H, W], as make_batch puts them in place of fresh clips."""
        pick = rng.choice(self.size, n, replace=n > self.size).tolist()
        video, prompts, control, anchor = zip(*(self.clip(i) for i in pick))
        return (torch.stack(video), list(prompts), torch.stack(control), torch.stack(anchor),
                self.motion[pick])

    def state_dict(self) -> dict:
        """The entries' keys, clips, modes and frames: the videos are rendered again on load."""
        return dict(keys=self.keys, k=self.k, film=self.film, motion=self.motion,
                    real=self.real, cursor=self.cursor)

    def load_state_dict(self, state: dict):
        self.keys, self.k, self.film = state["keys"], state["k"], state["film"]
        self.motion, self.real, self.cursor = state["motion"], state["real"], state["cursor"]
        self.videos = [self.source.video(key.tolist(), self.length) if self.started else None
                       for key in self.keys]


def vanish(motion):
    """The lost-shape error of the shapes world, for the motion frames [B, C, m, H, W] of each
    sample: the pixels of their second most common colour (the largest shape's; the first is the
    background) painted in the first. Added to the motion frames, it erases that shape while the
    anchor still shows it. Rollouts lose shapes (the count error), but one-step errors are blurs
    and casts that never do; eval.py measures whether a model restores the shape, and train.py
    --p-vanish trains it to. Flat colours only: on real video it is meaningless."""
    e = torch.zeros_like(motion)
    for s, frames in enumerate(motion):
        colours, counts = frames.flatten(1).T.unique(dim=0, return_counts=True)  # [n, C], [n]
        if len(colours) > 1:
            top = colours[counts.argsort(descending=True)[:2]]  # [2, C]
            background, shape = top.view(2, -1, 1, 1, 1)  # each [C, 1, 1, 1]
            e[s] = (background - frames) * (frames == shape).all(0)  # [C, m, H, W]
    return e


def gather_from_ranks(*tensors):
    """All ranks' tensors concatenated on dim 0 (for the first warm-up steps, every rank banks
    the errors of all ranks, as the official code does); a single process returns them as is."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensors
    out = []
    for x in tensors:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        out.append(torch.cat(parts))
    return out


def error_picture(path: str, *rows):
    """Rows of errors, each a frame [C, H, W] as a tile scaled to its own range (grey = 0), the
    rows padded with white to one width, as a PNG four times the size."""
    tile = lambda e: ((e / (e.abs().max() + 1e-8) + 1) * 127.5).round().clamp(0, 255).byte()
    rows = [torch.cat([tile(e.float().cpu()) for e in row], dim=2).permute(1, 2, 0).numpy()
            for row in rows]                                            # each [H, n W, C]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255)
            for r in rows]
    iio.imwrite(path, np.concatenate(rows).repeat(4, 0).repeat(4, 1))

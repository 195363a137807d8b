"""
data.py: where svi's clips come from.

- ShapesWorld: the built-in synthetic world. A few coloured shapes (circle, square, triangle) move
  and bounce on a plain background. It is drawn from a seed, at any length, with no files; it knows
  its ground truth per frame, describes itself in a prompt, can script scene events (a shape
  appears, changes colour, the background changes) and can let one shape follow a control stream
  (a keypoint path). It draws from a fixed palette with hard edges, so every pixel of a real frame
  is a palette colour, which is what makes drift measurable exactly.
- World and WORLDS: how hard the world is, as a dial (how many shapes, how large, how fast,
  whether they may pass in front of one another, how many backgrounds, how often events and
  control paths come), with named presets: simple, easy, medium, hard.
- ShapesSource: training clips of fresh random worlds of one preset.
- VideoFolder: a folder of the user's own videos (mp4, gif, webm, avi), with an optional caption
  per video in a sidecar .txt.
- ShapesSource and VideoFolder both have clips(batch, frames, rng, anchor_gap, film) -> (video
  [B, C, T, H, W] in [-1, 1], prompts, control [B, T, 2] (NaN: none), anchor [B, C, H, W]).

Try it: python data.py   (writes shapes.gif, a few clips of the world)
"""
import os
import warnings
from dataclasses import dataclass

import imageio
import imageio.v3 as iio
import numpy as np
import torch
import torch.nn.functional as F

COLOURS = {"red": (230, 40, 40), "green": (40, 200, 70), "blue": (40, 100, 240),
           "yellow": (240, 220, 30), "magenta": (220, 50, 220), "cyan": (40, 220, 230),
           "white": (250, 250, 250)}
BACKGROUNDS = {"black": (0, 0, 0), "gray": (110, 110, 110), "navy": (20, 20, 80),
               "brown": (90, 50, 20)}
KINDS = ("circle", "square", "triangle")
PALETTE = np.array(list(COLOURS.values()) + list(BACKGROUNDS.values()), dtype=np.uint8)  # [K, 3]
REACH = np.array([1.0, 1.21, 1.29])  # the farthest pixel of each kind from its centre, in radii


@dataclass(frozen=True)
class World:
    """How hard the world is: a dial. Sizes and speeds are shares of the frame side."""
    shapes: tuple = (1, 3)        # fewest and most shapes in a scene
    size: tuple = (0.12, 0.2)     # radius range
    speed: tuple = (0.02, 0.05)   # speed range, per frame
    overlap: bool = True          # may a shape pass in front of another? (else they bounce)
    backgrounds: int = 4          # how many of BACKGROUNDS scenes draw from
    p_event: float = 0.2          # share of film-mode training clips with a scene event after
                                  # their motion frames
    p_control: float = 0.2        # share of training clips whose shape 0 follows a control path


WORLDS = {  # named presets; "hard" is the world of svi's first benchmark (docs/hard-world.md)
    "simple": World(shapes=(1, 2), size=(0.2, 0.27), speed=(0.02, 0.04), overlap=False,
                    backgrounds=1),
    "easy": World(shapes=(1, 2), size=(0.15, 0.22), speed=(0.02, 0.04), overlap=False,
                  backgrounds=2),
    "medium": World(overlap=False),
    "hard": World(),
}
DEFAULT_WORLD = "simple"
VIDEO_EXTENSIONS = (".mp4", ".gif", ".webm", ".avi")


def to_unit(frames: np.ndarray) -> torch.Tensor:
    """uint8 [..., T, H, W, C] -> float in [-1, 1], [..., C, T, H, W]."""
    x = torch.from_numpy(frames).float() / 127.5 - 1.0
    return x.movedim(-1, -4)


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """float [C, T, H, W] in [-1, 1] -> uint8 [T, H, W, C]."""
    x = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()


# -----------------------------------------------------------------------------
# The synthetic world

class ShapesWorld:
    """One world: its state moves one frame per render. Ground truth of every frame rendered is
    appended to self.truth (positions, velocities, sizes, colours, kinds, background, and the
    share of each shape that is visible, not behind a later one). `world` is a World or the name
    of one in WORLDS."""

    def __init__(self, seed: int, resolution: int = 32, world: "World | str" = DEFAULT_WORLD,
                 n_shapes: int | None = None, control: bool = False):
        self.world = WORLDS[world] if isinstance(world, str) else world
        self.rng = rng = np.random.default_rng(seed)
        self.res, low, high = resolution, *self.world.shapes
        n = int(rng.integers(low, high + 1)) if n_shapes is None else n_shapes
        self.size = resolution * rng.uniform(*self.world.size, n)             # radius in pixels
        self.pos = rng.uniform(self.size[:, None], resolution - self.size[:, None], (n, 2))
        speed = resolution * rng.uniform(*self.world.speed, n)               # pixels per frame
        angle = rng.uniform(0, 2 * np.pi, n)
        direction = np.stack([np.cos(angle), np.sin(angle)], axis=1)        # [n, 2] (x, y)
        self.vel = speed[:, None] * direction
        self.colour = rng.choice(len(COLOURS), n, replace=False)
        self.kind = rng.integers(0, len(KINDS), n)
        self.background = int(rng.integers(0, self.world.backgrounds))
        self.control = control  # shape 0 follows a Lissajous keypoint path
        self.path = (rng.uniform(0.02, 0.06, 2), rng.uniform(0, 2 * np.pi, 2))
        self.time = 0
        self.truth = []
        if control:
            self.pos[0] = self.keypoint(0)
        if not self.world.overlap:  # a shape with no room left is not in the scene
            keep = [0] + [i for i in range(1, n) if self.place(i)]
            for name in ("size", "pos", "vel", "colour", "kind"):
                setattr(self, name, getattr(self, name)[keep])

    def clear(self, i: int, n: int) -> bool:
        """Is shape i clear of shapes 0 .. n - 1 but itself (a pixel between their reaches)?"""
        reach = REACH[self.kind[:n]] * self.size[:n]                             # [n] pixels
        gap = np.linalg.norm(self.pos[:n] - self.pos[i], axis=1) - reach - REACH[self.kind[i]] \
            * self.size[i]
        return bool((np.delete(gap, i) > 1.0).all() if i < n else (gap > 1.0).all())

    def place(self, i: int, tries: int = 1000) -> bool:
        """Redraw shape i's position until it is clear of shapes 0 .. i - 1; False if a crowded
        frame leaves no room for it."""
        r = self.size[i]
        for _ in range(tries):
            if self.clear(i, i):
                return True
            self.pos[i] = self.rng.uniform(r, self.res - r, 2)
        return False

    def prompt(self) -> str:
        names = [f"a {list(COLOURS)[c]} {KINDS[k]}" for c, k in zip(self.colour, self.kind)]
        shapes = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        return f"{shapes} on a {list(BACKGROUNDS)[self.background]} background"

    def keypoint(self, time: int) -> np.ndarray:
        """Where the path puts shape 0 at a frame, in pixels (x, y)."""
        freq, phase = self.path
        margin = self.size[0]
        centre, amplitude = self.res / 2, self.res / 2 - margin
        return centre + amplitude * np.sin(freq * 2 * np.pi * time + phase)

    def control_vector(self, time: int) -> np.ndarray:
        """The control stream: the keypoint of shape 0, scaled to [-1, 1]."""
        return self.keypoint(time) / self.res * 2 - 1

    def step(self):
        """Constant velocity, elastic bounce off the borders and, where shapes may not overlap,
        off each other; in control mode shape 0 is on the path."""
        if self.control:  # shape 0's move along the path this frame
            self.vel[0] = self.keypoint(self.time + 1) - self.keypoint(self.time)
        if not self.world.overlap:
            self.collide()
        self.pos = self.pos + self.vel
        low, high = self.size[:, None], self.res - self.size[:, None]
        hit = (self.pos < low) | (self.pos > high)
        self.pos = np.where(self.pos < low, 2 * low - self.pos, self.pos)
        self.pos = np.where(self.pos > high, 2 * high - self.pos, self.pos)
        self.vel = np.where(hit, -self.vel, self.vel)
        self.time += 1
        if self.control:
            self.pos[0] = self.keypoint(self.time)
            if not self.world.overlap:
                self.push_out()

    def push_out(self):
        """Shapes the control path has run into are pushed out of shape 0's way (to a pixel
        beyond its reach, kept inside the frame), their velocities turned away from it."""
        reach = REACH[self.kind] * self.size  # [n] pixels
        for j in range(1, len(self.pos)):
            d = self.pos[j] - self.pos[0]
            dist = max(np.linalg.norm(d), 1e-6)
            need = reach[0] + reach[j] + 1.0
            if dist < need:
                normal = d / dist
                r = self.size[j]
                self.pos[j] = np.clip(self.pos[0] + need * normal, r, self.res - r)
                self.vel[j] = self.vel[j] - 2 * min(0.0, self.vel[j] @ normal) * normal

    def collide(self):
        """Two shapes whose reaches could touch after this frame's move (and a pixel), and that
        approach each other, trade the parts of their velocities along the line between them (an
        elastic collision of equal masses; a shape on the control path is a moving wall)."""
        reach = REACH[self.kind] * self.size  # [n] pixels
        for i in range(len(self.pos)):
            for j in range(i + 1, len(self.pos)):
                d = self.pos[j] - self.pos[i]  # [2] (x, y)
                dist = np.linalg.norm(d)
                margin = np.linalg.norm(self.vel[i] - self.vel[j]) + 1.0  # this frame's move
                if dist >= reach[i] + reach[j] + margin or dist == 0:
                    continue
                normal = d / dist
                closing = (self.vel[i] - self.vel[j]) @ normal  # > 0: they approach
                if closing <= 0:
                    continue
                if self.control and i == 0:
                    self.vel[j] = self.vel[j] + 2 * closing * normal
                else:
                    self.vel[i] = self.vel[i] - closing * normal
                    self.vel[j] = self.vel[j] + closing * normal

    def render(self) -> np.ndarray:
        """The current frame, uint8 [H, W, 3], and its ground truth appended to self.truth."""
        if self.control:
            self.pos[0] = self.keypoint(self.time)
        ys, xs = np.mgrid[0:self.res, 0:self.res] + 0.5
        frame = np.empty((self.res, self.res, 3), dtype=np.uint8)
        frame[:] = list(BACKGROUNDS.values())[self.background]
        front = np.full((self.res, self.res), -1)  # [H, W] index of the shape in front, -1: none
        area = []                                  # pixels of each shape, hidden ones included
        for i, ((x, y), r, c, k) in enumerate(zip(self.pos, self.size, self.colour, self.kind)):
            dx, dy = xs - x, ys - y
            if KINDS[k] == "circle":
                inside = dx ** 2 + dy ** 2 <= r ** 2
            elif KINDS[k] == "square":
                inside = (np.abs(dx) <= 0.85 * r) & (np.abs(dy) <= 0.85 * r)
            else:  # triangle, apex up: half width grows from 0 at dy = -r to r at dy = 0.8 r
                inside = (dy >= -r) & (dy <= 0.8 * r) & (np.abs(dx) <= (dy + r) / 1.8)
            frame[inside] = list(COLOURS.values())[c]  # later shapes in front
            front[inside] = i
            area.append(inside.sum())
        visible = np.array([(front == i).sum() / max(a, 1) for i, a in enumerate(area)])
        self.truth.append(dict(pos=self.pos.copy(), vel=self.vel.copy(), size=self.size.copy(),
                               colour=self.colour.copy(), kind=self.kind.copy(),
                               background=self.background, time=self.time,
                               visible=visible))
        return frame

    def frames(self, n: int) -> np.ndarray:
        """Render n frames, moving the world after each: uint8 [n, H, W, 3]."""
        out = []
        for _ in range(n):
            out.append(self.render())
            self.step()
        return np.stack(out)

    def event(self) -> str:
        """A scene event at a clip boundary: a shape appears, one changes colour, or the
        background changes. Returns a short description; prompt() describes the new scene."""
        options = ["colour"] + (["background"] if self.world.backgrounds > 1 else []) + \
            (["appear"] if len(self.kind) < self.world.shapes[1] else [])
        kind = options[int(self.rng.integers(len(options)))]
        if kind == "colour":
            i = int(self.rng.integers(len(self.colour)))
            free = np.setdiff1d(np.arange(len(COLOURS)), self.colour)
            self.colour[i] = self.rng.choice(free)
        elif kind == "background":
            self.background = int(self.rng.choice(
                np.setdiff1d(np.arange(self.world.backgrounds), [self.background])))
        else:
            other = ShapesWorld(int(self.rng.integers(2 ** 31)), self.res, self.world, 1)
            other.colour[:] = self.rng.choice(np.setdiff1d(np.arange(len(COLOURS)), self.colour))
            for name in ("size", "pos", "vel", "colour", "kind"):
                setattr(self, name, np.concatenate([getattr(self, name), getattr(other, name)]))
            if not self.world.overlap and not self.place(len(self.pos) - 1):
                for name in ("size", "pos", "vel", "colour", "kind"):  # no room: it does not
                    setattr(self, name, getattr(self, name)[:-1])        # come, the colour
                self.colour[0] = other.colour[0]                         # of shape 0 changes
                kind = "colour"
        return kind


class ShapesSource:
    """Training clips of fresh random worlds of one kind (`world`, a World or a name in WORLDS).
    A share of them has a scene event right after the motion frames (so film mode learns to
    follow a new prompt) or shape 0 on a control path."""

    def __init__(self, resolution: int, motion_frames: int, world: "World | str" = DEFAULT_WORLD):
        self.res, self.motion = resolution, motion_frames
        self.world = WORLDS[world] if isinstance(world, str) else world

    def clips(self, batch: int, frames: int, rng: np.random.Generator, anchor_gap: int = 0,
              film: np.ndarray | None = None):
        """-> video [B, C, T, H, W], prompts, control [B, T, 2] (NaN: none) and an anchor frame
        [B, C, H, W] of the same world: with anchor_gap 0 a random frame of the clip itself (the
        SVI 1.0 recipe), else the world's first frame, 0 to anchor_gap frames before the clip's
        (SVI 2.0: the anchor tells who is in the scene, not where they are now). Given film [B]
        (the clips in film mode), scene events come only in those: in shot mode the anchor holds
        who is in the scene, and a shape recoloured there would teach the model to break it."""
        videos, prompts, controls, anchors = [], [], [], []
        for b in range(batch):
            world = ShapesWorld(int(rng.integers(2 ** 31)), self.res, self.world,
                                control=bool(rng.random() < self.world.p_control))
            if anchor_gap > 0:
                anchors.append(world.render())
                for _ in range(int(rng.integers(anchor_gap + 1))):
                    world.step()
            if rng.random() < self.world.p_event and (film is None or film[b]):
                first = world.frames(self.motion)
                world.event()
                video = np.concatenate([first, world.frames(frames - self.motion)])
            else:
                video = world.frames(frames)
            if anchor_gap == 0:
                anchors.append(video[int(rng.integers(frames))])
            videos.append(video)
            prompts.append(world.prompt())
            path = np.stack([world.control_vector(s["time"]) for s in world.truth[-frames:]])
            controls.append(path if world.control else np.full_like(path, np.nan))  # [T, 2]
        control = torch.from_numpy(np.stack(controls)).float()  # [B, T, 2], NaN: no control
        anchors = to_unit(np.stack(anchors)[:, None])[:, :, 0]  # [B, 1, H, W, C] -> [B, C, H, W]
        return to_unit(np.stack(videos)), prompts, control, anchors

    def video_key(self, rng: np.random.Generator, frames: int) -> tuple[int, int]:
        """A fresh video for the rollout pool (errors.RolloutPool), as the key video() renders it
        from: its world's seed and whether shape 0 is on a control path. Any length will do."""
        return int(rng.integers(2 ** 31)), int(rng.random() < self.world.p_control)

    def video(self, key, frames: int):
        """The first `frames` frames of a key's world, with no scene event: uint8 [frames, H, W,
        3], its prompt and its control stream [frames, 2] (NaN: none)."""
        world = ShapesWorld(key[0], self.res, self.world, control=bool(key[1]))
        video = world.frames(frames)
        control = np.stack([world.control_vector(s["time"]) for s in world.truth])  # [frames, 2]
        return video, world.prompt(), control if world.control else np.full_like(control, np.nan)


# -----------------------------------------------------------------------------
# The user's own videos

def read_video(path: str, resolution: int) -> np.ndarray:
    """All frames of a video file as uint8 [T, resolution, resolution, 3]: grayscale and RGBA are
    converted to RGB, the largest centred square is cropped and resized (area averaging)."""
    frames = np.asarray(iio.imread(path, index=None))
    if frames.ndim == 3 and frames.shape[-1] not in (3, 4):  # [T, H, W] grayscale
        frames = frames[..., None]
    if frames.ndim == 3:  # a single image [H, W, C]
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise ValueError(f"no frames (shape {frames.shape})")
    frames = frames[..., :3] if frames.shape[-1] >= 3 else np.repeat(frames[..., :1], 3, axis=-1)
    T, H, W, _ = frames.shape
    side = min(H, W)
    top, left = (H - side) // 2, (W - side) // 2
    x = torch.from_numpy(np.ascontiguousarray(frames[:, top:top + side, left:left + side]))
    x = x.permute(0, 3, 1, 2).float()                                 # [T, 3, side, side]
    x = F.interpolate(x, size=(resolution, resolution), mode="area")  # [T, 3, res, res]
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


class VideoFolder:
    """Every video of a folder, held in memory at the training resolution. A video's caption is
    its sidecar .txt (same name), else "a video". Files that cannot be read, are empty or are
    shorter than a clip are named in one warning and skipped; a folder with nothing usable is an
    error."""

    def __init__(self, folder: str, frames: int, resolution: int):
        if not os.path.isdir(folder):
            raise ValueError(f"--data {folder!r}: no such folder (or use --data shapes)")
        names = sorted(f for f in os.listdir(folder) if f.lower().endswith(VIDEO_EXTENSIONS))
        self.videos, self.captions, skipped = [], [], []
        for name in names:
            path = os.path.join(folder, name)
            try:
                video = read_video(path, resolution)
            except Exception as err:  # imageio raises many kinds for broken files
                skipped.append(f"{name} (unreadable: {type(err).__name__})")
                continue
            if len(video) < frames:
                skipped.append(f"{name} ({len(video)} frames, a clip needs {frames})")
                continue
            caption = os.path.splitext(path)[0] + ".txt"
            text = open(caption, encoding="utf-8").read().strip() if os.path.exists(caption) \
                else ""
            self.videos.append(video)
            self.captions.append(text or "a video")
        if skipped:
            warnings.warn(f"{folder}: skipped {len(skipped)} file(s): " + "; ".join(skipped))
        if not self.videos:
            raise ValueError(f"--data {folder!r}: no usable video ({', '.join(VIDEO_EXTENSIONS)}, "
                             f"at least {frames} frames) among {len(names)} candidate file(s)")

    def clips(self, batch: int, frames: int, rng: np.random.Generator, anchor_gap: int = 0,
              film: np.ndarray | None = None):
        """As ShapesSource.clips; the anchor is a frame of the same video (film: unused, a
        user's video has the events it has)."""
        videos, prompts, anchors = [], [], []
        for _ in range(batch):
            i = int(rng.integers(len(self.videos)))
            start = int(rng.integers(len(self.videos[i]) - frames + 1))
            videos.append(self.videos[i][start:start + frames])
            prompts.append(self.captions[i])
            if anchor_gap > 0:
                anchors.append(self.videos[i][int(rng.integers(max(0, start - anchor_gap),
                                                               start + 1))])
            else:
                anchors.append(videos[-1][int(rng.integers(frames))])
        control = torch.full((batch, frames, 2), float("nan"))  # user videos carry no control
        anchors = to_unit(np.stack(anchors)[:, None])[:, :, 0]  # [B, 1, H, W, C] -> [B, C, H, W]
        return to_unit(np.stack(videos)), prompts, control, anchors

    def video_key(self, rng: np.random.Generator, frames: int) -> tuple[int, int]:
        """As ShapesSource.video_key: one of the videos of at least `frames` frames (the others
        are skipped: ValueError if none is that long) and a start in it."""
        long = [i for i, video in enumerate(self.videos) if len(video) >= frames]
        if not long:
            raise ValueError(f"no video of at least {frames} frames")
        i = long[int(rng.integers(len(long)))]
        return i, int(rng.integers(len(self.videos[i]) - frames + 1))

    def video(self, key, frames: int):
        """As ShapesSource.video: `frames` frames of video key[0] from frame key[1]."""
        i, start = key
        return self.videos[i][start:start + frames], self.captions[i], np.full((frames, 2), np.nan)


# -----------------------------------------------------------------------------
# Writing videos

def writable_folder(path: str) -> bool:
    """Can a folder be made or written at path? (Its nearest existing ancestor decides.)"""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return os.path.isdir(path) and os.access(path, os.W_OK)


class VideoWriter:
    """Appends uint8 frames [T, H, W, 3] to an .mp4 (ffmpeg) or .gif file as they come, so a
    long video never sits in memory (gif frames are buffered by the encoder: keep gifs short).
    Frames are enlarged `scale` times (nearest pixel) to be visible."""

    def __init__(self, path: str, fps: int = 8, scale: int = 4):
        self.scale, self.frames = scale, 0
        ext = os.path.splitext(path)[1].lower()
        if ext not in (".mp4", ".gif"):
            raise ValueError(f"{path}: the output must end in .mp4 or .gif")
        if ext == ".mp4":
            kwargs = dict(fps=fps, macro_block_size=1)
        else:
            kwargs = dict(duration=1 / fps, loop=0)
        self.writer = imageio.get_writer(path, **kwargs)

    def write(self, frames: np.ndarray):
        for frame in frames:
            self.writer.append_data(frame.repeat(self.scale, 0).repeat(self.scale, 1))
            self.frames += 1

    def close(self):
        self.writer.close()


if __name__ == "__main__":
    source = ShapesSource(32, 2, World(overlap=False, p_event=0.5, p_control=0.5))
    video, prompts, control, _ = source.clips(4, 16, np.random.default_rng(0))
    writer = VideoWriter("shapes.gif")
    for clip, prompt in zip(video, prompts):
        print(prompt)
        writer.write(to_uint8(clip))
    writer.close()
    print(f"wrote shapes.gif ({writer.frames} frames)")

"""
metrics.py: the drift metrics, exact on the frames of the shapes world (data.ShapesWorld), which
draws from a fixed palette with hard edges: every pixel of a real frame is a palette colour and
every shape a connected blob of its own colour, so no learned feature and no network is needed.

  palette     share of pixels off the palette (blur, colour cast, noise)          ideal 0
  count       |objects - objects in the real frame| (lost or split shapes)        ideal 0
  colours     shape colours missing or extra against the real frame (the prompt)  ideal 0
  kinds       shapes of a colour in both whose kind (circle, square, triangle)
              differs from the real one's                                         ideal 0
  match       share of frames whose object count, colours and kinds equal the real ideal 1
  background  distance of the frame's median colour to the prompt's background    ideal 0
  sharpness   RMS spatial gradient / the real frames'                             ideal 1
  motion      centroid speed of the shapes / the real frames' (frozen video: 0)   ideal 1
  dynamics    centroid acceleration, pixels/frame^2 (constant velocity: 0)        ideal ~0
  control     distance of shape 0 to its control keypoint, pixels (conditional)   ideal 0

score_clip scores one clip against the real one; eval.py and diagnose.py score every clip of a
rollout with it. Try it: python -m pytest tests/test_eval.py
"""
from typing import NamedTuple

import numpy as np

from data import BACKGROUNDS, COLOURS, KINDS, PALETTE

OFF_PALETTE = 48.0   # RGB distance beyond which a pixel matches no palette colour
MIN_AREA = 3         # pixels a connected blob needs to count as an object
METRICS = ("palette", "count", "colours", "kinds", "match", "background", "sharpness", "motion",
           "dynamics", "control")


class Blob(NamedTuple):
    """A connected blob of one colour. Blobs compare by area first: max() is the largest."""
    area: int           # pixels
    centre: tuple       # centroid (x, y), pixel i spanning [i, i + 1)
    kind: int           # index into KINDS (kind_of)


def nearest_palette(frames):
    """Index of the nearest palette colour [T, H, W] and the distance to it."""
    d = np.linalg.norm(frames[..., None, :].astype(np.float32) - PALETTE.astype(np.float32),
                       axis=-1)  # [T, H, W, K]
    return d.argmin(-1), d.min(-1)


def kind_of(ys, xs) -> int:
    """The kind (index into KINDS) a blob's pixels look like: a square fills its bounding box, a
    triangle (apex up) has a quarter of its pixels in the upper half of the box, a circle half.
    Right for every whole shape of every world preset's sizes (tests/test_eval.py)."""
    height = ys.max() - ys.min() + 1
    fill = len(ys) / (height * (xs.max() - xs.min() + 1))
    upper = ((ys - ys.min() + 0.5) < height / 2).mean()
    return KINDS.index("square") if fill > 0.93 else \
        KINDS.index("triangle") if upper < 0.35 else KINDS.index("circle")


def components(mask) -> list[Blob]:
    """Connected blobs (4-neighbours) of a boolean image [H, W]. A flood fill."""
    todo = set(zip(*(a.tolist() for a in np.nonzero(mask))))
    blobs = []
    while todo:
        stack, pixels = [todo.pop()], []
        while stack:
            y, x = stack.pop()
            pixels.append((y, x))
            for near in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if near in todo:
                    todo.remove(near)
                    stack.append(near)
        ys, xs = np.array(pixels, dtype=np.float64).T
        blobs.append(Blob(len(pixels), (xs.mean() + 0.5, ys.mean() + 0.5), kind_of(ys, xs)))
    return blobs


def objects(frames, nearest=None):
    """Per frame, per shape colour index found: its blobs [Blob], small ones out.
    nearest: nearest_palette(frames), if already computed."""
    index, dist = nearest_palette(frames) if nearest is None else nearest
    out = []
    for i, d in zip(index, dist):
        found = {}
        for c in np.unique(i[d <= OFF_PALETTE]).tolist():
            if c < len(COLOURS):
                blobs = [b for b in components((i == c) & (d <= OFF_PALETTE))
                         if b.area >= MIN_AREA]
                if blobs:
                    found[c] = blobs
        out.append(found)
    return out


def centroid_steps(found, lag):
    """Per colour seen as exactly one blob in frames j - lag .. j: its centroids, [(c0, ..)]."""
    single = [{c: b[0].centre for c, b in f.items() if len(b) == 1} for f in found]
    return [[np.array(single[j - i][c]) for i in range(lag, -1, -1)]
            for j in range(lag, len(single)) for c in set.intersection(
                *(set(single[j - i]) for i in range(lag + 1)))]


def score_clip(fake, real, background, control=None):
    """All metrics of one clip: fake and real uint8 [T, H, W, 3], the prompt's background index,
    and (colour index of shape 0, its keypoints [T, 2] in pixels) or None. -> {metric: value}"""
    nearest = nearest_palette(fake)
    found, wanted = objects(fake, nearest), objects(real)
    count = np.array([abs(sum(map(len, f.values())) - sum(map(len, w.values())))
                      for f, w in zip(found, wanted)])        # [T]
    colours = np.array([len(set(f) ^ set(w)) for f, w in zip(found, wanted)])  # [T]
    kinds = np.array([sum(sorted(b.kind for b in f[c]) != sorted(b.kind for b in w[c])
                          for c in set(f) & set(w)) for f, w in zip(found, wanted)])  # [T]
    bg = np.array(list(BACKGROUNDS.values())[background], dtype=np.float32)
    median = np.median(fake.reshape(len(fake), -1, 3).astype(np.float32), axis=1)  # [T, 3]
    # sharpness: root-mean-square spatial gradient (a blur spreads an edge and lowers it)
    gradient = lambda v: np.sqrt(sum((np.diff(v.astype(np.float32), axis=a) ** 2).mean()
                                     for a in (1, 2)))
    # motion: how far the shapes' centroids move per frame (speckle does not count)
    speed = lambda f: np.mean([np.linalg.norm(b - a) for a, b in centroid_steps(f, 1)] or [0.0])
    accel = [np.linalg.norm(c - 2 * b + a) for a, b, c in centroid_steps(found, 2)]
    real_speed = speed(wanted)
    scores = dict(palette=float((nearest[1] > OFF_PALETTE).mean()), count=float(count.mean()),
                  colours=float(colours.mean()), kinds=float(kinds.mean()),
                  match=float(((count == 0) & (colours == 0) & (kinds == 0)).mean()),
                  background=float(np.linalg.norm(median - bg, axis=1).mean() / 255),
                  sharpness=gradient(fake) / max(gradient(real), 1e-6),
                  motion=speed(found) / real_speed if real_speed > 0 else float("nan"),
                  dynamics=float(np.mean(accel)) if accel else float("nan"),
                  control=float("nan"))
    if control is not None:  # shape 0: its colour's largest blob against the keypoint
        colour, keypoints = control
        miss = fake.shape[1] / 2  # a lost shape counts as half the frame away
        scores["control"] = float(np.mean([
            np.linalg.norm(np.subtract(max(f[colour]).centre, k)) if colour in f else miss
            for f, k in zip(found, keypoints)]))
    return scores

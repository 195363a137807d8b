"""The synthetic world and the folder loader. Run: python -m pytest tests/test_data.py"""
import warnings

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from data import (DEFAULT_WORLD, KINDS, PALETTE, WORLDS, ShapesSource, ShapesWorld, VideoFolder,
                  VideoWriter, World, read_video)


def test_world_is_seeded_and_drawn_from_the_palette():
    a, b = ShapesWorld(3).frames(20), ShapesWorld(3).frames(20)
    assert a.shape == (20, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, ShapesWorld(4).frames(20))
    colours = {tuple(c) for c in a.reshape(-1, 3)}
    assert colours <= {tuple(c) for c in PALETTE}  # hard edges: no pixel off the palette


def test_shapes_move_stay_inside_and_bounce():
    world = ShapesWorld(1, world="hard", n_shapes=3)  # shapes pass in front of one another
    world.frames(300)
    bounced = False
    for before, after in zip(world.truth[:-1], world.truth[1:]):
        assert np.all(after["pos"] >= after["size"][:, None] - 1e-9)
        assert np.all(after["pos"] <= 32 - after["size"][:, None] + 1e-9)
        bounced |= bool(np.any(np.sign(after["vel"]) != np.sign(before["vel"])))
        assert np.all(np.abs(after["vel"]) == np.abs(before["vel"]))  # elastic
    assert bounced


def test_worlds_are_a_dial_and_the_default_is_named():
    assert ShapesWorld(0, 32).world == WORLDS[DEFAULT_WORLD]  # ShapesWorld(seed, res): default
    assert ShapesSource(32, 2).world == WORLDS[DEFAULT_WORLD]
    for name, dial in WORLDS.items():
        counts = set()
        for seed in range(40):
            w = ShapesWorld(seed, 32, name)
            counts.add(len(w.kind))
            assert np.all((w.size >= 32 * dial.size[0]) & (w.size <= 32 * dial.size[1]))
            speed = np.linalg.norm(w.vel, axis=1)
            assert np.all((speed >= 32 * dial.speed[0]) & (speed <= 32 * dial.speed[1]))
            assert w.background < dial.backgrounds
        assert counts == set(range(dial.shapes[0], dial.shapes[1] + 1)), name


@pytest.mark.parametrize("name", [n for n, dial in WORLDS.items() if not dial.overlap])
def test_shapes_that_may_not_overlap_bounce_off_each_other(name):
    """Over 200 frames of 40 worlds every shape stays in sight (a pixel or two may touch when a
    wall and a shape meet at once); collisions are elastic: the sum of squared speeds holds."""
    collided = False
    for seed in range(40):
        world = ShapesWorld(seed, 32, name)
        world.frames(200)
        energy = [float((s["vel"] ** 2).sum()) for s in world.truth]
        np.testing.assert_allclose(energy, energy[0], rtol=1e-9)
        assert min(s["visible"].min() for s in world.truth) > 0.9, seed
        speeds = np.array([np.linalg.norm(s["vel"], axis=1) for s in world.truth])  # [T, n]
        collided |= bool(np.ptp(speeds, axis=0).max() > 1e-6)  # a speed changed: a collision
    assert collided


@pytest.mark.parametrize("name", [n for n, dial in WORLDS.items() if not dial.overlap])
def test_the_control_path_pushes_the_other_shapes_out_of_its_way(name):
    """Shape 0 keeps to its path; the others get out of its way, but a shape caught against a
    border can still be partly covered: in under 5% of frames under half of it shows."""
    frames = covered = 0
    for seed in range(40):
        world = ShapesWorld(seed, 32, name, control=True)
        world.frames(100)
        visible = np.array([s["visible"].min() for s in world.truth])
        frames, covered = frames + len(visible), covered + (visible < 0.5).sum()
        assert all(np.allclose(s["pos"][0], world.keypoint(s["time"])) for s in world.truth)
    assert covered / frames < 0.05


def test_sample_default_world_shows_every_shape_in_its_first_frame():
    world = ShapesWorld(0, 32)  # sample.py --world-seed 0
    world.render()
    assert world.truth[0]["visible"].min() == 1.0


def test_prompt_says_what_is_drawn_and_events_change_it():
    world = ShapesWorld(5, n_shapes=2, world="easy")  # room for both
    prompt = world.prompt()
    assert prompt.count(" and ") == 1 and prompt.endswith("background")
    frame = world.render()
    for name, events in (("easy", {"colour", "background", "appear"}),
                         ("simple", {"colour", "appear"})):  # one background: no change of it
        seen = set()
        for seed in range(30):
            w = ShapesWorld(seed, world=name)
            before, n = w.prompt(), len(w.kind)
            kind = w.event()
            seen.add(kind)
            assert w.prompt() != before
            assert len(w.kind) == n + (kind == "appear")
        assert seen == events
    assert frame.shape == (32, 32, 3)


def test_truth_gives_the_visible_share_of_each_shape():
    world = ShapesWorld(0, n_shapes=2)
    world.kind[:] = KINDS.index("circle")
    world.size[:] = [4.0, 6.0]
    world.pos[:] = [[8.0, 8.0], [24.0, 24.0]]  # apart
    world.render()
    world.pos[1] = world.pos[0]  # the larger circle in front of the smaller one
    world.render()
    world.pos[1] = world.pos[0] + [6.0, 0.0]  # in front, its centre on the smaller one's edge
    world.render()
    visible = np.array([state["visible"] for state in world.truth])  # [frames, shapes]
    np.testing.assert_array_equal(visible[:2], [[1.0, 1.0], [0.0, 1.0]])
    assert 0.3 < visible[2, 0] < 0.7 and visible[2, 1] == 1.0  # about half of it shows


def test_control_stream_drives_shape_zero():
    world = ShapesWorld(2, control=True)
    world.frames(40)
    for state in world.truth:
        assert np.allclose(state["pos"][0], world.keypoint(state["time"]))
        vector = world.control_vector(state["time"])
        assert np.all(np.abs(vector) <= 1)
        assert np.allclose((vector + 1) / 2 * 32, state["pos"][0])


def test_source_clips():
    source = ShapesSource(32, 2, World(overlap=False, p_event=1.0, p_control=0.5))
    video, prompts, control, anchor = source.clips(8, 6, np.random.default_rng(0))
    assert video.shape == (8, 3, 6, 32, 32) and video.min() >= -1 and video.max() <= 1
    assert len(prompts) == 8 and control.shape == (8, 6, 2) and anchor.shape == (8, 3, 32, 32)
    given = ~np.isnan(control.numpy()).any(axis=(1, 2))
    assert 0 < given.sum() < 8  # some clips have a control path, the others NaN
    # anchor_gap 0: the anchor is one of the clip's own frames
    assert all((video[i] == anchor[i, :, None]).all(dim=(0, 2, 3)).any() for i in range(8))


def test_scene_events_come_only_in_film_mode_clips():
    """In shot mode the anchor holds who is in the scene: no shape changes colour or appears."""
    source = ShapesSource(32, 2, World(overlap=False, p_event=1.0, p_control=0.0))
    film = np.arange(8) % 2 == 1
    video = source.clips(8, 6, np.random.default_rng(0), anchor_gap=4, film=film)[0]
    colours = lambda x: set(map(tuple, x.reshape(3, -1).T.tolist()))  # noqa: E731
    changed = [colours(video[i, :, 0]) != colours(video[i, :, -1]) for i in range(8)]
    assert changed == film.tolist()  # every event changes a colour, the background or the count


def test_source_anchor_before_the_clip():
    """anchor_gap > 0: the anchor is the same world (same colours) some frames before the clip,
    mostly not one of the clip's frames; with the control path it is where the path was then."""
    source = ShapesSource(32, 2, World(overlap=False, p_event=0.0, p_control=1.0))
    video, _, control, anchor = source.clips(16, 8, np.random.default_rng(1), anchor_gap=40)
    inside = [bool((video[i] == anchor[i, :, None]).all(dim=(0, 2, 3)).any()) for i in range(16)]
    assert sum(inside) < 4
    for i in range(16):
        colours = lambda x: set(map(tuple, x.reshape(3, -1).T.tolist()))  # noqa: E731
        assert colours(anchor[i]) == colours(video[i, :, 0])
    assert control.shape == (16, 8, 2) and not torch.isnan(control).any()


def make_folder(folder):
    frames = ShapesWorld(0).frames(12)
    iio.imwrite(folder / "good.mp4", frames, fps=8, macro_block_size=1)
    (folder / "good.txt").write_text("a caption\n")
    iio.imwrite(folder / "gray.gif", frames[..., 0], loop=0)  # [T, H, W] grayscale
    rgba = np.concatenate([frames, np.full(frames.shape[:3] + (1,), 255, np.uint8)], axis=-1)
    iio.imwrite(folder / "rgba.gif", np.ascontiguousarray(rgba[:, :20, :28]), loop=0)  # odd size
    iio.imwrite(folder / "short.gif", frames[:3], loop=0)
    (folder / "corrupt.mp4").write_bytes(b"\x00\x01not a video" * 50)
    (folder / "empty.avi").write_bytes(b"")
    (folder / "notes.md").write_text("not a video")


def test_folder_loader_trains_on_what_is_usable_and_names_the_rest(tmp_path):
    make_folder(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        folder = VideoFolder(str(tmp_path), frames=8, resolution=16)
    message = " ".join(str(w.message) for w in caught)
    for name in ("short.gif", "corrupt.mp4", "empty.avi"):
        assert name in message
    assert "good.mp4" not in message and "notes.md" not in message
    assert len(folder.videos) == 3
    assert sorted(folder.captions) == ["a caption", "a video", "a video"]
    assert all(v.shape[1:] == (16, 16, 3) for v in folder.videos)
    video, prompts, control, anchor = folder.clips(4, 8, np.random.default_rng(0), anchor_gap=4)
    assert video.shape == (4, 3, 8, 16, 16) and np.isnan(control.numpy()).all()
    assert anchor.shape == (4, 3, 16, 16)


def test_folder_with_nothing_usable_is_an_error(tmp_path):
    (tmp_path / "broken.gif").write_bytes(b"GIF89a")
    with pytest.raises(ValueError, match="no usable video"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        VideoFolder(str(tmp_path), frames=8, resolution=16)
    with pytest.raises(ValueError, match="no such folder"):
        VideoFolder(str(tmp_path / "missing"), frames=8, resolution=16)


def test_written_video_reads_back(tmp_path):
    frames = ShapesWorld(0).frames(10)
    writer = VideoWriter(str(tmp_path / "v.gif"), scale=2)
    writer.write(frames[:4])
    writer.write(frames[4:])
    writer.close()
    back = read_video(str(tmp_path / "v.gif"), 32)
    assert len(back) == 10 and np.array_equal(back, frames)

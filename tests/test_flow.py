"""Rectified-flow identities. Run: python -m pytest tests/test_flow.py"""
import torch

from flow import (ANCESTRAL, X_T_MIN, euler_sample, interpolate, noise_from_v, sample_t,
                  schedule, shift_t, v_from_x0, velocity_target, x0_from_v)


def video(seed):
    return torch.randn(3, 3, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_path_endpoints():
    x0, noise = video(0), video(1)
    assert torch.equal(interpolate(x0, noise, torch.zeros(3)), x0)
    assert torch.equal(interpolate(x0, noise, torch.ones(3)), noise)
    mid = interpolate(x0, noise, torch.full((3,), 0.5))
    torch.testing.assert_close(mid, (x0 + noise) / 2)


def test_one_step_to_either_end_is_exact_with_the_true_velocity():
    x0, noise = video(0), video(1)
    t = torch.tensor([0.1, 0.5, 0.93])  # one time per sample, broadcast over [C, T, H, W]
    x_t, v = interpolate(x0, noise, t), velocity_target(x0, noise)
    torch.testing.assert_close(x0_from_v(x_t, v, t), x0, atol=1e-5, rtol=0)
    torch.testing.assert_close(noise_from_v(x_t, v, t), noise, atol=1e-5, rtol=0)


def test_euler_with_the_true_velocity_lands_on_the_data():
    x0, noise = video(0), video(1)
    out = euler_sample(lambda x, t, c: velocity_target(x0, noise), noise, steps=7, shift=3.0)
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)


def test_stochastic_steps_land_on_the_data_of_the_true_field():
    """The exact velocity of a single data point is v(x, t) = (x - x0) / t: its data estimate is
    x0 wherever x is, so every eta ends on x0, however much noise is re-drawn on the way."""
    x0, noise = video(0), video(1)
    velocity = lambda x, t, c: (x - x0) / t.view(-1, 1, 1, 1, 1)
    for eta in (0.0, 0.5, 1.0, ANCESTRAL):
        out = euler_sample(velocity, noise, steps=5, eta=eta,
                           generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)


def test_eta_zero_is_the_euler_step_and_eta_one_redraws_the_noise():
    noise = video(1)
    velocity = lambda x, t, c: torch.sin(3 * x) + t.view(-1, 1, 1, 1, 1)  # any field
    x, ts = noise, schedule(6)
    for t, t_next in zip(ts[:-1], ts[1:]):  # Euler by hand
        x = x + (t_next - t) * velocity(x, t.expand(len(x)), True)
    torch.testing.assert_close(euler_sample(velocity, noise, steps=6), x)
    draw = lambda seed: euler_sample(velocity, noise, steps=6, eta=1.0,  # noqa: E731
                                     generator=torch.Generator().manual_seed(seed))
    assert torch.equal(draw(0), draw(0))             # reproducible from the generator
    assert not torch.allclose(draw(0), draw(1))      # and the fresh noise matters
    assert not torch.allclose(draw(0), x)


def test_the_ode_and_the_ancestral_step_draw_the_data_and_eta_one_shrinks_it():
    """Data x0 ~ N(1, 0.5^2) has the exact velocity v = (x - E[x0 | x_t]) / t, with
    E[x0 | x_t] = mu + (1 - t) s^2 / ((1 - t)^2 s^2 + t^2) (x_t - (1 - t) mu). With it, the ODE
    and DDPM's step draw the data's spread; re-noising the data estimate fully (eta = 1) draws
    less than three quarters of it, however many steps."""
    mu, s = 1.0, 0.5

    def velocity(x, t, conditional):
        t = t.view(-1, 1)
        x0_hat = mu + (1 - t) * s ** 2 / ((1 - t) ** 2 * s ** 2 + t ** 2) * (x - (1 - t) * mu)
        return (x - x0_hat) / t

    noise = torch.randn(20000, 1, generator=torch.Generator().manual_seed(0))
    draw = lambda eta: euler_sample(velocity, noise, steps=200, eta=eta,  # noqa: E731
                                    generator=torch.Generator().manual_seed(1))
    for eta in (0.0, ANCESTRAL, 1.0):
        assert abs(draw(eta).mean() - mu) < 0.02, eta
    assert abs(draw(0.0).std() - s) < 0.015 and abs(draw(ANCESTRAL).std() - s) < 0.015
    assert draw(1.0).std() < 0.75 * s


def test_guidance_extrapolates_from_unconditional_to_conditional():
    noise = torch.zeros(1, 1, 2, 2, 2)
    velocity = lambda x, t, conditional: torch.full_like(x, 1.0 if conditional else 3.0)
    out = euler_sample(velocity, noise, steps=4, guidance=2.5)
    # v = 3 + 2.5 (1 - 3) = -2 at every step, integrated over dt = -1 in total: x = +2
    torch.testing.assert_close(out, torch.full_like(noise, 2.0))


def test_schedule_and_shift():
    ts = schedule(10, shift=5.0)
    assert len(ts) == 11 and ts[0] == 1.0 and ts[-1] == 0.0
    assert torch.all(ts[1:] < ts[:-1])
    s = torch.linspace(0, 1, 11)
    torch.testing.assert_close(shift_t(s, 1.0), s)
    assert torch.all(shift_t(s[1:-1], 5.0) > s[1:-1])  # a shift > 1 moves times towards noise
    t = sample_t(10000, torch.Generator().manual_seed(0), shift=3.0)
    assert t.min() >= 0 and t.max() < 1 and 0.66 < t.mean() < 0.69  # E[t] = 1.5 (1 - ln 3 / 2)


def test_x_prediction_gives_the_true_velocity_and_inverts_the_data_step():
    """v_from_x0 with the true x0 is the true v above the clamp; x0_from_v undoes it there;
    below it, t is held at X_T_MIN, so v stays finite at t = 0."""
    x0, noise = video(0), video(1)
    t = torch.tensor([0.05, 0.5, 1.0])
    x_t = interpolate(x0, noise, t)
    torch.testing.assert_close(v_from_x0(x_t, x0, t), velocity_target(x0, noise))
    x0_hat = video(2)
    torch.testing.assert_close(x0_from_v(x_t, v_from_x0(x_t, x0_hat, t), t), x0_hat)
    low = torch.tensor([0.0, 0.01, 0.02])
    x_low = interpolate(x0, noise, low)
    torch.testing.assert_close(v_from_x0(x_low, x0_hat, low), (x_low - x0_hat) / X_T_MIN)


def test_logit_normal_times_lean_to_the_side_their_mean_says():
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    uniform = sample_t(20000, g())
    noise_side = sample_t(20000, g(), 1.0, 0.8, 0.8)
    data_side = sample_t(20000, g(), 1.0, -0.8, 0.8)
    for t in (uniform, noise_side, data_side):
        assert 0 <= t.min() and t.max() <= 1
    assert abs(uniform.mean() - 0.5) < 0.01
    assert noise_side.median() > 0.66 and data_side.median() < 0.34  # sigmoid(+-0.8) = 0.69, 0.31

"""
flow.py: the rectified-flow math of svi, in the SVI/Wan code convention.

    x_t = (1 - t) * x0 + t * noise          t = 0 is data, t = 1 is noise
    v   = noise - x0                         the velocity the DiT learns to predict
    sampling integrates dx/dt = v from t = 1 down to t = 0 with Euler steps

(The SVI paper writes the same path with t' = 1 - t and V = x0 - noise: paper Eq. 1-2.)
Every `t` here is a tensor of shape [B] (or a scalar) that broadcasts over [B, C, T, H, W].
Try it: python -m pytest tests/test_flow.py
"""
import torch
import torch.nn.functional as F


def _expand(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """[B] (or scalar) -> [B, 1, 1, 1, 1], so t broadcasts over a video x."""
    t = torch.as_tensor(t, device=x.device, dtype=x.dtype)
    return t.reshape(-1, *([1] * (x.dim() - 1))) if t.dim() > 0 else t


def interpolate(x0, noise, t):
    """A point on the straight path from data to noise: x_t = (1 - t) x0 + t noise."""
    t = _expand(t, x0)
    return (1 - t) * x0 + t * noise


def velocity_target(x0, noise):
    """d x_t / dt along the path: v = noise - x0, the same at every t."""
    return noise - x0


def x0_from_v(x_t, v, t):
    """One Euler step from t to the data end (t = 0): x0_hat = x_t - t v."""
    return x_t - _expand(t, x_t) * v


def noise_from_v(x_t, v, t):
    """One Euler step from t to the noise end (t = 1): noise_hat = x_t + (1 - t) v."""
    return x_t + (1 - _expand(t, x_t)) * v


X_T_MIN = 0.05  # the floor of t in v = (x_t - x0_hat) / t, as Li & He (2025) clamp it


def v_from_x0(x_t, x0_hat, t, t_min: float = X_T_MIN):
    """The velocity of a network that predicts the clean clip (x-prediction, Li & He 2025):
    x_t = (1 - t) x0 + t noise  =>  v = noise - x0 = (x_t - x0) / t, with t held at or above
    t_min, so the loss on v stays finite at the data end. x0_from_v inverts it for t >= t_min."""
    return (x_t - x0_hat) / _expand(t, x_t).clamp(min=t_min)


def shift_t(s, shift: float):
    """The schedule shift of SD3/Wan: t = shift s / (1 + (shift - 1) s). shift > 1 spends more
    time near noise, which larger frames need; shift = 1 is the identity."""
    return shift * s / (1 + (shift - 1) * s)


def sample_t(n: int, generator: torch.Generator, shift: float = 1.0,
             logit_mean: float | None = None, logit_std: float = 1.0) -> torch.Tensor:
    """Training times [n], then shifted: s uniform in [0, 1) (as the official code samples
    them), or logit-normal, s = sigmoid(logit_mean + logit_std z), z ~ N(0, 1) (SD3, Esser et
    al. 2024): logit_mean > 0 spends more steps near noise, < 0 near the data."""
    if logit_mean is None:
        return shift_t(torch.rand(n, generator=generator), shift)
    z = torch.randn(n, generator=generator)
    return shift_t(torch.sigmoid(logit_mean + logit_std * z), shift)


def schedule(steps: int, shift: float = 1.0) -> torch.Tensor:
    """Inference times [steps + 1], from 1 down to 0 (both ends included)."""
    return shift_t(torch.linspace(1.0, 0.0, steps + 1), shift)


def flow_loss(v_hat, v_target):
    """Mean squared error of the velocity, in fp32 (paper Eq. 6 without the error terms)."""
    return F.mse_loss(v_hat.float(), v_target.float())


ANCESTRAL = "ancestral"  # the eta of DDPM's step (euler_sample)


@torch.no_grad()
def euler_sample(velocity, noise, steps: int, shift: float = 1.0, guidance: float = 1.0,
                 eta: float | str = 0.0, generator: torch.Generator | None = None):
    """Integrate from noise (t = 1) to data (t = 0) in `steps` steps.

    velocity(x, t, conditional) -> v, with t of shape [B]; conditional=False must drop the prompt.
    With guidance != 1 this is classifier-free guidance (Ho & Salimans 2022):
        v = v_uncond + guidance * (v_cond - v_uncond)
    Each step splits x_t into the model's data and noise estimates and rebuilds x at the next
    time t' from them, with a share eta of the noise drawn anew (from `generator`):
        x_t' = (1 - t') x0_hat + t' (sqrt(1 - eta^2) noise_hat + eta z),   z ~ N(0, I)
    eta = 0 is exactly the Euler step x_t' = x_t + (t' - t) v of the flow's ODE. eta =
    "ancestral" is DDPM's step (Ho et al. 2020), a draw from the path's posterior at t' given
    x_t and x0_hat: it keeps the share sqrt(1 - eta^2) = (1 - t) t' / ((1 - t') t) of noise_hat.
    Both draw the data distribution itself for an exact model, and the ancestral step lets a
    small model wash out some of its own mistakes. eta = 1 keeps only the data estimate and
    re-noises it (as multistep consistency sampling does): x0_hat is the mean of what the clip
    may be, so each step pulls the draw towards that mean (tests/test_flow.py).
    """
    ts = schedule(steps, shift).to(noise.device)
    x = noise
    for t, t_next in zip(ts[:-1], ts[1:]):
        t_batch = t.expand(x.shape[0])
        v = velocity(x, t_batch, True)
        if guidance != 1.0:
            v_uncond = velocity(x, t_batch, False)
            v = v_uncond + guidance * (v - v_uncond)
        if eta == 0.0:
            x = x + (t_next - t) * v  # t_next < t: a step towards the data
            continue
        if eta == ANCESTRAL:
            keep = (1 - t) * t_next / ((1 - t_next) * t)
            fresh = (1 - keep ** 2) ** 0.5
        else:
            keep, fresh = (1 - eta ** 2) ** 0.5, eta
        z = torch.randn(x.shape, generator=generator).to(x.device)
        noise_mix = keep * noise_from_v(x, v, t) + fresh * z
        x = interpolate(x0_from_v(x, v, t), noise_mix, t_next)
    return x

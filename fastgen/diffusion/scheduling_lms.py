"""LMSDiscreteScheduler (diffusers 0.42): k-diffusion's linear multistep sampler (order 1-4), fused.

The LMS coefficients are integrals of Lagrange basis polynomials over one sigma step. diffusers
integrates them numerically (scipy.integrate.quad, epsrel 1e-4, with a float32 integrand); here
they are integrated exactly in closed form (:func:`lms_coefficients`), float64.
"""
from __future__ import annotations

import numpy as np
import torch

from ..ops import sampling_step
from ..ops.step_coefficients import _rows
from . import sigmas as S
from .scheduling_base import SchedulerOutput
from .scheduling_euler import SigmaSchedulerBase, x0_and_derivative

LMSDiscreteSchedulerOutput = SchedulerOutput
MAX_ORDER = 4  # the fused step holds four terms: this step's derivative and three past ones


def lms_coefficients(sigmas, t, order: int) -> np.ndarray:
    """Exact LMS coefficients, float64 (len(t), order): column j (for q = min(t + 1, order) nodes,
    zero beyond q) is

        c_j(t) = int_{sigmas[t]}^{sigmas[t+1]} prod_{k != j, k < q} (tau - s_k) / (s_j - s_k) dtau,
        s_k = sigmas[t - k],

    the weight of the derivative from j steps back. The numerator polynomial is expanded around
    a = sigmas[t] (roots sigmas[t-k] - a, integrated from 0 to sigmas[t+1] - a, so nothing large
    cancels) and integrated term by term; vectorised over t. Two equal nodes (a repeated sigma, e.g.
    ``leading`` spacing with steps_offset pushing t past T - 1) give non-finite coefficients, as
    diffusers' quadrature of the same basis does.
    """
    sig = np.asarray(sigmas, dtype=np.float64)
    t = np.atleast_1d(np.asarray(t, dtype=np.int64))
    out = np.zeros((len(t), order))
    q_all = np.minimum(t + 1, order)
    for q in np.unique(q_all):
        sel = q_all == q
        tt = t[sel]
        a = sig[tt]
        h = sig[tt + 1] - a
        nodes = np.stack([sig[tt - k] for k in range(q)], axis=1)  # (m, q)
        for j in range(q):
            poly = np.ones((len(tt), 1))  # coefficients of u^0, u^1, ... of prod (u - c_k)
            denom = np.ones(len(tt))
            for k in range(q):
                if k == j:
                    continue
                c = nodes[:, k] - a
                shifted = np.concatenate([np.zeros((len(tt), 1)), poly], axis=1)  # u * poly
                poly = shifted - c[:, None] * np.concatenate([poly, np.zeros((len(tt), 1))], axis=1)
                denom = denom * (nodes[:, j] - nodes[:, k])
            powers = np.arange(1, poly.shape[1] + 1)
            integral = (poly * h[:, None] ** powers / powers).sum(axis=1)
            with np.errstate(divide="ignore", invalid="ignore"):  # repeated nodes: inf / nan, as diffusers'
                out[sel, j] = integral / denom
    return out


class LMSDiscreteScheduler(SigmaSchedulerBase):
    """Linear multistep on the sigma grid, constructor arguments as diffusers'.

    A step with ``order`` o at step index t uses q = min(t + 1, o) Lagrange nodes and the last
    ``used`` = min(q, stored) derivatives (diffusers' ``zip`` over the derivatives it keeps):

        d_0 = (x - x0) / sigma_t   (from x and m, the eps columns)
        out = x + c_0 d_0 + c_1 d_1 + ... + c_{used-1} d_{used-1}

    one fused call with the past derivatives d_1.. (float32 states, newest first) as history; the
    step's state is d_0, kept in ``derivatives``. One table per order (built for order=4 in
    set_timesteps, for another order the first time step sees it): row t * o + used - 1.
    ``pred_original_sample`` (x0 = PX x + PM m; m itself for a "sample" model) is an extra
    elementwise pass of torch ops (the fused state holds d_0), skipped when
    ``compute_pred_original_sample`` is off.
    """

    order = 1

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, use_karras_sigmas: bool = False,
                 use_exponential_sigmas: bool = False, use_beta_sigmas: bool = False,
                 prediction_type: str = "epsilon", timestep_spacing: str = "linspace", steps_offset: int = 0):
        self._register_config(locals())
        S.check_one_sigma_type(use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas)
        self._init_sigma_schedule(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                                  prediction_type, timestep_spacing, False)
        self.use_karras_sigmas = use_karras_sigmas
        self.set_timesteps(num_train_timesteps, None)
        self.derivatives = []
        self.is_scale_input_called = False

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        """Timesteps and sigmas as diffusers builds them (spacing, Karras / exponential / beta)."""
        ts, sig, log_sigmas = self._spaced(num_inference_steps)
        sig, ts = self._converted(sig, ts, log_sigmas)
        self.num_inference_steps = len(ts)
        sigmas = torch.from_numpy(np.concatenate([sig, [0.0]]).astype(np.float32))
        self._order_tables = {}
        self.derivatives = []
        self._publish(torch.from_numpy(np.asarray(ts)).to(torch.float32), sigmas, (sigmas**2 + 1) ** 0.5,
                      self._lms_table(sigmas, MAX_ORDER), device)
        self._order_tables[MAX_ORDER] = self._coefs
        if device is not None:  # the key step reads (CUDA graphs: no copy inside a captured loop)
            self._table_for(MAX_ORDER, self.timesteps.device)

    def get_lms_coefficient(self, order: int, t: int, current_order: int) -> float:
        """The coefficient of the derivative ``current_order`` steps back at step index ``t``
        (diffusers' method; exact here)."""
        return float(lms_coefficients(self.sigmas.double().numpy(), [t], order)[0, current_order])

    def _lms_table(self, sigmas: torch.Tensor, order: int) -> torch.Tensor:
        """(n * order, NUM_COEFS): row t * order + used - 1 for step t using ``used`` terms."""
        n = len(sigmas) - 1
        s = sigmas.double()
        coef = torch.from_numpy(lms_coefficients(s.numpy(), np.arange(n), order))  # (n, order)
        used = torch.arange(1, order + 1)
        # keep column j only where j < used: (n, order used, order j)
        c = coef[:, None, :] * (torch.arange(order)[None, None, :] < used[None, :, None])
        c = torch.cat([c, torch.zeros(n, order, MAX_ORDER - order, dtype=torch.float64)], dim=-1)
        pred = self.config.prediction_type
        cols = x0_and_derivative(s[:-1, None], "sample" if pred == "original_sample" else pred)
        cols = {k: v.expand(n, order) for k, v in cols.items()}
        rows = _rows((n, order), None, **cols, OX=1.0, OE=c[..., 0], H1=c[..., 1], H2=c[..., 2], H3=c[..., 3],
                     SE=1.0)
        return rows.reshape(n * order, -1)

    def _table_for(self, order: int, device) -> torch.Tensor:
        if order not in self._order_tables:
            self._order_tables[order] = self._lms_table(self.sigmas, order)
        return self._on(("coefs", order), self._order_tables[order], device)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, order: int = 4,
             return_dict: bool = True):
        """One LMS step of order ``order`` (1-4; lower at the start, as diffusers), one fused call.
        Returns :class:`SchedulerOutput` (``prev_sample``, ``pred_original_sample``) or a tuple."""
        if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or not 1 <= order <= MAX_ORDER:
            raise ValueError(f"order must be an int in [1, {MAX_ORDER}], got {order!r}")
        order = int(order)
        i = self._begin_step(timestep, len(self.sigmas) - 1)
        device = sample.device
        q = min(i + 1, order)
        used = min(q, len(self.derivatives) + 1)
        history = tuple(reversed(self.derivatives))[:used - 1]
        coefs = self._table_for(order, device)
        out, d0 = sampling_step(sample, model_output, coefs, self._row_index(i * order + used - 1, device),
                                history=history, return_state=True, impl=self.impl)
        self.derivatives.append(d0)
        if len(self.derivatives) > order:
            self.derivatives.pop(0)
        x0 = None
        if self.compute_pred_original_sample:
            if self.config.prediction_type in ("sample", "original_sample"):
                x0 = model_output
            else:  # the extra pass: x0 = PX x + PM m with this step's (host) scalars
                sigma = self._host_sigmas[i]
                s2 = sigma * sigma + 1
                px, pm = (1.0, -sigma) if self.config.prediction_type == "epsilon" else (1 / s2, -sigma / s2**0.5)
                x0 = px * sample.float() + pm * model_output.float()
                x0 = x0.to(torch.promote_types(sample.dtype, model_output.dtype))
        self._step_index += 1
        if not return_dict:
            return out, x0
        return SchedulerOutput(out, x0)

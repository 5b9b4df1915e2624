"""The EDM schedulers of diffusers (0.42): EDMEulerScheduler and EDMDPMSolverMultistepScheduler, fused.

EDM (Karras et al. 2022) samples in sigma space, x = x0 + sigma noise, with the network wrapped in
its preconditioning: the model sees c_in(sigma) x and its output m gives

    x0 = c_skip x + c_out m,   c_skip = sd^2 / (sigma^2 + sd^2),   c_out = +-sigma sd / sqrt(sigma^2 + sd^2)

(sd = sigma_data; c_out's sign is - for v_prediction). Both are affine in (x, m), so every step is
one row of :func:`fastgen.ops.sampling_step`. The sigma schedule is EDM's own (eq. 5 with rho, or
evenly spaced in log sigma), computed in the dtypes diffusers uses so that ``sigmas`` and
``timesteps`` (= c_noise = log(sigma) / 4) match diffusers' bit for bit.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .. import _rng
from ..ops import sampling_step
from ..ops.step_coefficients import _rows
from . import sigmas as S
from .scheduling_base import SchedulerBase, SchedulerOutput
from .scheduling_dpmsolver_multistep import multistep_order
from .scheduling_flow_match import SigmaNoising
from .thresholding import thresholded_x0

SIGMA_SCHEDULES = ("karras", "exponential")
EDM_PREDICTION_TYPES = ("epsilon", "v_prediction")
EDMEulerSchedulerOutput = SchedulerOutput


def edm_sigmas(ramp: torch.Tensor, schedule: str, sigma_min: float, sigma_max: float, rho: float) -> torch.Tensor:
    """EDM's sigmas for ``ramp`` (values in [0, 1], 0 -> sigma_max), descending, as diffusers computes them:
    karras: (sigma_max^(1/rho) + ramp (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho in ramp's dtype;
    exponential: exp of len(ramp) values evenly spaced from log sigma_max down to log sigma_min,
    float32 (diffusers uses the default dtype there, whatever the ramp's)."""
    if schedule == "karras":
        min_inv_rho = sigma_min ** (1 / rho)
        max_inv_rho = sigma_max ** (1 / rho)
        return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return torch.linspace(math.log(sigma_min), math.log(sigma_max), len(ramp)).exp().flip(0)


def _check_edm_config(sigma_schedule, prediction_type, final_sigmas_type) -> None:
    if sigma_schedule not in SIGMA_SCHEDULES:
        raise ValueError(f"sigma_schedule must be one of {SIGMA_SCHEDULES}, got {sigma_schedule!r}")
    if prediction_type not in EDM_PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {EDM_PREDICTION_TYPES} for the EDM schedulers, got "
                         f"{prediction_type!r}")
    S.check_final_sigmas_type(final_sigmas_type)


class _EDMBase(SigmaNoising, SchedulerBase):
    """What both EDM schedulers share: preconditioning, scale_model_input, add_noise."""

    _compatibles = ()
    order = 1

    @property
    def init_noise_sigma(self) -> float:
        return (self.config.sigma_max**2 + 1) ** 0.5

    def precondition_inputs(self, sample: torch.Tensor, sigma) -> torch.Tensor:
        """c_in(sigma) * sample."""
        return sample * self._get_conditioning_c_in(sigma)

    def precondition_noise(self, sigma) -> torch.Tensor:
        """c_noise = log(sigma) / 4 (the EDM model's timestep input)."""
        if not isinstance(sigma, torch.Tensor):
            sigma = torch.tensor([sigma])
        return 0.25 * torch.log(sigma)

    def precondition_outputs(self, sample: torch.Tensor, model_output: torch.Tensor, sigma) -> torch.Tensor:
        """x0 = c_skip(sigma) sample + c_out(sigma) model_output (reference torch ops)."""
        c_skip, c_out = self._skip_out(sigma)
        return c_skip * sample + c_out * model_output

    def _skip_out(self, sigma):
        sd = self.config.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2) ** 0.5
        return c_skip, (-c_out if self.config.prediction_type == "v_prediction" else c_out)

    def _get_conditioning_c_in(self, sigma):
        return 1 / ((sigma**2 + self.config.sigma_data**2) ** 0.5)

    def _publish_sigmas(self, sigmas: torch.Tensor, device) -> None:
        """``sigmas`` (float32, with the final entry) stay on the CPU, as diffusers keeps them;
        ``timesteps`` = c_noise of all but the final one go to ``device``."""
        self.sigmas = sigmas
        self._host_sigmas = sigmas
        self._device_cache = {}
        self._set_schedule(self.precondition_noise(sigmas[:-1]).to(torch.float32), device)
        self._c_in = self._get_conditioning_c_in(sigmas).to(torch.float32)  # float32 ops, as diffusers
        if device is not None:  # every table a step reads is on the device before the loop (CUDA graphs)
            self._on("c_in", self._c_in, self.timesteps.device)

    def scale_model_input(self, sample: torch.Tensor, timestep) -> torch.Tensor:
        """c_in(sigma) * sample at the current step (its index found from ``timestep`` on the first
        call); the factor is read on the device."""
        if self._step_index is None:
            self._init_step_index(timestep)
        i = self._step_index
        if not 0 <= i < len(self._c_in):
            raise ValueError(f"scale_model_input at step {i}: past the schedule's {len(self._c_in) - 1} steps")
        self.is_scale_input_called = True
        return sample * self._on("c_in", self._c_in, sample.device)[i]

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """x = x0 + sigma noise, sigma of each sample looked up from ``timesteps`` as diffusers does."""
        return original_samples + noise * self._sigmas_at(timesteps, original_samples)

    @property
    def get_velocity(self):
        raise AttributeError(f"{type(self).__name__} has no get_velocity (as in diffusers)")


class EDMEulerScheduler(_EDMBase):
    """Euler steps in EDM's sigma space (Karras et al. 2022, Algorithm 2 with its churn), constructor
    arguments as diffusers'.

    With gamma = min(s_churn / n, sqrt(2) - 1) where s_tmin <= sigma <= s_tmax (else 0), sigma_hat =
    sigma (1 + gamma), x_hat = x + s_noise sqrt(sigma_hat^2 - sigma^2) z, and x0 from x_hat at
    sigma_hat (or the given ``pred_original_sample``)::

        x' = x_hat + (x_hat - x0) (sigma_next - sigma_hat) / sigma_hat

    one fused pass (z enters through x_hat and x0: SZ). A table of rows is built per (churn
    settings, x0 given or not) the first time ``step`` sees them. ``pred_original_sample`` of a
    churn step is x0 from x_hat, which holds z: the kernel returns the z-free part and one torch op
    adds c_skip s_noise sqrt(sigma_hat^2 - sigma^2) z (z drawn as an explicit tensor on such steps).
    """

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5,
                 sigma_schedule: str = "karras", num_train_timesteps: int = 1000, prediction_type: str = "epsilon",
                 rho: float = 7.0, final_sigmas_type: str = "zero"):
        self._register_config(locals())
        _check_edm_config(sigma_schedule, prediction_type, final_sigmas_type)
        self.num_inference_steps = None
        ramp = torch.arange(num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
        self._publish_sigmas(self._sigmas_of(ramp), None)
        self.is_scale_input_called = False
        self._tables: dict = {}

    def _sigmas_of(self, ramp: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        sig = edm_sigmas(ramp, cfg.sigma_schedule, cfg.sigma_min, cfg.sigma_max, cfg.rho).to(torch.float32)
        last = sig[-1:] if cfg.final_sigmas_type == "sigma_min" else torch.zeros(1)
        return torch.cat([sig, last])

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, sigmas=None) -> None:
        """n sigmas from EDM's schedule at ramp = linspace(0, 1, n), or at the given ramp values
        ``sigmas`` (in [0, 1], as diffusers treats them), plus the final sigma."""
        if sigmas is None:
            if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)) \
                    or num_inference_steps < 1:
                raise ValueError(f"num_inference_steps must be a positive int (or pass sigmas), got "
                                 f"{num_inference_steps!r}")
            ramp = torch.linspace(0, 1, int(num_inference_steps), dtype=torch.float64)
        else:
            ramp = torch.as_tensor(sigmas).to(torch.float64).reshape(-1)
            if ramp.numel() == 0:
                raise ValueError("sigmas must hold at least one value")
        sig = self._sigmas_of(ramp)
        self.num_inference_steps = len(sig) - 1
        self._publish_sigmas(sig, device)
        self._tables = {}
        self._num_rows = self.num_inference_steps
        self._build((0.0, 0.0, float("inf"), 1.0, False))  # the plain Euler step's table
        if device is not None:
            device = self.timesteps.device  # with its index: caches are keyed by the samples' device
            self._table((0.0, 0.0, float("inf"), 1.0, False), device)
            self._row_index(0, device)
        self._reset_noise_state(device)

    def _gammas(self, s_churn: float, s_tmin: float, s_tmax: float) -> np.ndarray:
        """Per step, diffusers' gamma (host; the window test in float32 against sigma's float32)."""
        sig = self._host_sigmas[:-1].numpy()
        in_window = (np.float32(s_tmin) <= sig) & (sig <= np.float32(s_tmax))
        gamma = min(s_churn / (len(self._host_sigmas) - 1), 2**0.5 - 1)
        return np.where(in_window, gamma, 0.0)

    def _table(self, key: tuple, device) -> torch.Tensor:
        """The table of ``key`` = (s_churn, s_tmin, s_tmax, s_noise, x0 given) on ``device``."""
        self._build(key)
        return self._on(("coefs",) + key, self._tables[key], device)

    def _build(self, key: tuple) -> None:
        if key not in self._tables:
            s_churn, s_tmin, s_tmax, s_noise, given_x0 = key
            sig32 = self._host_sigmas[:-1]
            gamma = torch.from_numpy(self._gammas(s_churn, s_tmin, s_tmax))
            # sigma_hat in float32, as diffusers computes it; the rest from those values in float64
            sigma_hat = (sig32 * (gamma + 1).to(torch.float32)).double()
            sigma = sig32.double()
            k = s_noise * (sigma_hat**2 - sigma**2).clamp_min(0).sqrt()
            r = (self._host_sigmas[1:].double() - sigma_hat) / sigma_hat
            if given_x0:
                c_skip, cols = torch.zeros_like(sigma), dict(PM=1.0)
            else:
                c_skip, c_out = self._skip_out(sigma_hat)
                cols = dict(PX=c_skip, PM=c_out)
            self._tables[key] = _rows(sigma.shape, None, OX=1.0 + r, O0=-r, SZ=k * (1.0 + r - r * c_skip), S0=1.0,
                                      **cols)
            self._tables[key + ("churn",)] = ((gamma > 0).tolist(), (c_skip * k).tolist())  # host lists

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, s_churn: float = 0.0,
             s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0, generator=None,
             return_dict: bool = True, pred_original_sample: torch.Tensor | None = None):
        """One Euler step (with churn where asked). ``timestep``: a value of ``timesteps`` (an
        integer index is an error, as in diffusers). Returns :class:`EDMEulerSchedulerOutput`
        (``prev_sample`` in the model output's dtype, ``pred_original_sample``) or a tuple."""
        self._refuse_integer_timestep(timestep)
        i = self._begin_step(timestep, self.num_inference_steps)
        device = sample.device
        given = pred_original_sample is not None
        key = (float(s_churn), float(s_tmin), float(s_tmax), float(s_noise), given)
        coefs = self._table(key, device)
        churn, x0_noise = self._tables[key + ("churn",)]
        want_x0 = self.compute_pred_original_sample and not given
        noise_args, z = {}, None
        if churn[i]:  # diffusers draws only where gamma > 0, in the model output's dtype
            noise_args = self._noise_args(model_output, generator, None, model_output.dtype)
            if want_x0 and "seed" in noise_args:  # x0 needs z itself: draw it as a tensor from the same stream
                z = _rng.philox_normal_ref(noise_args["seed"], sample.numel()).view(sample.shape)
                self.advance_noise(sample.numel())
                noise_args = {"noise": z}
            z = noise_args.get("noise")
        source = pred_original_sample if given else model_output
        out, x0 = sampling_step(sample, source, coefs, self._row_index(i, device), return_state=want_x0,
                                impl=self.impl, **noise_args)
        self._after_noise(noise_args, sample.numel())
        self._step_index += 1
        out = out.to(model_output.dtype)
        if given:
            x0 = pred_original_sample
        elif x0 is not None:
            if z is not None:
                x0 = x0 + x0_noise[i] * z.to(x0.dtype)
            x0 = x0.to(torch.promote_types(torch.float32, model_output.dtype))
        if not return_dict:
            return (out, x0)
        return EDMEulerSchedulerOutput(prev_sample=out, pred_original_sample=x0)


class EDMDPMSolverMultistepScheduler(_EDMBase):
    """Multistep DPM-Solver++ (Lu et al. 2022) on EDM's schedule (alpha = 1, sigma = EDM's sigma),
    orders 1-3, ODE ("dpmsolver++") and SDE ("sde-dpmsolver++", orders 1-2: diffusers 0.42 has no
    third-order SDE update and fails there; so does this, with a clear error), constructor
    arguments as diffusers'.

    The table has 3n rows: row o n + i is step i -> i+1 at order o + 1, the past x0 (float32 states
    of the earlier steps, ``model_outputs``) as history h1 (previous) and h2 (the one before).
    ``thresholding=True`` thresholds x0 in the documented extra pass of
    :func:`fastgen.diffusion.thresholding.thresholded_x0`, then runs the step from that x0.
    """

    _absent_timestep_is_last = True

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5,
                 sigma_schedule: str = "karras", num_train_timesteps: int = 1000, prediction_type: str = "epsilon",
                 rho: float = 7.0, solver_order: int = 2, thresholding: bool = False,
                 dynamic_thresholding_ratio: float = 0.995, sample_max_value: float = 1.0,
                 algorithm_type: str = "dpmsolver++", solver_type: str = "midpoint", lower_order_final: bool = True,
                 euler_at_final: bool = False, final_sigmas_type: str = "zero"):
        self._register_config(locals())
        if algorithm_type not in ("dpmsolver++", "sde-dpmsolver++"):
            if algorithm_type != "deis":
                raise NotImplementedError(f"{algorithm_type} is not implemented for {type(self)}")
            self.register_to_config(algorithm_type="dpmsolver++")  # diffusers maps it the same way
        if solver_type not in ("midpoint", "heun"):
            if solver_type not in ("logrho", "bh1", "bh2"):
                raise NotImplementedError(f"{solver_type} is not implemented for {type(self)}")
            self.register_to_config(solver_type="midpoint")
        if algorithm_type not in ("dpmsolver++", "sde-dpmsolver++") and final_sigmas_type == "zero":
            raise ValueError(f"`final_sigmas_type` {final_sigmas_type} is not supported for `algorithm_type` "
                             f"{algorithm_type}. Please choose `sigma_min` instead.")  # diffusers' check, as it runs
        _check_edm_config(sigma_schedule, prediction_type, final_sigmas_type)
        if isinstance(solver_order, bool) or solver_order not in (1, 2, 3):
            raise ValueError(f"solver_order must be 1, 2 or 3, got {solver_order!r}")
        self.num_inference_steps = None
        sig = edm_sigmas(torch.linspace(0, 1, num_train_timesteps), sigma_schedule, sigma_min, sigma_max, rho)
        self._publish_sigmas(torch.cat([sig, torch.zeros(1)]), None)
        self.model_outputs = [None] * solver_order
        self.lower_order_nums = 0

    def set_timesteps(self, num_inference_steps: int | None = None, device=None) -> None:
        """n sigmas from EDM's schedule (float32 ramp, as diffusers), then the final sigma
        (0, or the config's sigma_min)."""
        cfg = self.config
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)) \
                or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a positive int, got {num_inference_steps!r}")
        n = int(num_inference_steps)
        sig = edm_sigmas(torch.linspace(0, 1, n), cfg.sigma_schedule, cfg.sigma_min, cfg.sigma_max, cfg.rho)
        last = cfg.sigma_min if cfg.final_sigmas_type == "sigma_min" else 0
        self._publish_sigmas(torch.cat([sig.to(torch.float32), torch.tensor([last], dtype=torch.float32)]), device)
        self.num_inference_steps = n
        self._coefs, self._x0_coefs = self._table()
        self._num_rows = 3 * n
        self.model_outputs = [None] * cfg.solver_order
        self.lower_order_nums = 0
        if device is not None:
            device = self.timesteps.device  # with its index: caches are keyed by the samples' device
            self._on("coefs", self._coefs, device)
            if cfg.thresholding:
                self._on("x0_coefs", self._x0_coefs, device)
            self._row_index(0, device)
        self._reset_noise_state(device)

    def _table(self):
        """(rows from the model output, rows from a given x0): 3n rows, order-major."""
        cfg = self.config
        s = self._host_sigmas.double()
        n = len(s) - 1
        st, s0 = s[1:], s[:-1]
        s1 = torch.cat([s0[:1], s0[:-1]])  # the point before s0 (row 0 never uses it)
        s2 = torch.cat([s0[:2], s0[:-2]])[:n]
        lam = lambda v: -v.log()  # noqa: E731  lambda = log(alpha) - log(sigma), alpha = 1
        h = lam(st) - lam(s0)
        r0 = (lam(s0) - lam(s1)) / h
        r1 = (lam(s1) - lam(s2)) / h
        em1 = torch.expm1(-h)  # e^-h - 1
        zero = torch.zeros_like(h)
        if cfg.algorithm_type == "dpmsolver++":
            ox, d0, sz = st / s0, -em1, zero
            c1 = -0.5 * em1 if cfg.solver_type == "midpoint" else em1 / h + 1.0
        else:
            e2 = -torch.expm1(-2.0 * h)  # 1 - e^-2h
            ox, d0, sz = st / s0 * torch.exp(-h), e2, st * e2.sqrt()
            c1 = 0.5 * e2 if cfg.solver_type == "midpoint" else e2 / (-2.0 * h) + 1.0
        first = dict(OX=ox, O0=d0, SZ=sz)
        second = dict(OX=ox, O0=d0 + c1 / r0, H1=-c1 / r0, SZ=sz)
        if cfg.algorithm_type == "dpmsolver++":
            ca, cb = em1 / h + 1.0, -((em1 + h) / h**2 - 0.5)
            u = ca * (1.0 + r0 / (r0 + r1)) + cb / (r0 + r1)  # coefficient of D1_0 = (m0 - m1) / r0
            w = -ca * r0 / (r0 + r1) - cb / (r0 + r1)  # coefficient of D1_1 = (m1 - m2) / r1
            third = dict(OX=ox, O0=d0 + u / r0, H1=-u / r0 + w / r1, H2=-w / r1, SZ=sz)
        else:  # no third-order SDE update in diffusers: rows of NaN, refused in step
            third = dict(OX=torch.full_like(h, float("nan")))
        c_skip, c_out = self._skip_out(s0)
        tables = []
        for pre in (dict(PX=c_skip, PM=c_out), dict(PM=1.0)):
            rows = [_rows(h.shape, None, S0=1.0, **pre, **cols) for cols in (first, second, third)]
            tables.append(torch.cat(rows))
        return tables

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None,
             return_dict: bool = True):
        """One multistep solver step. Returns :class:`SchedulerOutput` (``prev_sample``) or a 1-tuple."""
        i = self._begin_step(timestep, self.num_inference_steps)
        cfg = self.config
        order = multistep_order(cfg, i, self.num_inference_steps, self.lower_order_nums)
        if order == 3 and cfg.algorithm_type == "sde-dpmsolver++":
            raise NotImplementedError("a third-order step of algorithm_type='sde-dpmsolver++': diffusers 0.42 has no "
                                      "such update (it fails here too); use solver_order=2 or 'dpmsolver++'")
        device = sample.device
        dtype = torch.promote_types(sample.dtype, model_output.dtype)  # diffusers' x0 dtype
        index = self._row_index((order - 1) * self.num_inference_steps + i, device)
        noise_args = {}
        if cfg.algorithm_type == "sde-dpmsolver++":
            noise_args = self._noise_args(model_output, generator, None, dtype)
        source, coefs = model_output, self._on("coefs", self._coefs, device)
        if cfg.thresholding:  # the documented extra pass: x0 thresholded, then the step from that x0
            source = thresholded_x0(sample, model_output, coefs, index, cfg.dynamic_thresholding_ratio,
                                    cfg.sample_max_value)
            coefs = self._on("x0_coefs", self._x0_coefs, device)
        history = tuple(self.model_outputs[-1:-order:-1])  # the previous x0, then the one before
        out, x0 = sampling_step(sample, source, coefs, index, history=history, return_state=True, impl=self.impl,
                                **noise_args)
        self._after_noise(noise_args, sample.numel())
        self.model_outputs = self.model_outputs[1:] + [x0]
        if self.lower_order_nums < cfg.solver_order:
            self.lower_order_nums += 1
        self._step_index += 1
        out = out.to(dtype)
        if not return_dict:
            return (out,)
        return SchedulerOutput(out)

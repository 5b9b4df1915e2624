"""DPMSolverMultistepScheduler: diffusers' (0.42) multistep DPM-Solver / DPM-Solver++ (orders 1-3,
ODE and SDE), fused; plus :class:`DPMSolverFamilyBase`, what it shares with DPMSolverSinglestep
and UniPCMultistep (the sigma schedule, the order-major row table, dynamic thresholding, add_noise)."""
from __future__ import annotations

import importlib.util

import numpy as np
import torch

from ..ops import sampling_step
from ..ops.step_coefficients import PREDICTION_TYPES
from . import schedules
from . import sigmas as S
from .dpm_coefficients import (alpha_sigma, conversion, dpm_first_order, dpm_multistep_second, dpm_multistep_third,
                               rows, sym, x0_of_output)
from .scheduling_base import SchedulerBase, SchedulerOutput
from .thresholding import dynamic_threshold

DPM_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SOLVER_PREDICTION_TYPES = PREDICTION_TYPES + ("flow_prediction",)


class DPMSolverFamilyBase(SchedulerBase):
    """The VP-sigma solvers of diffusers (DPM-Solver multistep / singlestep, UniPC).

    Host side: the schedule (int64 ``timesteps`` on the device, float32 ``sigmas`` on the CPU, as
    diffusers keeps them) and the choice of the coefficient row from the step counter (an absent
    timestep is the last step, as in diffusers). Device side: the row table, and for
    ``thresholding`` the per-step (px, pm) of x0 = px x + pm m.

    Dynamic thresholding (Saharia et al. 2022) is not affine in the sample: it needs the per-sample
    quantile of |x0|. It runs as one extra pass before the fused step (torch ops: x0, the quantile,
    the clamp), whose thresholded x0 is then the model output of a row that takes x0 = m.
    """

    order = 1
    init_noise_sigma = 1.0
    _absent_timestep_is_last = True

    def _init_solver(self, num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, prediction_type,
                     timestep_spacing, rescale_betas_zero_snr) -> None:
        if trained_betas is None and beta_schedule not in DPM_BETA_SCHEDULES:
            raise NotImplementedError(f"{beta_schedule} is not implemented for {type(self).__name__} "
                                      f"(beta_schedule must be one of {DPM_BETA_SCHEDULES} or trained_betas given)")
        if prediction_type not in SOLVER_PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {SOLVER_PREDICTION_TYPES}, got {prediction_type!r}")
        self._init_schedule(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                            "epsilon" if prediction_type == "flow_prediction" else prediction_type,
                            timestep_spacing, rescale_betas_zero_snr)
        if rescale_betas_zero_snr:
            self.alphas_cumprod[-1] = 2.0**-24  # keeps sigma finite at the zero-SNR end, as diffusers does
        self.alpha_t = self.alphas_cumprod.sqrt()
        self.sigma_t = (1.0 - self.alphas_cumprod).sqrt()
        self.lambda_t = self.alpha_t.log() - self.sigma_t.log()
        self._flow_shift = None  # set_timesteps(mu=...) replaces flow_shift, as diffusers does
        # before set_timesteps diffusers' schedule is every training timestep (float) and its sigmas
        T = num_train_timesteps
        self._set_schedule(np.linspace(0, T - 1, T, dtype=np.float32)[::-1].copy(), None)
        self.sigmas = torch.from_numpy(S.train_sigmas(self.alphas_cumprod))
        self._lookup = None

    def _map_legacy_names(self, algorithm_types: tuple[str, ...]) -> None:
        """diffusers' constructor renames: algorithm_type "deis" -> "dpmsolver++" and solver_type
        "logrho" / "bh1" / "bh2" -> "midpoint", written to the config as diffusers writes them."""
        algorithm_type, solver_type = self.config.algorithm_type, self.config.solver_type
        if algorithm_type not in algorithm_types:
            if algorithm_type != "deis":
                raise ValueError(f"algorithm_type must be one of {algorithm_types} (or 'deis', mapped to "
                                 f"'dpmsolver++'), got {algorithm_type!r}")
            self.register_to_config(algorithm_type="dpmsolver++")
        if solver_type not in ("midpoint", "heun"):
            if solver_type not in ("logrho", "bh1", "bh2"):
                raise ValueError(f"solver_type must be 'midpoint' or 'heun' (or 'logrho' / 'bh1' / 'bh2', mapped "
                                 f"to 'midpoint'), got {solver_type!r}")
            self.register_to_config(solver_type="midpoint")

    @property
    def _variable(self) -> str:
        """What the solver steps on: "x0" (the data-prediction ++ algorithms) or "eps"."""
        return "x0" if self.config.algorithm_type.endswith("++") else "eps"

    def _current_flow_shift(self) -> float:
        """config.flow_shift, or exp(mu) once set_timesteps(mu=...) set it (kept, as diffusers keeps it)."""
        return self.config.flow_shift if self._flow_shift is None else self._flow_shift

    def _apply_mu(self, mu) -> None:
        if mu is not None:
            if not (self.config.use_dynamic_shifting and self.config.time_shift_type == "exponential"):
                raise ValueError("mu is only taken with use_dynamic_shifting=True and time_shift_type='exponential'")
            self._flow_shift = float(np.exp(mu))

    def _check_sigma_options(self) -> None:
        S.check_one_sigma_type(self.config.use_karras_sigmas, self.config.use_exponential_sigmas,
                               self.config.use_beta_sigmas)
        if self.config.use_beta_sigmas and importlib.util.find_spec("scipy") is None:
            raise ImportError("Make sure to install scipy if you want to use beta sigmas.")

    # -- schedule ------------------------------------------------------------------------------

    def _sigmas_for(self, ts, n: int, *, round_converted: bool, lu: bool = False):
        """(float64 sigmas (n,), timesteps) for the configured sigma type, as diffusers' DPM
        solvers compute them (karras / lu / exponential / beta / flow, else interpolated at ``ts``)."""
        cfg = self.config
        T = cfg.num_train_timesteps
        train = S.train_sigmas(self.alphas_cumprod)
        log_sigmas = np.log(train)
        if cfg.use_karras_sigmas:
            sig = S.karras_sigmas(train[::-1], n)
            ts = S.sigma_to_t(sig, log_sigmas)
            return sig, (ts.round() if round_converted else ts)
        if lu:
            lambdas = np.flip(log_sigmas.copy())
            lo, hi = float(lambdas[-1]), float(lambdas[0])
            lam = hi + np.linspace(0, 1, n) * (lo - hi)
            sig = np.exp(lam)
            ts = S.sigma_to_t(sig, log_sigmas)
            return sig, (ts.round() if round_converted else ts)
        if cfg.use_exponential_sigmas or cfg.use_beta_sigmas:
            convert = S.exponential_sigmas if cfg.use_exponential_sigmas else S.beta_sigmas
            sig = convert(train[::-1], n)
            return sig, S.sigma_to_t(sig, log_sigmas)
        if cfg.use_flow_sigmas:
            s = 1.0 - np.linspace(1, 1 / T, n + 1)
            shift = self._current_flow_shift()
            sig = np.flip(shift * s / (1 + (shift - 1) * s))[:-1].copy()
            return sig, sig * T
        return np.interp(ts, np.arange(0, T), train), ts

    def _custom_timesteps(self, num_inference_steps, timesteps, sigma_flags: tuple[str, ...]) -> np.ndarray | None:
        """``timesteps`` (int64) when given instead of ``num_inference_steps``, else None; refused
        with the ``sigma_flags`` set (sigma types that place their own timesteps)."""
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("pass exactly one of num_inference_steps and timesteps")
        if timesteps is None:
            return None
        for flag in sigma_flags:
            if self.config[flag]:
                raise ValueError(f"timesteps cannot be combined with {flag}=True")
        raw = np.asarray(timesteps.cpu() if isinstance(timesteps, torch.Tensor) else timesteps).reshape(-1)
        ts = raw.astype(np.int64)
        T = self.config.num_train_timesteps
        # a repeated or rising timestep makes a step of zero or negative length (diffusers takes it
        # and divides by zero); a fractional one would be truncated
        if (ts.size == 0 or ts.max() >= T or ts.min() < 0 or (np.diff(ts) >= 0).any()
                or not np.array_equal(ts, raw)):
            raise ValueError(f"timesteps must be strictly descending integers in [0, {T - 1}], got {raw.tolist()}")
        return ts

    def _order_table(self, sigmas32: np.ndarray) -> torch.Tensor:
        """float32 (3n, NUM_COEFS): rows i, n + i, 2n + i are step i at orders 1, 2, 3, from the
        updates :meth:`_updates` writes (between sigma s0 = sigmas[i] and t = sigmas[i + 1], with
        the earlier points s1, s2) and the conversion of the model output to the solver's variable."""
        cfg = self.config
        sig = sigmas32.astype(np.float64)
        n = len(sig) - 1
        i = np.arange(n)
        t, s0, s1, s2 = sig[i + 1], sig[i], sig[np.maximum(i - 1, 0)], sig[np.maximum(i - 2, 0)]
        conv = conversion(self._variable, cfg.prediction_type, s0, cfg.use_flow_sigmas, thresholded=cfg.thresholding)
        first, second, third = (rows(update, conv, n) for update in self._updates(t, s0, s1, s2))
        # rows the solver can never take (too little history, a higher order to sigma = 0) may hold inf
        second = torch.where(torch.isfinite(second).all(-1, keepdim=True), second, first)
        third = torch.where(torch.isfinite(third).all(-1, keepdim=True), third, second)
        return torch.cat([first, second, third])

    def _final_sigma(self) -> float:
        S.check_final_sigmas_type(self.config.final_sigmas_type)
        return S.final_sigma(self.config.final_sigmas_type, self.alphas_cumprod)

    def _publish(self, ts, sigmas32: np.ndarray, coefs: torch.Tensor, device, thresholded: bool) -> None:
        """Publish int64 ``timesteps`` (on ``device``), float32 ``sigmas`` (CPU), the row table and,
        when ``thresholded``, the (n, 2) float32 (px, pm) of x0 for the thresholding pass."""
        ts = np.asarray(ts).astype(np.int64)
        x0_table = None
        if thresholded:
            cfg = self.config
            px, pm = x0_of_output(self._variable, cfg.prediction_type, sigmas32[:-1], cfg.use_flow_sigmas)
            x0_table = torch.from_numpy(np.stack([px, pm], axis=-1)).to(torch.float32)
        self.sigmas = torch.from_numpy(sigmas32.astype(np.float32))
        self._coefs = coefs
        self._x0_table = x0_table
        self._num_rows = coefs.shape[0]
        self.num_inference_steps = len(ts)
        self._device_cache = {}
        self._set_schedule(ts, device)
        self._lookup = None
        if device is not None:
            device = self.timesteps.device  # with its index: caches are keyed by the samples' device
            self._on("coefs", self._coefs, device)
            if x0_table is not None:
                self._on("x0_table", x0_table, device)
            self._row_index(0, device)
        self._reset_noise_state(device)

    # -- the model output ----------------------------------------------------------------------

    def _solver_input(self, model_output: torch.Tensor, sample: torch.Tensor, i: int) -> torch.Tensor:
        """The model output the fused step reads: the first channels of a learned-variance
        output, and for ``thresholding`` the thresholded x0 (the extra pass)."""
        cfg = self.config
        if getattr(cfg, "variance_type", None) in ("learned", "learned_range") and cfg.prediction_type == "epsilon":
            model_output = model_output[:, :sample.shape[1]]
        if self._x0_table is not None:
            model_output = self._threshold(model_output, sample, self._row_index(i, sample.device))
        return model_output

    def _threshold(self, model_output: torch.Tensor, sample: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Dynamic thresholding of x0 = px x + pm m (diffusers' ``_threshold_sample``), float32:
        s = clamp(quantile(|x0|, ratio), 1, sample_max_value) per sample, x0 <- clamp(x0, -s, s) / s.
        Reads the step's (px, pm) on the device: no host synchronisation."""
        cfg = self.config
        p = self._on("x0_table", self._x0_table, sample.device).index_select(0, index.reshape(1))  # a gather, no read
        acc = torch.promote_types(sample.dtype, torch.float32)
        x0 = p[0, 0].to(acc) * sample.to(acc) + p[0, 1].to(acc) * model_output.to(acc)
        return dynamic_threshold(x0, cfg.dynamic_thresholding_ratio, cfg.sample_max_value)

    # -- add_noise -----------------------------------------------------------------------------

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """alpha_t x0 + sigma_t noise at the sigma of each timestep's step index, as diffusers'
        solvers resolve it (``index_for_timestep`` of each timestep, or ``step_index`` /
        ``begin_index`` when a pipeline set one), gathered on the device: no synchronisation."""
        device = original_samples.device
        ts = torch.as_tensor(timesteps, device=device).reshape(-1)
        n = len(self.sigmas)
        if self._lookup is None:
            sched = self._host_timesteps
            T = self.config.num_train_timesteps
            top = int(max(T, sched.max() + 1 if len(sched) else 0))
            absent = len(sched) - 1
            lookup = np.array([self._positions.get(t, absent) for t in range(top)] + [absent], dtype=np.int64)
            alpha, sig, _ = alpha_sigma(self.sigmas.double().numpy(), self.config.use_flow_sigmas)
            self._lookup = (torch.from_numpy(lookup), torch.from_numpy(np.stack([alpha, sig])).to(torch.float32))
        lookup = self._on("add_noise_lookup", self._lookup[0], device)
        table = self._on("add_noise_alpha_sigma", self._lookup[1], device)
        if self._begin_index is None:
            top = lookup.shape[0] - 1
            whole = ts == ts.floor() if ts.is_floating_point() else torch.ones_like(ts, dtype=torch.bool)
            t = ts.long()
            inside = whole & (t >= 0) & (t < top)
            idx = lookup[torch.where(inside, t, torch.full_like(t, top))]
        else:
            k = self._step_index if self._step_index is not None else self._begin_index
            idx = torch.full((ts.shape[0],), k, dtype=torch.int64, device=device)
        idx = idx.clamp(0, n - 1)
        shape = (-1,) + (1,) * (original_samples.dim() - 1)
        dtype = original_samples.dtype
        alpha = table[0][idx].to(dtype).reshape(shape)
        sigma = table[1][idx].to(dtype).reshape(shape)
        return alpha * original_samples + sigma * noise.to(dtype)


class DPMSolverMultistepScheduler(DPMSolverFamilyBase):
    """Multistep DPM-Solver (Lu et al. 2022, arXiv:2206.00927) and DPM-Solver++ (arXiv:2211.01095),
    constructor arguments as diffusers'. "DPM++ 2M Karras" is ``use_karras_sigmas=True`` with the
    defaults.

    Supported: algorithm_type "dpmsolver++" / "sde-dpmsolver++" / "dpmsolver" / "sde-dpmsolver",
    solver_order 1-3, solver_type "midpoint" / "heun", lower_order_final, euler_at_final,
    final_sigmas_type, lambda_min_clipped, karras / exponential / beta / lu / flow sigmas
    (flow_shift, use_dynamic_shifting with ``set_timesteps(mu=...)``), prediction_type epsilon /
    sample / v_prediction / flow_prediction, variance_type learned / learned_range (the first
    channels of the output are the prediction), thresholding (one extra pass, see
    :class:`DPMSolverFamilyBase`), timestep spacings, rescale_betas_zero_snr, custom ``timesteps``.
    Not available: solver_order 3 with "sde-dpmsolver" (diffusers 0.42 has no such update and fails
    at its third step; NotImplementedError here).

    The table has 3n rows: row (k - 1) n + i is step i at order k. ``step`` picks the row on the
    host from its step counter (as diffusers does) and reads it on the device. The multistep state
    is the converted model output (x0 for the ++ variants, eps otherwise), kept in float32
    (``model_outputs``); one ``sampling_step`` call per step, whose history is the previous one or
    two of them.
    """

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, solver_order: int = 2,
                 prediction_type: str = "epsilon", thresholding: bool = False,
                 dynamic_thresholding_ratio: float = 0.995, sample_max_value: float = 1.0,
                 algorithm_type: str = "dpmsolver++", solver_type: str = "midpoint", lower_order_final: bool = True,
                 euler_at_final: bool = False, use_karras_sigmas: bool = False, use_exponential_sigmas: bool = False,
                 use_beta_sigmas: bool = False, use_lu_lambdas: bool = False, use_flow_sigmas: bool = False,
                 flow_shift: float = 1.0, final_sigmas_type: str = "zero", lambda_min_clipped: float = -float("inf"),
                 variance_type: str | None = None, timestep_spacing: str = "linspace", steps_offset: int = 0,
                 rescale_betas_zero_snr: bool = False, use_dynamic_shifting: bool = False,
                 time_shift_type: str = "exponential"):
        self._register_config(locals())
        self._check_sigma_options()
        self._map_legacy_names(ALGORITHM_TYPES)
        alg = self.config.algorithm_type
        if alg in ("dpmsolver", "sde-dpmsolver") and final_sigmas_type == "zero":
            raise ValueError(f"`final_sigmas_type` {final_sigmas_type} is not supported for `algorithm_type` {alg}. "
                             f"Please choose `sigma_min` instead.")
        if solver_order not in (1, 2, 3) or isinstance(solver_order, bool):
            raise ValueError(f"solver_order must be 1, 2 or 3, got {solver_order!r}")
        if solver_order == 3 and alg == "sde-dpmsolver":
            raise NotImplementedError("solver_order=3 with algorithm_type='sde-dpmsolver': diffusers 0.42 has no "
                                      "third-order update for it (its step fails); use solver_order=2 or "
                                      "sde-dpmsolver++")
        if prediction_type == "flow_prediction" and alg in ("dpmsolver", "sde-dpmsolver"):
            raise ValueError(f"prediction_type='flow_prediction' needs a data-prediction algorithm_type "
                             f"(dpmsolver++ / sde-dpmsolver++), got {alg!r}")
        S.check_final_sigmas_type(final_sigmas_type)
        self._init_solver(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, prediction_type,
                          timestep_spacing, rescale_betas_zero_snr)
        self._x0_table = None
        self._reset_state()

    def _reset_state(self) -> None:
        self.model_outputs = [None] * self.config.solver_order
        self.lower_order_nums = 0

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, mu: float | None = None,
                      timesteps=None) -> None:
        """Timesteps and sigmas as diffusers builds them (spacing, steps_offset, lambda_min_clipped,
        the sigma type, final_sigmas_type), or custom descending ``timesteps``; ``mu`` sets the
        flow shift exp(mu) (use_dynamic_shifting). The table is built on ``device``."""
        cfg = self.config
        T = cfg.num_train_timesteps
        self._apply_mu(mu)
        ts = self._custom_timesteps(num_inference_steps, timesteps, ("use_karras_sigmas", "use_lu_lambdas",
                                                                     "use_exponential_sigmas", "use_beta_sigmas",
                                                                     "use_flow_sigmas"))
        if ts is not None:
            n = len(ts)
        else:
            n = schedules.check_num_inference_steps(num_inference_steps, T)
            # lambda_min_clipped drops the low-SNR end where lambda(t) falls below it (cosine schedule)
            clipped = int(torch.searchsorted(torch.flip(self.lambda_t, [0]), cfg.lambda_min_clipped))
            ts = schedules.dpm_timesteps(T, n, cfg.timestep_spacing, cfg.steps_offset, T - clipped)
            if ts.max() >= T:
                raise ValueError(f"steps_offset={cfg.steps_offset} pushes timestep {ts.max()} past "
                                 f"num_train_timesteps={T}")
        sig, ts = self._sigmas_for(ts, n, round_converted=cfg.beta_schedule != "squaredcos_cap_v2",
                                   lu=cfg.use_lu_lambdas and not cfg.use_karras_sigmas)
        sigmas32 = np.concatenate([sig, [self._final_sigma()]]).astype(np.float32)
        self._publish(ts, sigmas32, self._order_table(sigmas32), device, cfg.thresholding)
        self._reset_state()

    def _updates(self, t, s0, s1, s2):
        """The first-, second- and third-order updates (the history: h1, h2 = the previous two
        converted outputs; no third order for sde-dpmsolver, whose rows repeat the first)."""
        cfg = self.config
        alg, flow = cfg.algorithm_type, cfg.use_flow_sigmas
        x, m, h1, h2 = sym("x"), sym("m"), sym("h1"), sym("h2")
        first = dpm_first_order(alg, t, s0, m, x, flow)
        second = dpm_multistep_second(alg, cfg.solver_type, t, s0, s1, x, m, h1, flow)
        third = first if alg == "sde-dpmsolver" else dpm_multistep_third(alg, t, s0, s1, s2, x, m, h1, h2, flow)
        return first, second, third

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None,
             variance_noise: torch.Tensor | None = None, return_dict: bool = True):
        """One solver step from timestep to the next. The first call finds its position in the
        schedule from ``timestep`` (or ``set_begin_index``); later calls count. SDE noise is drawn
        every step, float32, from ``variance_noise``, ``generator`` or the scheduler's own source.
        Returns :class:`SchedulerOutput` (``prev_sample``) or a 1-tuple."""
        i = self._begin_step(timestep, self.num_inference_steps)
        n, cfg = self.num_inference_steps, self.config
        k = multistep_order(cfg, i, n, self.lower_order_nums)
        device = sample.device
        model_output = self._solver_input(model_output, sample, i)
        noise_args = {}
        if cfg.algorithm_type.startswith("sde"):
            noise_args = self._noise_args(model_output, generator, variance_noise, torch.float32)
        history = [self.model_outputs[-j] for j in range(1, k)]  # the previous converted outputs, newest first
        keep = cfg.solver_order > 1 and i < n - 1  # the state is read only by later steps
        out, state = sampling_step(sample, model_output, self._on("coefs", self._coefs, device),
                                   self._row_index((k - 1) * n + i, device), history=history,
                                   return_state=keep, impl=self.impl, **noise_args)
        self._after_noise(noise_args, sample.numel())
        self.model_outputs = self.model_outputs[1:] + [state]
        self.lower_order_nums = min(self.lower_order_nums + 1, cfg.solver_order)
        self._step_index += 1
        if not return_dict:
            return (out,)
        return SchedulerOutput(out)


ALGORITHM_TYPES = ("dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++")


def multistep_order(cfg, i: int, n: int, lower_order_nums: int) -> int:
    """The order of multistep step ``i`` of ``n`` as diffusers' DPM-Solvers pick it: at most the
    number of earlier outputs + 1, and first order at the end (``euler_at_final``, a final sigma
    of 0, or ``lower_order_final`` under 15 steps, which also makes the step before second order)."""
    final = i == n - 1 and (cfg.euler_at_final or (cfg.lower_order_final and n < 15)
                            or cfg.final_sigmas_type == "zero")
    second_final = i == n - 2 and cfg.lower_order_final and n < 15
    if cfg.solver_order == 1 or lower_order_nums < 1 or final:
        return 1
    if cfg.solver_order == 2 or lower_order_nums < 2 or second_final:
        return 2
    return 3

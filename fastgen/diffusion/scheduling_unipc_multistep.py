"""UniPCMultistepScheduler: diffusers' (0.42) UniPC (Zhao et al. 2023, arXiv:2302.04867), with the
corrector and the predictor of a step fused into one kernel pass."""
from __future__ import annotations

import numpy as np
import torch

from ..ops import sampling_step
from . import schedules
from . import sigmas as S
from .dpm_coefficients import alpha_sigma, conversion, rows, sym, unipc_update
from .scheduling_base import SchedulerOutput
from .scheduling_dpmsolver_multistep import DPMSolverFamilyBase

UNIPC_SOLVER_TYPES = ("bh1", "bh2")
TIME_SHIFT_TYPES = ("exponential", "linear")


class UniPCMultistepScheduler(DPMSolverFamilyBase):
    """UniPC: a multistep predictor (UniP) whose input is first corrected (UniC) with the model
    output at the new point; constructor arguments as diffusers'.

    Supported: solver_order 1-3, solver_type "bh1" / "bh2", predict_x0 True / False,
    lower_order_final, disable_corrector, karras / exponential / beta / flow sigmas (sigma_min,
    sigma_max, flow_shift, use_dynamic_shifting with ``set_timesteps(mu=...)``, time_shift_type,
    shift_terminal, custom flow ``sigmas``), prediction_type epsilon / sample / v_prediction /
    flow_prediction, thresholding (one extra pass, see :class:`DPMSolverFamilyBase`; diffusers
    thresholds only with predict_x0), final_sigmas_type, timestep spacings, rescale_betas_zero_snr.
    ``solver_p`` (another scheduler as the predictor) raises NotImplementedError: its step is that
    scheduler's, not an affine row of this one.

    One ``sampling_step`` call per step. The corrector at step i needs ``last_sample``, the
    corrected sample the previous predictor started from, which diffusers keeps. It is not stored
    here: the previous predictor's output (this scheduler's own previous ``prev_sample``, held by
    reference, so a caller who changes the sample between steps, as inpainting pipelines do, still
    gets diffusers' corrector) is P x_c + (its x0 terms), so x_c = (prev_sample - x0 terms) / P,
    and the corrector, then the predictor, are affine in (x, m, prev_sample, the last three
    converted outputs): history (h1, h2, h3, h4) = (previous prev_sample, M_{i-1}, M_{i-2}, M_{i-3}),
    the state is M_i (x0, or eps with predict_x0=False) in float32. The table has rows for every
    (corrector order 0..order, predictor order 1..order, step).
    """

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, solver_order: int = 2,
                 prediction_type: str = "epsilon", thresholding: bool = False,
                 dynamic_thresholding_ratio: float = 0.995, sample_max_value: float = 1.0, predict_x0: bool = True,
                 solver_type: str = "bh2", lower_order_final: bool = True, disable_corrector: list = [],
                 solver_p=None, use_karras_sigmas: bool = False, use_exponential_sigmas: bool = False,
                 use_beta_sigmas: bool = False, use_flow_sigmas: bool = False, flow_shift: float = 1.0,
                 timestep_spacing: str = "linspace", steps_offset: int = 0, final_sigmas_type: str = "zero",
                 rescale_betas_zero_snr: bool = False, use_dynamic_shifting: bool = False,
                 time_shift_type: str = "exponential", sigma_min: float | None = None, sigma_max: float | None = None,
                 shift_terminal: float | None = None):
        self._register_config(locals())
        self._check_sigma_options()
        if solver_p is not None:
            raise NotImplementedError("solver_p (another scheduler as UniPC's predictor) is not implemented by "
                                      "fastgen's UniPCMultistepScheduler: that step is the other scheduler's")
        if shift_terminal is not None and not use_flow_sigmas:
            raise ValueError("`shift_terminal` is only supported when `use_flow_sigmas=True`.")
        if solver_type not in UNIPC_SOLVER_TYPES:
            if solver_type not in ("midpoint", "heun", "logrho"):
                raise ValueError(f"solver_type must be one of {UNIPC_SOLVER_TYPES} (or 'midpoint' / 'heun' / "
                                 f"'logrho', mapped to 'bh2'), got {solver_type!r}")
            self.register_to_config(solver_type="bh2")  # diffusers maps the DPM names the same way
        if isinstance(solver_order, bool) or solver_order not in (1, 2, 3):
            raise (NotImplementedError if isinstance(solver_order, int) and solver_order > 3 else ValueError)(
                f"solver_order must be 1, 2 or 3 (the fused step holds four history tensors), got {solver_order!r}")
        if prediction_type == "flow_prediction" and not predict_x0:
            raise ValueError("prediction_type='flow_prediction' needs predict_x0=True")
        S.check_final_sigmas_type(final_sigmas_type)
        if time_shift_type not in TIME_SHIFT_TYPES:
            raise ValueError(f"time_shift_type must be one of {TIME_SHIFT_TYPES}, got {time_shift_type!r}")
        self._init_solver(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, prediction_type,
                          timestep_spacing, rescale_betas_zero_snr)
        self.predict_x0 = predict_x0
        self.disable_corrector = disable_corrector
        self.solver_p = solver_p
        self._x0_table = None
        self._reset_state()

    def _reset_state(self) -> None:
        self.model_outputs = [None] * self.config.solver_order
        self.lower_order_nums = 0
        self.this_order = None
        self._prev_out = None  # the previous prev_sample (diffusers' last_sample is derived from it)
        self._prev_version = None

    @property
    def _variable(self) -> str:
        """UniPC's variable follows ``predict_x0``, not the algorithm type."""
        return "x0" if self.predict_x0 else "eps"

    # -- schedule ------------------------------------------------------------------------------

    def time_shift(self, mu: float, sigma: float, t):
        """The dynamic shift of flow sigmas t (:func:`fastgen.diffusion.sigmas.time_shift`)."""
        return S.time_shift(self.config.time_shift_type, mu, sigma, t)

    def stretch_shift_to_terminal(self, t):
        """Stretch flow sigmas so the last one is ``shift_terminal``."""
        return S.stretch_to_terminal(t, self.config.shift_terminal)

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, sigmas=None, mu=None) -> None:
        """Timesteps and sigmas as diffusers builds them (spacing, steps_offset, the sigma type,
        final_sigmas_type); ``sigmas``: custom flow sigmas (use_flow_sigmas); ``mu``: the dynamic
        shift (use_dynamic_shifting). The table is built on ``device``."""
        cfg = self.config
        T = cfg.num_train_timesteps
        if cfg.use_dynamic_shifting and mu is None:
            raise ValueError("`mu` must be passed when `use_dynamic_shifting` is set to be `True`")
        if sigmas is not None:
            if not cfg.use_flow_sigmas:
                raise ValueError("Passing `sigmas` is only supported when `use_flow_sigmas=True`. Please set "
                                 "`use_flow_sigmas=True` during scheduler initialization.")
            sigmas = np.array(sigmas, dtype=np.float64).reshape(-1)
            num_inference_steps = len(sigmas)
        n = schedules.check_num_inference_steps(num_inference_steps, T)
        ts = schedules.dpm_timesteps(T, n, cfg.timestep_spacing, cfg.steps_offset, T).astype(np.float64)
        train = S.train_sigmas(self.alphas_cumprod)
        converted = cfg.use_karras_sigmas or cfg.use_exponential_sigmas or cfg.use_beta_sigmas
        if converted:
            base = train if sigmas is None else sigmas
            log_sigmas = np.log(base)
            convert = S.karras_sigmas if cfg.use_karras_sigmas else (
                S.exponential_sigmas if cfg.use_exponential_sigmas else S.beta_sigmas)
            sig = convert(base[::-1], n, cfg.sigma_min, cfg.sigma_max)
            if cfg.use_karras_sigmas and cfg.use_flow_sigmas:
                sig = sig / (sig + 1)
                ts = sig * T
            else:
                ts = S.sigma_to_t(sig, log_sigmas)
                if cfg.use_karras_sigmas:
                    ts = ts.round()
            last = sig[-1] if cfg.final_sigmas_type == "sigma_min" else 0.0
        elif cfg.use_flow_sigmas:
            sig = np.linspace(1, 1 / T, n + 1)[:-1] if sigmas is None else sigmas
            if cfg.use_dynamic_shifting:
                sig = self.time_shift(mu, 1.0, sig)
            else:
                sig = cfg.flow_shift * sig / (1 + (cfg.flow_shift - 1) * sig)
            if cfg.shift_terminal:
                sig = self.stretch_shift_to_terminal(sig)
            sig = np.array(sig, dtype=np.float64)
            if np.fabs(sig[0] - 1) < 1e-6:
                sig[0] -= 1e-6
            ts = sig * T
            last = sig[-1] if cfg.final_sigmas_type == "sigma_min" else 0.0
        else:
            sig = np.interp(ts, np.arange(0, T), train)
            last = self._final_sigma()
        sigmas32 = np.concatenate([sig, [last]]).astype(np.float32)
        self._final_zero = bool(sigmas32[-1] == 0)
        thresholded = cfg.thresholding and self.predict_x0  # diffusers thresholds only x0
        self._publish(ts, sigmas32, self._table(sigmas32, thresholded), device, thresholded)
        self._reset_state()

    def _table(self, sigmas32: np.ndarray, thresholded: bool) -> torch.Tensor:
        """float32 rows: row ((v (order + 1) + kc) order + kp - 1) n + i is step i with a corrector
        of order kc (0: none) and a predictor of order kp; v = 0 reads the previous prev_sample
        as h1, v = 1 as x (the caller passed that very tensor back: one read fewer)."""
        cfg = self.config
        order, flow, px0 = cfg.solver_order, cfg.use_flow_sigmas, self.predict_x0
        sig = sigmas32.astype(np.float64)
        n = len(sig) - 1
        alphas, sigs, lams = alpha_sigma(sig, flow)
        i = np.arange(n)

        def at(k):  # sigma-table index i + k, clamped for the rows no step can take
            return np.clip(i + k, 0, n)

        conv = conversion(self._variable, cfg.prediction_type, sig[:n], flow, thresholded)
        x, m, h1, h2, h3, h4 = (sym(s) for s in ("x", "m", "h1", "h2", "h3", "h4"))
        blocks = []
        for prev in (h1, x):  # the previous prev_sample: held (h1), or the sample passed in is it (x)
            for kc in range(order + 1):
                if kc:
                    # the previous predictor (step i-1, order kc): prev_sample = P x_c + rest
                    P, rest = unipc_update(lams, alphas, sigs, at(0), at(-1), [at(-2), at(-3)], [h2, h3, h4][:kc],
                                           kc, px0, cfg.solver_type, corrector=False)
                    last = (prev - rest) * (1.0 / P)
                    C, crest = unipc_update(lams, alphas, sigs, at(0), at(-1), [at(-2), at(-3)],
                                            [h2, h3, h4][:kc] + [m], kc, px0, cfg.solver_type, corrector=True)
                    start = last * C + crest
                else:
                    start = x
                for kp in range(1, order + 1):
                    coef, prest = unipc_update(lams, alphas, sigs, at(1), at(0), [at(-1), at(-2)],
                                               [m, h2, h3][:kp], kp, px0, cfg.solver_type, corrector=False)
                    blocks.append(rows(start * coef + prest, conv, n))
        return torch.cat(blocks)

    # -- step ----------------------------------------------------------------------------------

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True):
        """Corrector (from the second step on, unless disabled) and predictor, one fused pass.
        Returns :class:`SchedulerOutput` (``prev_sample``) or a 1-tuple."""
        i = self._begin_step(timestep, self.num_inference_steps)
        n, cfg = self.num_inference_steps, self.config
        order = cfg.solver_order
        use_corrector = i > 0 and (i - 1) not in self.disable_corrector and self._prev_out is not None
        kc = self.this_order if use_corrector else 0
        this_order = min(order, n - i) if cfg.lower_order_final else order
        kp = min(this_order, self.lower_order_nums + 1)
        if kp > 1 and self._final_zero and i == n - 1:
            raise ValueError(f"UniPC's last step is order {kp} to sigma = 0 (lower_order_final=False with "
                             f"final_sigmas_type='zero'), which diffusers 0.42 evaluates to inf or fails on; use "
                             f"lower_order_final=True or final_sigmas_type='sigma_min'")
        prev = self._prev_out
        compiling = torch.compiler.is_compiling()  # (version counters cannot be traced)
        if kc and not compiling and self._prev_version is not None and prev._version != self._prev_version:
            raise RuntimeError("UniPC's corrector needs the previous step's prev_sample as it was returned, but it "
                               "was modified in place; change a copy instead (x = f(x), not x.op_())")
        folded = bool(kc) and sample is prev  # the usual loop: x is prev_sample, read once
        depth = max(kc, kp - 1)  # how many earlier converted outputs the row reads
        history = [prev if kc and not folded else None] + [self.model_outputs[-j] for j in range(1, depth + 1)]
        device = sample.device
        model_output = self._solver_input(model_output, sample, i)
        row = ((int(folded) * (order + 1) + kc) * order + kp - 1) * n + i
        out, state = sampling_step(sample, model_output, self._on("coefs", self._coefs, device),
                                   self._row_index(row, device), history=history, return_state=i < n - 1,
                                   impl=self.impl)
        self.model_outputs = self.model_outputs[1:] + [state]
        self.this_order = kp
        self._prev_out = out
        self._prev_version = None if compiling or out.is_inference() else out._version
        self.lower_order_nums = min(self.lower_order_nums + 1, order)
        self._step_index += 1
        if not return_dict:
            return (out,)
        return SchedulerOutput(out)

"""DPMSolverSinglestepScheduler: diffusers' (0.42) singlestep DPM-Solver / DPM-Solver++ (orders 1-3),
one fused kernel pass per step."""
from __future__ import annotations

import logging

import numpy as np
import torch

from ..ops import sampling_step
from . import schedules
from . import sigmas as S
from .dpm_coefficients import dpm_first_order, dpm_singlestep_second, dpm_singlestep_third, sym
from .scheduling_base import SchedulerOutput
from .scheduling_dpmsolver_multistep import DPMSolverFamilyBase

logger = logging.getLogger("fastgen")

SINGLESTEP_ALGORITHM_TYPES = ("dpmsolver", "dpmsolver++", "sde-dpmsolver++")


class DPMSolverSinglestepScheduler(DPMSolverFamilyBase):
    """Singlestep DPM-Solver (Lu et al. 2022, arXiv:2206.00927) / DPM-Solver++, constructor
    arguments as diffusers'.

    The schedule is cut into blocks by ``order_list`` (diffusers' ``get_order_list``): a block of
    order k takes k steps, each from the block's start sample (its first sub-step is first order;
    the later ones add the model outputs of the block's earlier sub-steps). Every sub-step is one
    ``sampling_step`` call: its history is (the block's start sample, M_{i-1}, M_{i-2}) -- the
    start sample held by reference, exactly as diffusers holds ``self.sample`` -- and its state the
    converted output M_i (x0 for the ++ variants, eps for "dpmsolver") in float32. The table has 3n
    rows: row (k - 1) n + i is step i at order k.

    Supported: algorithm_type "dpmsolver++" / "sde-dpmsolver++" / "dpmsolver", solver_order 1-3,
    solver_type "midpoint" / "heun", lower_order_final (switched on by ``set_timesteps`` where
    diffusers switches it on, in the config as diffusers does), final_sigmas_type,
    lambda_min_clipped, karras / exponential / beta / flow sigmas, prediction_type epsilon / sample
    / v_prediction / flow_prediction, variance_type learned*, thresholding (one extra pass, see
    :class:`DPMSolverFamilyBase`), custom ``timesteps``. Not available: thresholding with
    "dpmsolver" (diffusers 0.42 indexes its alpha_t table with ``timestep=None`` there and fails).
    """

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, solver_order: int = 2,
                 prediction_type: str = "epsilon", thresholding: bool = False,
                 dynamic_thresholding_ratio: float = 0.995, sample_max_value: float = 1.0,
                 algorithm_type: str = "dpmsolver++", solver_type: str = "midpoint", lower_order_final: bool = False,
                 use_karras_sigmas: bool = False, use_exponential_sigmas: bool = False, use_beta_sigmas: bool = False,
                 use_flow_sigmas: bool = False, flow_shift: float = 1.0, final_sigmas_type: str = "zero",
                 lambda_min_clipped: float = -float("inf"), variance_type: str | None = None,
                 use_dynamic_shifting: bool = False, time_shift_type: str = "exponential"):
        self._register_config(locals())
        self._check_sigma_options()
        self._map_legacy_names(SINGLESTEP_ALGORITHM_TYPES)
        alg = self.config.algorithm_type
        if alg == "dpmsolver" and final_sigmas_type == "zero":
            raise ValueError(f"`final_sigmas_type` {final_sigmas_type} is not supported for `algorithm_type` {alg}. "
                             f"Please choose `sigma_min` instead.")
        if isinstance(solver_order, bool) or solver_order not in (1, 2, 3):
            raise ValueError(f"solver_order must be 1, 2 or 3, got {solver_order!r}")
        if thresholding and alg == "dpmsolver":
            raise NotImplementedError("thresholding=True with algorithm_type='dpmsolver': diffusers 0.42 fails there "
                                      "(it indexes alpha_t with timestep=None); use dpmsolver++")
        if prediction_type == "flow_prediction" and alg == "dpmsolver":
            raise ValueError("prediction_type='flow_prediction' needs algorithm_type dpmsolver++ or sde-dpmsolver++")
        S.check_final_sigmas_type(final_sigmas_type)
        self._init_solver(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, prediction_type,
                          "linspace", False)
        self._x0_table = None
        self.order_list = self.get_order_list(num_train_timesteps)
        self._reset_state()

    def _reset_state(self) -> None:
        self.model_outputs = [None] * self.config.solver_order
        self.sample = None

    def get_order_list(self, num_inference_steps: int) -> list[int]:
        """The order of every step (diffusers' blocks: [1, 2, 3] * k with the configured tail;
        the last step first order with final_sigmas_type="zero")."""
        steps, order = num_inference_steps, self.config.solver_order
        if order > 3:
            raise ValueError("Order > 3 is not supported by this scheduler")
        if self.config.lower_order_final:
            if order == 3:
                tail = {0: [1, 2] + [1], 1: [1], 2: [1, 2]}[steps % 3]
                orders = [1, 2, 3] * (steps // 3 - (1 if steps % 3 == 0 else 0)) + tail
            elif order == 2:
                orders = [1, 2] * (steps // 2 - 1) + [1, 1] if steps % 2 == 0 else [1, 2] * (steps // 2) + [1]
            else:
                orders = [1] * steps
        else:
            orders = {3: [1, 2, 3] * (steps // 3), 2: [1, 2] * (steps // 2), 1: [1] * steps}[order]
        if self.config.final_sigmas_type == "zero":
            orders[-1] = 1
        return orders

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, mu: float | None = None,
                      timesteps=None) -> None:
        """Timesteps and sigmas as diffusers builds them (lambda_min_clipped, the sigma type,
        final_sigmas_type), or custom descending ``timesteps``; ``mu`` sets the flow shift exp(mu)
        (use_dynamic_shifting). The order list and the table (on ``device``) follow."""
        cfg = self.config
        T = cfg.num_train_timesteps
        self._apply_mu(mu)
        ts = self._custom_timesteps(num_inference_steps, timesteps, ("use_karras_sigmas", "use_exponential_sigmas",
                                                                     "use_beta_sigmas", "use_flow_sigmas"))
        if ts is not None:
            n = len(ts)
        else:
            n = schedules.check_num_inference_steps(num_inference_steps, T)
            clipped = int(torch.searchsorted(torch.flip(self.lambda_t, [0]), cfg.lambda_min_clipped))
            ts = np.linspace(0, T - 1 - clipped, n + 1).round()[::-1][:-1].copy().astype(np.int64)
        sig, ts = self._sigmas_for(ts, n, round_converted=True)
        sigmas32 = np.concatenate([sig, [self._final_sigma()]]).astype(np.float32)
        if not cfg.lower_order_final and n % cfg.solver_order != 0:
            logger.warning("DPMSolverSinglestepScheduler: lower_order_final set to True for %d steps (not a multiple "
                           "of solver_order=%d), as diffusers does", n, cfg.solver_order)
            self.register_to_config(lower_order_final=True)
        if not self.config.lower_order_final and cfg.final_sigmas_type == "zero":
            logger.warning("DPMSolverSinglestepScheduler: final_sigmas_type='zero' needs lower_order_final=True; "
                           "set, as diffusers does")
            self.register_to_config(lower_order_final=True)
        self._publish(ts, sigmas32, self._order_table(sigmas32), device, cfg.thresholding)
        self.order_list = self.get_order_list(n)
        self._reset_state()

    def _updates(self, t, s0, s1, s2):
        """The sub-step updates of a block's first, second and third sub-step: from the block's
        start sample (h1), with the converted outputs of its earlier sub-steps (h2, h3)."""
        cfg = self.config
        alg, flow = cfg.algorithm_type, cfg.use_flow_sigmas
        x, m, start, m1, m2 = sym("x"), sym("m"), sym("h1"), sym("h2"), sym("h3")
        return (dpm_first_order(alg, t, s0, m, x, flow),
                dpm_singlestep_second(alg, cfg.solver_type, t, s0, s1, start, m, m1, flow),
                dpm_singlestep_third(alg, cfg.solver_type, t, s0, s1, s2, start, m, m1, m2, flow))

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None,
             return_dict: bool = True):
        """One sub-step of the current block. SDE noise (sde-dpmsolver++) is drawn every step in
        the converted output's dtype, from ``generator`` or the scheduler's own source. Returns
        :class:`SchedulerOutput` (``prev_sample``) or a 1-tuple."""
        i = self._begin_step(timestep, self.num_inference_steps)
        n, cfg = self.num_inference_steps, self.config
        k = self.order_list[i]
        while k > 1 and self.model_outputs[-(k - 1)] is None:  # diffusers' check, before its shift
            k -= 1
        if k == 1:
            self.sample = sample
        device = sample.device
        noise_args = {}
        if cfg.algorithm_type == "sde-dpmsolver++":  # diffusers draws in the dtype of its x0
            dtype = model_output.dtype if cfg.prediction_type == "sample" else \
                torch.promote_types(model_output.dtype, sample.dtype)
            noise_args = self._noise_args(model_output, generator, None, dtype)
        model_output = self._solver_input(model_output, sample, i)
        history = [self.sample] + [self.model_outputs[-j] for j in range(1, k)] if k > 1 else []
        keep = cfg.solver_order > 1 and i < n - 1
        out, state = sampling_step(sample, model_output, self._on("coefs", self._coefs, device),
                                   self._row_index((k - 1) * n + i, device), history=history,
                                   return_state=keep, impl=self.impl, **noise_args)
        self._after_noise(noise_args, sample.numel())
        self.model_outputs = self.model_outputs[1:] + [state]
        self._step_index += 1
        if not return_dict:
            return (out,)
        return SchedulerOutput(out)

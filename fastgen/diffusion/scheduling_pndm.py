"""PNDMScheduler: diffusers' PNDM (0.42), the PLMS and Runge-Kutta steps each one fused kernel pass.

Every step of PNDM (Liu et al. 2022, arXiv:2202.09778, eq. 9) is

    x' = sqrt(a'/a) X - (a' - a) / (a sqrt(1-a') + sqrt(a (1-a) a')) * E

with a = abar at the step's timestep, a' = abar at the target (``final_alpha_cumprod`` below 0),
X the sample the step starts from and E a fixed linear combination of the current and past model
outputs (for v_prediction, E = sqrt(a) V + sqrt(1-a) X of the combined output V). Both are linear
in tensors the scheduler already holds, so one row of :func:`fastgen.ops.sampling_step` computes
the whole step: m (the current output) through eps = m and OE, the past outputs and the stored
start sample through the history slots H1..H4, the current sample through OX.

The history tensors are the very tensors diffusers keeps (``ets``: past model outputs;
``cur_sample``: the sample a PLMS pair or a Runge-Kutta group started from), held by reference as
diffusers holds them, so keeping them costs no pass over memory.

Rows: one block of ``num_train_timesteps`` rows per kind of step ("mode"), row t of a block for the
timestep t the step is called with (diffusers reads a and a' from that argument, not from its
position in the schedule: img2img pipelines start PNDM mid-schedule with counter 0). The mode is
chosen on the host from ``counter`` and ``len(ets)``, as diffusers branches, and the row index is
a cached device scalar (or, for a device timestep that is not a view of ``timesteps``, one device
add): ``step`` never reads device memory.
"""
from __future__ import annotations

import numpy as np
import torch

from ..ops import sampling_step
from ..ops.step_coefficients import _rows
from . import schedules
from .scheduling_base import SchedulerBase, SchedulerOutput, _require_integer_timestep

PNDM_PREDICTION_TYPES = ("epsilon", "v_prediction")
PNDM_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")

# The PLMS modes: (name, weights of (m, ets[-2], ets[-3], ets[-4])) with ets[-1] = m (diffusers'
# Adams-Bashforth combinations); "pair" is the second call of diffusers' first PLMS step, which
# averages m with the first call's output and restarts from the first call's sample.
_PLMS_WEIGHTS = {
    "first": (1.0,),
    "pair": (0.5, 0.5),
    "ab2": (3 / 2, -1 / 2),
    "ab3": (23 / 12, -16 / 12, 5 / 12),
    "ab4": (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}
# The Runge-Kutta group's last call combines its four outputs with RK4's weights.
_RK4_WEIGHTS = (1 / 6, 1 / 3, 1 / 3, 1 / 6)


class PNDMScheduler(SchedulerBase):
    """Pseudo numerical methods for diffusion models (PLMS with an optional Runge-Kutta warm-up),
    constructor arguments as diffusers'.

    ``skip_prk_steps=True`` (Stable Diffusion's setting) runs PLMS from the first step, with
    diffusers' special first pair (the first timestep is called twice); ``False`` runs the 12
    Runge-Kutta calls (``step_prk``, 3 groups of 4) first, which needs num_inference_steps >= 4.
    ``counter``, ``ets`` and ``cur_sample`` mean what they mean in diffusers. prediction_type:
    "epsilon" or "v_prediction" (diffusers' choices). Unlike diffusers, a step past the end of the
    schedule raises instead of extrapolating below timestep 0.
    """

    order = 1
    init_noise_sigma = 1.0

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, skip_prk_steps: bool = False,
                 set_alpha_to_one: bool = False, prediction_type: str = "epsilon", timestep_spacing: str = "leading",
                 steps_offset: int = 0):
        self._register_config(locals())
        if prediction_type not in PNDM_PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PNDM_PREDICTION_TYPES} for PNDMScheduler, "
                             f"got {prediction_type!r}")
        if trained_betas is None and beta_schedule not in PNDM_BETA_SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {PNDM_BETA_SCHEDULES} for PNDMScheduler (or pass "
                             f"trained_betas), got {beta_schedule!r}")
        self._init_schedule(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, prediction_type,
                            timestep_spacing, False)
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.pndm_order = 4
        self.num_inference_steps = None
        self._timesteps = np.arange(0, num_train_timesteps)[::-1].copy()
        self.prk_timesteps = None
        self.plms_timesteps = None
        self.timesteps = None
        self._reset_state()

    def _reset_state(self) -> None:
        self.counter = 0
        self.ets: list[torch.Tensor] = []
        self.cur_sample: torch.Tensor | None = None
        self._prk_outputs: list[torch.Tensor] = []  # outputs of the current Runge-Kutta group so far

    # -- schedule ----------------------------------------------------------------------------

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        """PRK and PLMS timesteps as diffusers builds them; the coefficient table on ``device``."""
        cfg = self.config
        T = cfg.num_train_timesteps
        n = schedules.check_num_inference_steps(num_inference_steps, T)
        if not cfg.skip_prk_steps and n < self.pndm_order:
            raise ValueError(f"num_inference_steps must be >= {self.pndm_order} with skip_prk_steps=False (the "
                             f"Runge-Kutta warm-up takes the last {self.pndm_order} timesteps), got {n}")
        ascending = schedules.spaced_timesteps(T, n, cfg.timestep_spacing, cfg.steps_offset)[::-1].copy()
        if ascending.max() >= T:
            raise ValueError(f"steps_offset={cfg.steps_offset} pushes timestep {ascending.max()} past "
                             f"num_train_timesteps={T}")
        self._timesteps = ascending
        if cfg.skip_prk_steps:
            self.prk_timesteps = np.array([], dtype=np.int64)
            self.plms_timesteps = np.concatenate([ascending[:-1], ascending[-2:-1], ascending[-1:]])[::-1].copy()
        else:
            half = T // n // 2
            prk = np.array(ascending[-self.pndm_order:]).repeat(2) + np.tile(np.array([0, half]), self.pndm_order)
            self.prk_timesteps = prk[:-1].repeat(2)[1:-1][::-1].copy()
            self.plms_timesteps = ascending[:-3][::-1].copy()
        ts = np.concatenate([self.prk_timesteps, self.plms_timesteps]).astype(np.int64)
        self._num_calls, self._num_prk = len(ts), len(self.prk_timesteps)
        self.num_inference_steps = n
        self._device_cache = {}
        self._build_table()
        self._set_schedule(ts, device)
        self._reset_state()
        if device is not None:
            device = self.timesteps.device  # with its index: caches are keyed by the samples' device
            self._on("coefs", self._coefs, device)
            self._row_index(0, device)

    def _modes(self) -> list[str]:
        """The kinds of step this configuration can take; the table holds one block of rows each."""
        if self.config.skip_prk_steps:
            return list(_PLMS_WEIGHTS)
        return ["ab4"] + [f"prk{k}" for k in range(len(self.prk_timesteps))]

    def _build_table(self) -> None:
        T = self.config.num_train_timesteps
        ratio = T // self.num_inference_steps
        t = torch.arange(T)
        blocks = []
        self._mode_offset = {}
        for mode in self._modes():
            if mode.startswith("prk"):
                k = int(mode[3:])
                # diffusers: a from the group's first timestep, a' from the argument minus half a step
                # on the group's even calls
                t_alpha = torch.full_like(t, int(self.prk_timesteps[k // 4 * 4]))
                t_prev = t - (0 if k % 2 else ratio // 2)
            elif mode == "pair":
                t_alpha, t_prev = t + ratio, t  # the pair's second call steps from t + ratio to t
            else:
                t_alpha, t_prev = t, t - ratio
            self._mode_offset[mode] = len(blocks) * T
            blocks.append(self._mode_rows(mode, t_alpha, t_prev))
        self._coefs = torch.cat(blocks)
        self._num_rows = self._coefs.shape[0]
        self._valid_rows = torch.isfinite(self._coefs).all(1).tolist()  # host list: step reads no tensor

    def _mode_rows(self, mode: str, t_alpha: torch.Tensor, t_prev: torch.Tensor) -> torch.Tensor:
        """(T, NUM_COEFS) rows of one mode; NaN where t_alpha is past the training schedule."""
        T = self.config.num_train_timesteps
        abar = self.alphas_cumprod.double()
        valid = t_alpha < T
        a = torch.where(valid, abar[t_alpha.clamp(max=T - 1)], torch.full_like(abar, float("nan")))
        a_prev = torch.where(t_prev >= 0, abar[t_prev.clamp(min=0)], self.final_alpha_cumprod.double())
        x_coef = (a_prev / a).sqrt()
        e_coef = -(a_prev - a) / (a * (1.0 - a_prev).sqrt() + (a * (1.0 - a) * a_prev).sqrt())
        if self.config.prediction_type == "v_prediction":  # E = sqrt(a) V + sqrt(1-a) X
            x_coef = x_coef + e_coef * (1.0 - a).sqrt()
            e_coef = e_coef * a.sqrt()
        cols = {}
        if mode.startswith("prk"):
            k = int(mode[3:])
            if k % 4 == 3:  # the group's RK4 combination of its outputs (h1..h3) and m
                weights = {"OE": _RK4_WEIGHTS[3], "H1": _RK4_WEIGHTS[0], "H2": _RK4_WEIGHTS[1], "H3": _RK4_WEIGHTS[2]}
                x_col = "H4"
            else:
                weights = {"OE": 1.0}
                x_col = "OX" if k % 4 == 0 else "H1"  # later calls restart from the group's first sample
        elif mode == "pair":
            weights, x_col = {"OE": 0.5, "H1": 0.5}, "H2"
        else:
            w = _PLMS_WEIGHTS[mode]
            weights = {"OE": w[0], **{f"H{j}": w[j] for j in range(1, len(w))}}
            x_col = "OX"
        for col, w in weights.items():
            cols[col] = e_coef * w
        cols[x_col] = x_coef
        return _rows(a.shape, a.device, EM=1.0, **cols)  # eps = m; x0 is unused (PX = PM = 0)

    # -- step --------------------------------------------------------------------------------

    def _host_timestep(self, timestep) -> int | None:
        """The timestep's value where the host knows it (an int, a CPU tensor, a view of
        ``timesteps``), else None (a device tensor: it is used on the device, never read)."""
        _require_integer_timestep(timestep)
        if isinstance(timestep, (int, np.integer)):
            return int(timestep)
        if timestep.device.type == "cpu" and timestep.numel() == 1:
            return int(timestep)
        return self._scheduled_value(timestep)

    def _row(self, mode: str, timestep, device: torch.device) -> torch.Tensor:
        offset = self._mode_offset[mode]
        t = self._host_timestep(timestep)
        if t is None:
            return timestep.to(device=device, dtype=torch.int64) + offset  # one device op, no sync
        T = self.config.num_train_timesteps
        if not 0 <= t < T:
            raise ValueError(f"timestep must lie in [0, {T - 1}], got {t}")
        if not self._valid_rows[offset + t]:
            raise ValueError(f"timestep {t} cannot start this PNDM step: it steps from timestep "
                             f"{t + T // self.num_inference_steps}, past num_train_timesteps={T}")
        return self._row_index(offset + t, device)

    def _check_step(self) -> None:
        if self.num_inference_steps is None:
            raise ValueError("Number of inference steps is 'None', you need to run 'set_timesteps' after creating "
                             "the scheduler")
        if self.counter >= self._num_calls:
            raise ValueError(f"step called {self.counter + 1} times after set_timesteps({self.num_inference_steps}), "
                             f"whose schedule has {self._num_calls} calls; call set_timesteps again")

    def _fused(self, model_output, sample, mode, timestep, history, return_dict):
        device = sample.device
        out, _ = sampling_step(sample, model_output, self._on("coefs", self._coefs, device),
                               self._row(mode, timestep, device), history=history, impl=self.impl)
        self.counter += 1
        if not return_dict:
            return (out,)
        return SchedulerOutput(out)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True):
        """One PNDM call: a Runge-Kutta call while ``counter`` is inside the warm-up (skip_prk_steps
        False), else a PLMS call. Returns :class:`SchedulerOutput` (``prev_sample``) or a 1-tuple."""
        if self.num_inference_steps is not None and self.counter < self._num_prk and not self.config.skip_prk_steps:
            return self.step_prk(model_output, timestep, sample, return_dict)
        return self.step_plms(model_output, timestep, sample, return_dict)

    def step_prk(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True):
        """One call of a Runge-Kutta group (4 calls per group): calls 1-3 step from the group's first
        sample with the current output, call 4 with RK4's combination of the group's outputs."""
        self._check_step()
        k = self.counter
        if k >= self._num_prk:
            raise ValueError(f"step_prk called at counter={k}, past the {self._num_prk} Runge-Kutta calls "
                             f"of this schedule (skip_prk_steps={self.config.skip_prk_steps})")
        if k % 4 == 0:
            history = ()
        elif k % 4 == 3:
            history = (*self._prk_outputs, self.cur_sample)
        else:
            history = (self.cur_sample,)
        out = self._fused(model_output, sample, f"prk{k}", timestep, history, return_dict)
        # the state changes only after the step succeeded
        if k % 4 == 0:
            self.ets.append(model_output)
            self.cur_sample = sample
            self._prk_outputs = [model_output]
        elif k % 4 == 3:
            self._prk_outputs = []
        else:
            self._prk_outputs.append(model_output)
        return out

    def step_plms(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True):
        """One linear multistep call: Adams-Bashforth of order len(ets) (up to 4) over the model
        outputs, with diffusers' first pair (first timestep called twice, the outputs averaged)."""
        self._check_step()
        if not self.config.skip_prk_steps and len(self.ets) < 3:
            raise ValueError(f"{type(self).__name__}.step_plms can only run after the 12 Runge-Kutta calls "
                             f"(step_prk) when skip_prk_steps=False")
        if self.counter != 1:
            ets = self.ets[-3:] + [model_output]
        else:
            ets = self.ets
        if len(ets) == 1 and self.counter == 0:
            mode, history = "first", ()
        elif len(ets) == 1 and self.counter == 1:
            mode, history = "pair", (ets[-1], self.cur_sample)
        elif self.counter == 1:
            raise ValueError(f"step_plms at counter=1 needs exactly one stored model output, has {len(ets)}")
        elif len(ets) in (2, 3, 4):
            mode = ("ab2", "ab3", "ab4")[len(ets) - 2]
            history = tuple(ets[-2::-1])  # ets[-2], ets[-3], ...
        else:
            raise ValueError(f"step_plms at counter={self.counter} with {len(ets)} stored model outputs: the "
                             f"scheduler's state is inconsistent; call set_timesteps again")
        if mode not in self._mode_offset:
            raise ValueError(f"a PLMS step of kind {mode!r} cannot follow the Runge-Kutta warm-up "
                             f"(skip_prk_steps={self.config.skip_prk_steps})")
        out = self._fused(model_output, sample, mode, timestep, history, return_dict)
        # the state changes only after the step succeeded
        self.ets = ets
        if mode == "first":
            self.cur_sample = sample
        elif mode == "pair":
            self.cur_sample = None
        return out

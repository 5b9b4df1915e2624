"""Diffusion: schedules, drop-in schedulers, the whole-loop sampler."""
from .sampler import sample
from .scheduling_ddim import DDIMScheduler
from .scheduling_ddpm import DDPMScheduler
from .scheduling_dpmsolver_multistep import DPMSolverMultistepScheduler
from .training import training_loss

__all__ = ["sample", "DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler", "training_loss"]

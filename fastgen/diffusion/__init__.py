"""Diffusion: schedules, drop-in schedulers, the whole-loop sampler."""
from .sampler import sample
from .scheduling_ddim import DDIMScheduler
from .scheduling_ddpm import DDPMScheduler
from .scheduling_dpmsolver_multistep import DPMSolverMultistepScheduler
from .trainer import DiffusionTrainer, step_noise_seed
from .training import training_loss

__all__ = ["sample", "DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler", "training_loss", "DiffusionTrainer",
           "step_noise_seed"]

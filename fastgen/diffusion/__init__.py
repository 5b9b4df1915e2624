"""Diffusion: schedules, drop-in schedulers, the whole-loop sampler."""
from .sampler import sample
from .scheduling_ddim import DDIMScheduler
from .scheduling_ddpm import DDPMScheduler
from .scheduling_base import SchedulerBase, SchedulerOutput
from .scheduling_dpmsolver_multistep import DPMSolverMultistepScheduler
from .trainer import DiffusionTrainer, step_noise_seed
from .training import training_loss

# diffusers' pipeline loader resolves a saved component ["fastgen.diffusion", "DDPMScheduler"] in this
# module and looks up the base class named "SchedulerMixin" here to pick the loading method
SchedulerMixin = SchedulerBase

__all__ = ["SchedulerBase", "SchedulerOutput", "sample", "DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler", "training_loss", "DiffusionTrainer",
           "step_noise_seed"]

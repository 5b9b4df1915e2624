"""Diffusion: schedules, drop-in schedulers (diffusers' class names and arguments), the whole-loop
sampler, the training objective and trainer."""
from .k_sampling import get_sigmas_karras, sample_dpmpp_2m, sample_euler, sample_euler_ancestral, sample_heun
from .sampler import sample
from .scheduling_base import SchedulerBase, SchedulerOutput
from .scheduling_ddim import DDIMScheduler
from .scheduling_ddpm import DDPMScheduler
from .scheduling_dpmsolver_multistep import DPMSolverMultistepScheduler
from .scheduling_dpmsolver_singlestep import DPMSolverSinglestepScheduler
from .scheduling_edm import EDMDPMSolverMultistepScheduler, EDMEulerScheduler
from .scheduling_euler import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler
from .scheduling_flow_match import FlowMatchEulerDiscreteScheduler
from .scheduling_heun import HeunDiscreteScheduler
from .scheduling_kdpm2 import KDPM2AncestralDiscreteScheduler, KDPM2DiscreteScheduler
from .scheduling_lcm import LCMScheduler
from .scheduling_lms import LMSDiscreteScheduler
from .scheduling_pndm import PNDMScheduler
from .scheduling_unipc_multistep import UniPCMultistepScheduler
from .trainer import DiffusionTrainer, step_noise_seed
from .training import training_loss

# diffusers' pipeline loader resolves a saved component ["fastgen.diffusion", "DDPMScheduler"] in this
# module and looks up the base class named "SchedulerMixin" here to pick the loading method
SchedulerMixin = SchedulerBase

SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
              "UniPCMultistepScheduler", "EulerDiscreteScheduler",
              "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "LMSDiscreteScheduler",
              "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "PNDMScheduler", "LCMScheduler",
              "EDMEulerScheduler", "EDMDPMSolverMultistepScheduler", "FlowMatchEulerDiscreteScheduler")

__all__ = ["SchedulerBase", "SchedulerOutput", "SCHEDULERS", *SCHEDULERS, "sample", "training_loss", "DiffusionTrainer",
           "step_noise_seed", "get_sigmas_karras", "sample_euler", "sample_euler_ancestral", "sample_heun",
           "sample_dpmpp_2m"]

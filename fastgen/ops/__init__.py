"""Fused ops: one file each, holding the reference ``<op>_ref``, the torch.library registration,
the autograd formula and the dispatcher (see DESIGN.md, "The op contract")."""
from .add_noise import add_noise, add_noise_ref
from .attention import attention, attention_ref
from .bias_act import bias_act, bias_act_ref
from .diffusion_steps import ddim_step, ddpm_step, dpmpp_2m_step
from .diffusion_loss import diffusion_loss, diffusion_loss_ref
from .gradient_penalty import grad_sum_of_squares, interpolate, penalty_from_grad
from .group_norm import group_norm, group_norm_ref
from .upfirdn2d import upfirdn2d, upfirdn2d_ref
from .vq_nearest import vq_nearest, vq_nearest_ref
from .sampling_step import NUM_COEFS, sampling_step, sampling_step_ref

__all__ = ["add_noise", "add_noise_ref", "diffusion_loss", "diffusion_loss_ref", "sampling_step", "sampling_step_ref",
           "NUM_COEFS", "ddpm_step", "ddim_step", "dpmpp_2m_step", "group_norm", "group_norm_ref", "interpolate",
           "grad_sum_of_squares", "penalty_from_grad", "attention", "attention_ref", "bias_act", "bias_act_ref",
           "upfirdn2d", "upfirdn2d_ref", "vq_nearest", "vq_nearest_ref"]

"""``--scheduler NAME``: any fastgen scheduler, by diffusers' class name or a short alias, built from
the model's own scheduler configuration (so its noise schedule and prediction type carry over, as
diffusers' ``from_config`` converts one scheduler into another)."""
from __future__ import annotations

__all__ = ["ALIASES", "resolve_scheduler_name", "build_scheduler"]

# short names (lower case; "-" and "_" are interchangeable) -> diffusers' class name
ALIASES = {
    "ddpm": "DDPMScheduler",
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "dpm++2m": "DPMSolverMultistepScheduler",
    "dpmsolver++": "DPMSolverMultistepScheduler",
    "dpm-solver++": "DPMSolverMultistepScheduler",
    "dpm++2s": "DPMSolverSinglestepScheduler",
    "dpm-singlestep": "DPMSolverSinglestepScheduler",
    "unipc": "UniPCMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
    "euler-ancestral": "EulerAncestralDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "lms": "LMSDiscreteScheduler",
    "kdpm2": "KDPM2DiscreteScheduler",
    "kdpm2-a": "KDPM2AncestralDiscreteScheduler",
    "lcm": "LCMScheduler",
    "edm-euler": "EDMEulerScheduler",
    "edm-dpm++2m": "EDMDPMSolverMultistepScheduler",
    "flow-euler": "FlowMatchEulerDiscreteScheduler",
}


def resolve_scheduler_name(name: str, argument: str = "--scheduler") -> str:
    """diffusers' class name for ``name`` (a class name of ``fastgen.diffusion.SCHEDULERS``, any case,
    or an alias of :data:`ALIASES`). Raises ValueError naming ``argument`` and the choices."""
    from ..diffusion import SCHEDULERS

    if isinstance(name, str):
        by_lower = {n.lower(): n for n in SCHEDULERS}
        key = name.strip().lower()
        if key in by_lower:
            return by_lower[key]
        alias = ALIASES.get(key.replace("_", "-"))
        if alias is not None:
            return alias
    raise ValueError(f"{argument}={name!r} is not a fastgen scheduler; use a class name "
                     f"({', '.join(SCHEDULERS)}) or an alias ({', '.join(sorted(ALIASES))})")


def build_scheduler(class_name: str, config: dict | None):
    """A fastgen ``class_name`` scheduler from ``config`` (a diffusers scheduler config, any class, or
    None for the class's defaults), converted as diffusers' ``from_config`` converts."""
    import fastgen.diffusion as fd

    cls = getattr(fd, class_name)
    return cls.from_config(dict(config)) if config else cls()

"""The samplers: our names, their diffusers schedulers, and the labels A1111 writes for them.

One table per question: `SCHEDULERS` says which diffusers class (and settings) a name means,
`SAMPLER_LABELS` how A1111's infotext spells it, so a PNG made here reads back there and back.
"""

from __future__ import annotations

from typing import Any

from tagtune.core.errors import InputError

# our sampler name -> (diffusers scheduler class, config overrides)
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "dpmpp_2m": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2},
    ),
    "dpmpp_2m_karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "dpmpp_2m_sde": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
    ),
    "dpmpp_2m_sde_karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "ddim": ("DDIMScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
}

SAMPLER_LABELS: dict[str, str] = {
    "euler_a": "Euler a",
    "euler": "Euler",
    "heun": "Heun",
    "lms": "LMS",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_karras": "DPM++ 2M Karras",
    "dpmpp_2m_sde": "DPM++ 2M SDE",
    "dpmpp_2m_sde_karras": "DPM++ 2M SDE Karras",
    "ddim": "DDIM",
    "unipc": "UniPC",
}


def make_scheduler(name: str, config: dict[str, Any]):
    """A diffusers scheduler for one of our sampler names, from the model's scheduler config."""
    import diffusers

    if name not in SCHEDULERS:
        raise InputError(
            "unknown sampler", field="--sampler", value=name, allowed=", ".join(SCHEDULERS)
        )
    cls_name, overrides = SCHEDULERS[name]
    cls = getattr(diffusers, cls_name)
    return cls.from_config({k: v for k, v in config.items() if not k.startswith("_")}, **overrides)

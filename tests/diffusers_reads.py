"""diffusers' own single-file loader as an independent check of what tagtune writes."""

from __future__ import annotations

import logging

import torch


def diffusers_reads(path, config_folder):
    """diffusers' own single-file loader (config from a local folder, offline): the pipeline
    and any message about tensors it did not use, missed or made up."""
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import logging as dlogging

    messages: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler = Capture(level=logging.DEBUG)
    logger = dlogging.get_logger("diffusers")
    logger.addHandler(handler)
    try:
        pipe = StableDiffusionXLPipeline.from_single_file(
            str(path), config=str(config_folder), local_files_only=True, torch_dtype=torch.float32
        )
    finally:
        logger.removeHandler(handler)
    words = ("not used", "missing", "unexpected", "newly initialized")
    return pipe, [m for m in messages if any(w in m.lower() for w in words)]

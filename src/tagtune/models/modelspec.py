"""ModelSpec header metadata (Stability AI's `modelspec.*` keys) for SDXL checkpoints.

Model sites and UIs read these keys from the safetensors header. `modelspec.hash_sha256`
is "0x" + the SHA-256 of the bytes after the header (AutoV3); since the header cannot
change those bytes, the writer fills it in (`write_safetensors(hash_key=HASH_KEY)`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

SPEC_VERSION = "1.0.0"
ARCHITECTURE = "stable-diffusion-xl-v1-base"
IMPLEMENTATION = "https://github.com/Stability-AI/generative-models"
HASH_KEY = "modelspec.hash_sha256"


def modelspec_metadata(
    title: str,
    *,
    author: str = "",
    description: str = "",
    license: str = "",
    usage_hint: str = "",
    date: str | dt.date | dt.datetime | None = None,
    resolution: str = "1024x1024",
    prediction_type: str = "epsilon",
    hash_sha256: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """ModelSpec keys for an SDXL base checkpoint, plus `extra` (e.g. `tagtune.*` keys).

    Empty fields are left out. `date` defaults to now (ISO 8601); `date=""` leaves it out
    (reproducible files). A `hash_sha256` given without the "0x" prefix gets it.
    """
    when = dt.datetime.now(dt.UTC).replace(microsecond=0) if date is None else date
    meta = {
        "modelspec.sai_model_spec": SPEC_VERSION,
        "modelspec.architecture": ARCHITECTURE,
        "modelspec.implementation": IMPLEMENTATION,
        "modelspec.title": title,
        "modelspec.author": author,
        "modelspec.description": description,
        "modelspec.date": when if isinstance(when, str) else when.isoformat(),
        "modelspec.license": license,
        "modelspec.usage_hint": usage_hint,
        "modelspec.resolution": resolution,
        "modelspec.prediction_type": prediction_type,
    }
    if hash_sha256:
        meta[HASH_KEY] = hash_sha256 if hash_sha256.startswith("0x") else "0x" + hash_sha256
    meta = {k: v for k, v in meta.items() if v}
    for key, value in (extra or {}).items():
        meta[str(key)] = str(value)
    return meta


BAKED_VAE_KEY = "tagtune.baked_vae"


def vae_metadata(name: str, sha256: str = "", autov2: str = "") -> dict[str, str]:
    """Header keys naming the VAE a checkpoint carries: `tagtune.baked_vae` (file or folder
    name) and, when known, `tagtune.baked_vae_sha256` / `tagtune.baked_vae_autov2` of its
    weights file. ModelSpec has no VAE key; these sit beside the `modelspec.*` keys."""
    meta = {BAKED_VAE_KEY: name}
    if sha256:
        meta[BAKED_VAE_KEY + "_sha256"] = sha256
    if autov2:
        meta[BAKED_VAE_KEY + "_autov2"] = autov2
    return meta

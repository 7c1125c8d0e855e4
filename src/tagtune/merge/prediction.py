"""What merge does with the parents' prediction type and zero-terminal-SNR markers.

A merge of a v-prediction model with an epsilon one samples right as neither, so parents
must agree (what each states: its `v_pred` / `ztsnr` markers, else
`modelspec.prediction_type`, else epsilon). The output is a copy of parent A's layout, so it
carries A's markers: when the parents agree those are everyone's; with `force` the merge
goes on and the output is marked as A is.
"""

from __future__ import annotations

from tagtune.core.errors import ModelFileError
from tagtune.models.prediction import EPSILON, MARKER_KEYS, Prediction, read_file_claim
from tagtune.models.safetensors_io import Header


def parent_prediction(header: Header) -> Prediction:
    """What a merge input states about itself (epsilon where it states nothing)."""
    claim = read_file_claim(header.tensors.keys(), header.metadata)
    return Prediction(claim.prediction_type or EPSILON, bool(claim.zero_terminal_snr))


def weight_keys(keys: object) -> set[str]:
    """The tensor names that are weights (the marker flags left out)."""
    return {str(k) for k in keys} - set(MARKER_KEYS)  # type: ignore[union-attr]


def check_parents_agree(
    headers: list[Header], roles: str = "abc", force: bool = False
) -> Prediction:
    """Parent A's Prediction, after checking every parent states the same one.

    Disagreement is a ModelFileError naming each parent and what it is, unless `force`.
    """
    found = [parent_prediction(h) for h in headers]
    if force or all(p == found[0] for p in found):
        return found[0]
    listed = "; ".join(
        f"{role.upper()} {h.path.name} is {p.label()}"
        for role, h, p in zip(roles, headers, found, strict=False)
    )
    raise ModelFileError(
        f"the parents are not the same kind of model: {listed}; the merge would sample right "
        "as neither",
        file=headers[0].path,
        hint="merge models of one prediction type, or pass --force to merge anyway "
        "(the output is marked as A is)",
    )

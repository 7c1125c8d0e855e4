"""Merging v-prediction models: markers kept when the parents agree, refused when not."""

from __future__ import annotations

import pytest

from prediction_models import write_prediction_files
from tagtune.core.errors import ModelFileError
from tagtune.models.safetensors_io import read_header


@pytest.fixture(scope="module")
def v_files(tiny_sdxl, tmp_path_factory):
    """The tiny model as v + ztsnr, v and epsilon single files (fp16)."""
    return write_prediction_files(tiny_sdxl, tmp_path_factory.mktemp("pred"))


# --- merge -----------------------------------------------------------------------------


def test_merge_keeps_agreeing_markers_and_refuses_disagreeing_parents(v_files, tmp_path):
    from tagtune.merge.checkpoints import MergeSpec, merge_checkpoints

    spec = MergeSpec(alpha=0.5)
    out = tmp_path / "vv.safetensors"
    merge_checkpoints(v_files["v_ztsnr"], v_files["v_ztsnr"], out, spec, hash_parents=False)
    header = read_header(out)
    assert {"v_pred", "ztsnr"} <= set(header.tensors)
    assert header.metadata["modelspec.prediction_type"] == "v"
    for other in ("eps", "v"):
        with pytest.raises(ModelFileError) as exc:
            merge_checkpoints(v_files["v_ztsnr"], v_files[other], tmp_path / "x.safetensors", spec)
        text = str(exc.value)
        assert "v_ztsnr.safetensors is v_prediction, zero terminal SNR" in text
        assert f"{other}.safetensors is" in text and "--force" in exc.value.hint
    assert not (tmp_path / "x.safetensors").exists()
    forced = tmp_path / "forced.safetensors"
    merge_checkpoints(v_files["eps"], v_files["v_ztsnr"], forced, spec, force=True)
    header = read_header(forced)
    assert "v_pred" not in header.tensors  # marked as A is
    assert header.metadata["modelspec.prediction_type"] == "epsilon"
    eps = tmp_path / "ee.safetensors"
    merge_checkpoints(v_files["eps"], v_files["eps"], eps, spec, hash_parents=False)
    assert len(read_header(eps).tensors) == 2513

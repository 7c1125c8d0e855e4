"""Fuzzing the two ways hostile bytes come in: safetensors headers and gallery-dl sidecars.

Each case runs the real command in this process (`tagtune convert FILE OUT`,
`tagtune ingest WS FOLDER`) and must end in a one-line error with exit code 2 (a model
file) or a completed ingest (a sidecar is a post or a problem row): never a traceback (any
exception but SystemExit fails the test), never a hang (each case runs under an alarm),
never a large allocation:

- model files: the address space is capped (RLIMIT_AS, the current size plus 2 GiB) while
  the command runs, so an allocation sized by the file (a 160 GB tensor asked for by a
  config) fails and shows up as a traceback instead of swapping the machine;
- sidecars: the Python heap peak is measured (tracemalloc) and must stay under 64 MiB
  (DuckDB reserves address space of its own, so RLIMIT_AS would fail it spuriously).

Derandomised (the same examples every run) and sized to a few seconds.
"""

from __future__ import annotations

import contextlib
import io
import json
import resource
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cli_main import run_with_deadline
from tagtune.models.configs import METADATA_KEY, SDXL_SIZES, configs_to_metadata, sdxl_base_configs
from tagtune.models.safetensors_io import encode_header

FUZZ = settings(
    max_examples=50,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
CASE_SECONDS = 20
ADDRESS_HEADROOM = 2 << 30
HEAP_LIMIT = 64 << 20


def run_cli(*args) -> tuple[int, str, str]:
    """The real command in this process: (exit code, stdout, stderr); fails past CASE_SECONDS."""

    res = run_with_deadline(args, CASE_SECONDS)
    return res.code, res.out, res.err


@contextlib.contextmanager
def address_space_capped(headroom: int = ADDRESS_HEADROOM):
    """Cap this process's address space at its current size plus `headroom` (restored after)."""
    status = Path("/proc/self/status").read_text()
    size_kib = int(
        next(line.split()[1] for line in status.splitlines() if line.startswith("VmSize"))
    )
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = size_kib * 1024 + headroom
    resource.setrlimit(resource.RLIMIT_AS, (cap if hard < 0 else min(cap, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def assert_one_error_or_success(code: int, err: str) -> None:
    assert code in (0, 2), (code, err)
    if code == 2:
        lines = err.splitlines()
        assert sum(line.startswith("error: ") for line in lines) == 1, err
        assert all(line.startswith(("error: ", "hint: ")) for line in lines), err


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(["F32", "BF16", "\ud800", 10**12, -1, [], {}]),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=8,
)


# --- safetensors headers -------------------------------------------------------------------

BASE_ENTRIES = [
    ("model.diffusion_model.a", "F16", (2, 3)),
    ("b", "F32", (4,)),
    ("c", "I64", (1, 5)),
]
BASE_DATA = bytes(range(256))[: 2 * 3 * 2 + 4 * 4 + 5 * 8]
BASE_META = {METADATA_KEY: configs_to_metadata(sdxl_base_configs()), "modelspec.title": "fuzz"}


def _header() -> dict:
    head, _ = encode_header(BASE_ENTRIES, BASE_META)
    return json.loads(head[8:])


def _mutation():
    names = [name for name, _, _ in BASE_ENTRIES]
    components = list(SDXL_SIZES)
    return st.one_of(
        st.tuples(st.just("entry"), st.sampled_from(names),
                  st.sampled_from(["dtype", "shape", "data_offsets", "extra"]), JSON_VALUES),
        st.tuples(st.just("metadata"), st.sampled_from(["modelspec.title", METADATA_KEY, "x"]),
                  JSON_VALUES),
        st.tuples(st.just("config"), st.sampled_from(components), st.text(max_size=12),
                  JSON_VALUES),
        st.tuples(st.just("size"), st.sampled_from(components),
                  st.sampled_from(sorted({k for v in SDXL_SIZES.values() for k in v})),
                  st.one_of(st.integers(min_value=-5, max_value=10**11),
                            st.lists(st.integers(min_value=0, max_value=10**6), max_size=10))),
        st.tuples(st.just("configs-text"), st.one_of(
            st.text(max_size=40),
            st.integers(min_value=1, max_value=300_000).map(lambda n: "[" * n + "]" * n),
            st.just('{"unet": "\\ud800"}'))),
        st.tuples(st.just("flip"), st.integers(min_value=0, max_value=10_000),
                  st.integers(min_value=0, max_value=255)),
        st.tuples(st.just("length"), st.integers(min_value=0, max_value=2**64 - 1)),
        st.tuples(st.just("truncate"), st.integers(min_value=0, max_value=4000)),
        st.tuples(st.just("deep"), st.integers(min_value=2, max_value=300_000)),
    )  # fmt: skip


def build_file(mutation: tuple) -> bytes:
    """The base file with one mutation applied to its header (or its bytes)."""
    kind, *args = mutation
    header = _header()
    if kind == "entry":
        name, field, value = args
        header[name][field] = value
    elif kind == "metadata":
        key, value = args
        header["__metadata__"][key] = value
    elif kind in ("config", "size"):
        component, key, value = args
        configs = json.loads(header["__metadata__"][METADATA_KEY])
        configs[component][key] = value
        header["__metadata__"][METADATA_KEY] = json.dumps(configs)
    elif kind == "configs-text":
        header["__metadata__"][METADATA_KEY] = args[0]
    body = b'{"a": ' + b"[" * args[0] + b"]" * args[0] + b"}" if kind == "deep" else b""
    if not body:
        body = json.dumps(header).encode("utf-8", "surrogatepass")
    body += b" " * (-len(body) % 8)
    raw = bytearray(len(body).to_bytes(8, "little") + body + BASE_DATA)
    if kind == "flip":
        at, byte = args
        raw[8 + at % len(body)] = byte
    elif kind == "length":
        raw[:8] = args[0].to_bytes(8, "little")
    elif kind == "truncate":
        del raw[args[0] % len(raw) :]
    return bytes(raw)


@FUZZ
@given(mutation=_mutation())
@example(mutation=("entry", "b", "dtype", ["F32"]))  # the cases issue 13 found, always run
@example(mutation=("entry", "b", "dtype", {"F32": 1}))
@example(mutation=("deep", 200_000))
@example(mutation=("configs-text", '{"unet": "a", "vae": "b"}'))
@example(mutation=("configs-text", "[" * 100_000 + "]" * 100_000))
@example(mutation=("size", "unet", "block_out_channels", [100_000] * 3))
def test_fuzzed_safetensors_headers_give_one_error_line(tmp_path, mutation):
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(build_file(mutation))
    with address_space_capped():
        code, _, err = run_cli("convert", path, tmp_path / "out")
    assert_one_error_or_success(code, err)
    if code == 2:
        assert f"error: {path}" in err  # the error names the file


def test_the_unmutated_base_file_is_read_and_refused_as_not_sdxl(tmp_path):
    path = tmp_path / "base.safetensors"
    path.write_bytes(build_file(("none",)))
    code, _, err = run_cli("convert", path, tmp_path / "out")
    assert code == 2
    assert err.startswith(f"error: {path}: not an SDXL 1.0 base checkpoint: ")


# --- gallery-dl sidecars -------------------------------------------------------------------

SIDECAR_LIMIT = 4096
POST = {
    "id": 7,
    "md5": "0" * 32,
    "created_at": "2020-06-01T12:00:00.000-04:00",
    "score": 10,
    "rating": "g",
    "tag_string_general": "1girl smile",
    "tags_general": ["1girl", "smile"],
}


def _sidecar():
    return st.one_of(
        st.tuples(st.just("field"), st.sampled_from([*POST, "x"]), JSON_VALUES),
        st.tuples(st.just("garbage"), st.binary(max_size=64)),
        st.tuples(st.just("deep"), st.integers(min_value=2, max_value=200_000)),
        st.tuples(st.just("huge"), st.integers(min_value=SIDECAR_LIMIT, max_value=4 * SIDECAR_LIMIT)),
        st.tuples(st.just("text"), st.sampled_from(['"\\ud800"', "NaN", "-Infinity", "1e999", '"\\udc00x"']),
                  st.sampled_from(list(POST))),
        st.tuples(st.just("cut"), st.integers(min_value=0, max_value=200)),
        st.tuples(st.just("json"), JSON_VALUES),
    )  # fmt: skip


def sidecar_bytes(case: tuple) -> bytes:
    kind, *args = case
    post = dict(POST)
    if kind == "field":
        post[args[0]] = args[1]
    elif kind == "garbage":
        return args[0]
    elif kind == "deep":
        post["x"] = "DEEP"
        n = args[0]
        return json.dumps(post).replace('"DEEP"', "[" * n + "]" * n).encode()
    elif kind == "huge":
        post["tag_string_general"] = "smile " * (args[0] // 6 + 1)
    elif kind == "text":
        post[args[1]] = "SLOT"
        return json.dumps(post).replace('"SLOT"', args[0]).encode()
    elif kind == "cut":
        return json.dumps(post).encode()[: args[0]]
    elif kind == "json":
        return json.dumps(args[0]).encode("utf-8", "surrogatepass")
    return json.dumps(post).encode("utf-8", "surrogatepass")


@pytest.fixture(scope="module")
def png_bytes() -> bytes:
    import numpy as np

    from tagtune.synthetic.collection import shape_image

    img, _ = shape_image(np.random.default_rng(0), (96, 96))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@settings(FUZZ, max_examples=25)
@given(case=_sidecar())
@example(case=("text", '"\\ud800"', "tag_string_general"))  # the cases issue 13 found
@example(case=("deep", 100_000))
@example(case=("text", "NaN", "score"))
@example(case=("huge", 4 * SIDECAR_LIMIT))
@example(case=("garbage", b"\xff\xfe{"))
def test_fuzzed_sidecars_never_stop_an_ingest(tmp_path_factory, monkeypatch, png_bytes, case):
    import tagtune.ingest.sources as sources
    from tagtune.recipe.workspace import init_workspace

    monkeypatch.setattr(sources, "MAX_SIDECAR_BYTES", SIDECAR_LIMIT)
    root = tmp_path_factory.mktemp("fuzz")
    ws = init_workspace(root / "ws")
    (root / "coll").mkdir()
    (root / "coll" / "a.png").write_bytes(png_bytes)
    (root / "coll" / "a.png.json").write_bytes(sidecar_bytes(case))
    tracemalloc.start()
    try:
        code, out, err = run_cli("ingest", ws.root, root / "coll", "--json")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (code, err) == (0, ""), err
    summary = json.loads(out)
    # the sidecar became a post, or a problem row says why not
    assert summary["posts"] == 1 or sum(summary["problems"].values()) >= 1, summary
    assert peak < HEAP_LIMIT, peak

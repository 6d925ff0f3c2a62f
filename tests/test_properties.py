"""Property-based tests (hypothesis): whatever the input, the recording readers, the probe loaders
and the parameter parsing either succeed with a consistent result or raise SpikesortError (the
one-line user error), never another exception. Examples are few (max_examples) so that the file
runs in seconds; the readers never modify their input.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import string
import tempfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spikesort.cli.options import _parse_set, resolve_params
from spikesort.errors import SpikesortError
from spikesort.io.probes import list_bundled_probes, load_probe
from spikesort.io.recordings import SUPPORTED_FORMATS, open_recording
from spikesort.params import Params, load_config

# SPIKESORT_HYPOTHESIS_EXAMPLES=500 explores further (the default keeps the file at a few seconds)
FAST = settings(
    max_examples=int(os.environ.get("SPIKESORT_HYPOTHESIS_EXAMPLES", 40)),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("props")


def _fresh(scratch: Path) -> Path:
    # hypothesis runs many examples per test: each gets its own folder
    return Path(tempfile.mkdtemp(dir=scratch))


def _state(path: Path):
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


# ------------------------------------------------------------------------------- strategies

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
any_float = st.floats(allow_nan=True, allow_infinity=True)
numbers = st.one_of(st.integers(min_value=-(10**20), max_value=10**20), any_float)
short_text = st.text(alphabet=string.printable + "µé\x00", max_size=12)
json_scalars = st.one_of(st.none(), st.booleans(), numbers, short_text)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(short_text, inner, max_size=5)),
    max_leaves=20,
)


# ------------------------------------------------------------------------------- readers


@FAST
@given(
    data=st.binary(max_size=400),
    rate=st.one_of(st.none(), numbers, short_text, st.booleans()),
    n_channels=st.one_of(st.none(), st.integers(min_value=-3, max_value=70), any_float, short_text, st.booleans()),
    dtype=st.one_of(
        st.none(),
        st.sampled_from(
            [
                "int16",
                "uint16",
                "int32",
                "float32",
                "float64",
                "int8",
                "complex64",
                "bool",
                "U4",
                "<i2",
                ">f4",
                "object",
            ]
        ),
        short_text,
    ),
    offset=st.one_of(st.integers(min_value=-5, max_value=500), any_float, st.booleans(), short_text),
)
def test_raw_binary_reader(scratch, data, rate, n_channels, dtype, offset):
    path = _fresh(scratch) / "x.bin"
    path.write_bytes(data)
    before = _state(path)
    try:
        recording = open_recording(path, sampling_rate_hz=rate, n_channels=n_channels, dtype=dtype, offset_bytes=offset)
    except SpikesortError:
        pass
    else:
        # it opened: the description accounts for every byte of the file
        n, c = recording.get_num_samples(0), recording.get_num_channels()
        itemsize = np.dtype(recording.get_dtype()).itemsize
        assert n >= 1 and c == n_channels and offset + n * c * itemsize == len(data)
        assert recording.get_traces(start_frame=0, end_frame=min(n, 5)).shape == (min(n, 5), c)
        assert math.isfinite(recording.get_sampling_frequency()) and recording.get_sampling_frequency() > 0
        del recording
    assert _state(path) == before


META_KEYS = [
    "nSavedChans",
    "imSampRate",
    "niSampRate",
    "typeThis",
    "imroTbl",
    "snsChanMap",
    "snsShankMap",
    "fileSizeBytes",
    "imAiRangeMax",
    "imAiRangeMin",
    "snsApLfSy",
    "imDatPrb_type",
    "fileTimeSecs",
]


@FAST
@given(
    suffix=st.sampled_from([".h5", ".hdf5", ".nwb", ".rhd", ".rhs", ".xyz", ".dat", ".meta"]),
    data=st.binary(max_size=300),
    meta=st.lists(
        st.tuples(
            st.sampled_from(META_KEYS + ["~" + k for k in META_KEYS]),
            st.one_of(st.integers(-5, 500).map(str), short_text),
        ),
        max_size=8,
    ),
    fmt=st.one_of(st.none(), st.sampled_from(SUPPORTED_FORMATS), short_text),
)
def test_other_readers(scratch, suffix, data, meta, fmt):
    folder = _fresh(scratch)
    if suffix == ".meta":
        # a SpikeGLX pair: random samples beside a random .meta
        path = folder / "run_g0_t0.imec0.ap.bin"
        path.write_bytes(data)
        (folder / "run_g0_t0.imec0.ap.meta").write_text("\n".join(f"{k}={v}" for k, v in meta))
    else:
        path = folder / f"x{suffix}"
        path.write_bytes(data)
    before = {p.name: _state(p) for p in folder.iterdir()}
    try:
        recording = open_recording(path, fmt=fmt)
    except SpikesortError:
        pass
    else:
        assert recording.get_num_segments() == 1 and recording.get_num_channels() >= 1
        del recording
    assert {p.name: _state(p) for p in folder.iterdir()} == before


# ------------------------------------------------------------------------------- probes


def _check_probe_group(group) -> None:
    pos = np.concatenate([p.contact_positions[:, :2] for p in group.probes])
    dci = np.concatenate([p.device_channel_indices for p in group.probes])
    assert np.all(np.isfinite(pos))
    assert len(np.unique(pos, axis=0)) == len(pos)
    connected = dci[dci >= 0]
    assert len(connected) and len(np.unique(connected)) == len(connected)


positions = st.lists(
    st.one_of(st.lists(finite, min_size=2, max_size=2), st.lists(numbers, max_size=4), json_values), max_size=6
)
probe_dicts = st.fixed_dictionaries(
    {"contact_positions": st.one_of(positions, json_values)},
    optional={
        "ndim": st.one_of(st.sampled_from([2, 3]), json_values),
        "si_units": st.one_of(st.sampled_from(["um", "mm"]), json_values),
        "device_channel_indices": st.one_of(st.lists(st.integers(-2, 8), max_size=6), json_values),
        "contact_shapes": st.one_of(st.lists(st.sampled_from(["circle", "square", "rect"]), max_size=6), json_values),
        "contact_shape_params": st.one_of(st.lists(st.just({"radius": 5}), max_size=6), json_values),
        "shank_ids": st.one_of(st.lists(st.sampled_from(["", "0", "1"]), max_size=6), json_values),
        "annotations": json_values,
    },
)


@FAST
@given(
    content=st.one_of(
        st.fixed_dictionaries(
            {"probes": st.lists(probe_dicts, max_size=2)},
            optional={"specification": st.just("probeinterface"), "version": short_text},
        ),
        json_values,
    )
)
def test_json_probe_loader(scratch, content):
    path = _fresh(scratch) / "p.json"
    path.write_text(json.dumps(content))
    try:
        group = load_probe(path)
    except SpikesortError:
        return
    _check_probe_group(group)


prb_values = st.recursive(
    st.one_of(st.integers(-3, 10).map(str), finite.map(repr), st.sampled_from(["None", "'a'", "x", "[]", "{}"])),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda v: "[" + ", ".join(v) + "]"),
        st.lists(inner, max_size=4).map(lambda v: "(" + ", ".join(v) + ",)"),
        st.lists(st.tuples(inner, inner), max_size=4).map(lambda kv: "{" + ", ".join(f"{k}: {v}" for k, v in kv) + "}"),
        st.lists(st.integers(-3, 5).map(str), min_size=1, max_size=4).map(lambda a: f"range({', '.join(a)})"),
        st.tuples(inner, inner).map(lambda t: f"{t[0]} + {t[1]}"),
    ),
    max_leaves=15,
)
prb_groups = st.dictionaries(
    st.integers(0, 3).map(str),
    st.fixed_dictionaries({}, optional={"'channels'": prb_values, "'geometry'": prb_values, "'graph'": prb_values}),
    max_size=3,
).map(
    lambda g: (
        "{" + ", ".join(f"{k}: {{" + ", ".join(f"{kk}: {vv}" for kk, vv in v.items()) + "}" for k, v in g.items()) + "}"
    )
)


@FAST
@given(
    groups=st.one_of(prb_groups, prb_values),
    extra=st.one_of(st.just(""), short_text, st.sampled_from(["import os\n", "x = 1\n"])),
)
def test_prb_probe_loader(scratch, groups, extra):
    path = _fresh(scratch) / "p.prb"
    path.write_text(f"{extra}\nchannel_groups = {groups}\n")
    try:
        group = load_probe(path)
    except SpikesortError:
        return
    _check_probe_group(group)


mat_arrays = st.one_of(
    st.lists(st.one_of(finite, any_float, st.integers(-2, 40)), max_size=6).map(lambda v: np.asarray(v, dtype=float)),
    st.just(np.zeros(0)),
    short_text.map(lambda t: t or "a"),
)


@FAST
@given(
    fields=st.dictionaries(
        st.sampled_from(["xcoords", "ycoords", "chanMap", "chanMap0ind", "connected", "kcoords", "name"]),
        mat_arrays,
        max_size=7,
    ),
    garbage=st.binary(max_size=200),
    use_garbage=st.booleans(),
)
def test_kilosort_mat_probe_loader(scratch, fields, garbage, use_garbage):
    path = _fresh(scratch) / "chanMap.mat"
    if use_garbage:
        path.write_bytes(garbage)
    else:
        scipy.io.savemat(path, fields)
    try:
        group = load_probe(path)
    except SpikesortError:
        return
    _check_probe_group(group)


@FAST
@given(name=st.one_of(short_text, st.sampled_from(list_bundled_probes()), short_text.map(lambda t: "~" + t)))
def test_probe_names(name):
    try:
        group = load_probe(name)
    except SpikesortError:
        return
    _check_probe_group(group)


@FAST
@given(
    name=st.one_of(
        short_text.filter(lambda t: not t.startswith(("/", "~"))), short_text.map(lambda t: "~zz" + t)
    ),  # "~zz...": a user that does not exist
    fmt=st.one_of(st.none(), st.sampled_from(SUPPORTED_FORMATS), short_text),
)
def test_recording_paths(scratch, name, fmt):
    # names relative to an empty folder: nothing there, or the (empty) folder itself
    cwd = os.getcwd()
    os.chdir(_fresh(scratch))
    try:
        with pytest.raises(SpikesortError):
            open_recording(name, fmt=fmt, sampling_rate_hz=30000, n_channels=4, dtype="int16")
    finally:
        os.chdir(cwd)


# ------------------------------------------------------------------------------- parameters

param_names = st.sampled_from(Params.names())
param_values = st.one_of(
    json_values,
    numbers,
    st.lists(numbers, max_size=4),
    st.tuples(numbers, numbers),
    numbers.map(str),
    st.sampled_from(["median", "mean", "none", "on", "off", "1,2", "(0.5, 2)"]),
)


@FAST
@given(values=st.dictionaries(st.one_of(param_names, short_text), param_values, max_size=4))
def test_params_from_dict(values):
    try:
        params = Params.from_dict(values)
    except SpikesortError:
        return
    # a Params that was built is valid: rebuilding it from its own values gives it back
    assert Params.from_dict(params.to_dict()) == params
    assert json.loads(json.dumps(params.to_dict(), allow_nan=False)) == params.to_dict()


toml_lines = st.one_of(
    st.tuples(
        st.one_of(param_names, short_text),
        st.one_of(
            numbers.map(lambda v: repr(v).replace("inf", "inf").replace("nan", "nan")),
            st.sampled_from(['"median"', "true", "[1.0, 2.0]", "[]", "{}", '"x"', "0x10", "1e400", "-0", "nan", "inf"]),
            short_text,
        ),
    ).map(lambda kv: f"{kv[0]} = {kv[1]}"),
    short_text,
)


@FAST
@given(lines=st.lists(toml_lines, max_size=5), raw=st.binary(max_size=80), use_raw=st.booleans())
def test_config_files(scratch, lines, raw, use_raw):
    path = _fresh(scratch) / "p.toml"
    if use_raw:
        path.write_bytes(raw)
    else:
        path.write_text("\n".join(lines), encoding="utf8")
    try:
        values = load_config(path)
        params = resolve_params(config=str(path))
    except SpikesortError:
        return
    assert isinstance(values, dict) and isinstance(params, Params)


@FAST
@given(
    items=st.lists(
        st.one_of(
            st.tuples(st.one_of(param_names, short_text), st.one_of(numbers.map(str), short_text)).map("=".join),
            short_text,
        ),
        max_size=4,
    )
)
def test_set_values(items):
    try:
        parsed = _parse_set(items)
        params = resolve_params(config=None, set_values=items)
    except SpikesortError:
        return
    assert set(parsed) <= set(Params.names()) and isinstance(params, Params)

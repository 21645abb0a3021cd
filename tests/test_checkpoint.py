"""Durable checkpoints (swarm/checkpoint.py) and the learner state they carry (agents/learner.py:
learner_state / load_learner_state)."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.config import LearnConfig, ModelConfig
from agents.learner import OnlineLearner, learner_state, load_learner_state
from swarm import checkpoint
from swarm.checkpoint import CheckpointError


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "f32": rng.standard_normal((3, 4)).astype(np.float32),
        "f64_3d": rng.standard_normal((2, 3, 5)),
        "i64": np.arange(-5, 7, dtype=np.int64),
        "u8": rng.integers(0, 256, 17).astype(np.uint8),
        "i8": np.array([-128, 0, 127], np.int8),
        "u64": np.array([0, 2**64 - 1], np.uint64),
        "bool": np.array([[True, False], [False, True]]),
        "c64": (rng.standard_normal(4) + 1j * rng.standard_normal(4)).astype(np.complex64),
        "scalar": np.array(3.5, np.float32),  # 0-d
        "empty": np.zeros((0, 3), np.int64),
        "fortran": np.asfortranarray(rng.standard_normal((4, 3)).astype(np.float32)),
        "big_endian": np.arange(6, dtype=">i4").reshape(2, 3),
        "strings": np.array(["a", "bcd", ""], "U3"),
        "dotted.name": np.ones(2, np.float16),
    }


META = {
    "agent": 3,
    "nested": {"list": [1, 2.5, None, "x", {"deep": [True, False]}], "empty": {}},
    "big": 2**100 + 7,  # JSON ints are unbounded (a PCG64 state is one)
    "unicode": "drone ☂ – ok",
    "neg": -1.25e-300,
}


def _write_npz(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)


def _npy_bytes(a: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=allow_pickle)
    return buf.getvalue()


# ---- round trip -------------------------------------------------------------------------------


def test_round_trip_keeps_every_dtype_shape_value_and_nested_meta(tmp_path):
    arrays = _arrays()
    path = tmp_path / "sub" / "dir" / "state.npz"  # parents are created
    size = checkpoint.save(path, arrays, META)
    assert size == path.stat().st_size > 0

    got, meta = checkpoint.load(path)

    assert set(got) == set(arrays)
    for key, a in arrays.items():
        assert got[key].dtype == a.dtype, key
        assert got[key].shape == a.shape, key
        np.testing.assert_array_equal(got[key], a, err_msg=key)
    assert {k: meta[k] for k in META} == META
    assert meta["format"] == checkpoint.FORMAT
    assert isinstance(meta["sha256"], str) and len(meta["sha256"]) == 64


def test_nan_and_inf_array_values_round_trip(tmp_path):
    a = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0], np.float32)
    checkpoint.save(tmp_path / "c.npz", {"a": a}, {})
    got, _ = checkpoint.load(tmp_path / "c.npz")
    assert got["a"].tobytes() == a.tobytes()


def test_empty_checkpoint_round_trips(tmp_path):
    checkpoint.save(tmp_path / "c.npz", {}, {"only": "meta"})
    got, meta = checkpoint.load(tmp_path / "c.npz")
    assert got == {}
    assert meta["only"] == "meta"


def test_absent_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        checkpoint.load(tmp_path / "nope.npz")


# ---- atomic writes ----------------------------------------------------------------------------


def test_save_leaves_no_temp_file(tmp_path):
    path = tmp_path / "state.npz"
    for i in range(3):
        checkpoint.save(path, {"x": np.full(10, i)}, {"i": i})
        assert sorted(p.name for p in tmp_path.iterdir()) == ["state.npz"]


def test_save_over_an_existing_checkpoint_replaces_it_whole(tmp_path):
    path = tmp_path / "state.npz"
    checkpoint.save(path, {"big": np.zeros(100_000), "old": np.ones(3)}, {"v": 1, "gone": True})
    big_size = path.stat().st_size

    size = checkpoint.save(path, {"new": np.arange(4)}, {"v": 2})

    assert size < big_size // 10  # not the old bytes with the new ones written over them
    got, meta = checkpoint.load(path)
    assert list(got) == ["new"]
    np.testing.assert_array_equal(got["new"], np.arange(4))
    assert meta["v"] == 2 and "gone" not in meta
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.npz"]


def test_object_array_is_refused_at_save_and_nothing_is_written(tmp_path):
    path = tmp_path / "state.npz"
    with pytest.raises(ValueError, match="'bad'"):
        checkpoint.save(path, {"ok": np.ones(2), "bad": np.array([{"a": 1}, None], object)}, {})
    assert list(tmp_path.iterdir()) == []


def test_reserved_meta_name_is_refused_at_save(tmp_path):
    with pytest.raises(ValueError, match="__meta__"):
        checkpoint.save(tmp_path / "c.npz", {"__meta__": np.zeros(3, np.uint8)}, {})


# ---- damaged and foreign files ------------------------------------------------------------------


def test_truncated_file_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "state.npz"
    checkpoint.save(path, _arrays(), META)
    data = path.read_bytes()
    for cut in (len(data) - 1, len(data) // 2, 100, 3, 0):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="state.npz"):
            checkpoint.load(path)


def _array_region(data: bytes, member: str) -> tuple[int, int]:
    """(start, end) in the zip file bytes of the raw array data of `member` (after its npy
    header), for an uncompressed zip as np.savez writes."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        info = z.getinfo(member)
    # local file header: 30 bytes + name + extra field; lengths at offsets 26 and 28
    off = info.header_offset
    name_len = int.from_bytes(data[off + 26 : off + 28], "little")
    extra_len = int.from_bytes(data[off + 28 : off + 30], "little")
    start = off + 30 + name_len + extra_len
    npy = data[start : start + info.file_size]
    assert npy.startswith(b"\x93NUMPY")
    header_len = int.from_bytes(npy[8:10], "little")  # npy format 1.0
    return start + 10 + header_len, start + info.file_size


@pytest.mark.parametrize("member", ["f32.npy", "i64.npy", "__meta__.npy"])
def test_one_flipped_byte_in_an_array_region_is_refused_naming_the_file(tmp_path, member):
    path = tmp_path / "state.npz"
    checkpoint.save(path, _arrays(), META)
    data = bytearray(path.read_bytes())
    start, end = _array_region(bytes(data), member)
    assert end > start
    for pos in (start, (start + end) // 2, end - 1):
        damaged = bytearray(data)
        damaged[pos] ^= 0x01
        path.write_bytes(bytes(damaged))
        with pytest.raises(CheckpointError, match="state.npz"):
            checkpoint.load(path)


def test_flipped_byte_without_the_zip_crc_is_caught_by_the_sha256(tmp_path):
    # The same damage, but the zip's own CRC is recomputed (as a rewritten archive would):
    # only the checkpoint's SHA-256 of the arrays can tell.
    path = tmp_path / "state.npz"
    arrays = _arrays()
    checkpoint.save(path, arrays, META)
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    f32 = bytearray(members["f32.npy"])
    f32[-1] ^= 0x80
    members["f32.npy"] = bytes(f32)
    _write_npz(path, members)
    with pytest.raises(CheckpointError, match=r"state\.npz.*checksum"):
        checkpoint.load(path)


def test_plain_npz_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "plain.npz"
    np.savez(path, a=np.ones(3), b=np.arange(2))
    with pytest.raises(CheckpointError, match=r"plain\.npz.*metadata"):
        checkpoint.load(path)


def test_not_a_zip_at_all_is_refused(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(b"hello, this is not a checkpoint\n" * 10)
    with pytest.raises(CheckpointError, match="junk.npz"):
        checkpoint.load(path)


def test_other_format_version_is_refused(tmp_path):
    path = tmp_path / "c.npz"
    meta = json.dumps({"format": "yan-swarm-checkpoint/0", "sha256": "x"}).encode()
    _write_npz(path, {"__meta__.npy": _npy_bytes(np.frombuffer(meta, np.uint8))})
    with pytest.raises(CheckpointError, match=r"c\.npz.*format"):
        checkpoint.load(path)


def test_metadata_that_is_not_json_is_refused(tmp_path):
    path = tmp_path / "c.npz"
    _write_npz(path, {"__meta__.npy": _npy_bytes(np.frombuffer(b"\xff{not json", np.uint8))})
    with pytest.raises(CheckpointError, match=r"c\.npz.*JSON"):
        checkpoint.load(path)


def test_metadata_json_that_is_not_an_object_is_refused(tmp_path):
    path = tmp_path / "c.npz"
    _write_npz(path, {"__meta__.npy": _npy_bytes(np.frombuffer(b"[1, 2]", np.uint8))})
    with pytest.raises(CheckpointError, match=r"c\.npz"):
        checkpoint.load(path)


def test_metadata_member_without_npy_header_is_refused(tmp_path):
    path = tmp_path / "c.npz"
    meta = json.dumps({"format": checkpoint.FORMAT, "sha256": "x"}).encode()
    _write_npz(path, {"__meta__": meta})
    with pytest.raises(CheckpointError, match=r"c\.npz"):
        checkpoint.load(path)


class _Boom:
    """Unpickling an instance would create `marker` (open(marker, "w"))."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("member", ["evil.npy", "__meta__.npy", "f32.npy"])
def test_pickled_object_array_member_is_never_unpickled(tmp_path, member):
    marker = tmp_path / "pwned"
    evil = _npy_bytes(np.array([_Boom(marker), 1], dtype=object), allow_pickle=True)
    # sanity: this member really runs code when loaded with pickles allowed
    np.load(io.BytesIO(evil), allow_pickle=True)
    assert marker.exists()
    marker.unlink()

    path = tmp_path / "state.npz"
    checkpoint.save(path, {"f32": np.ones(3, np.float32)}, {"a": 1})
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members[member] = evil
    _write_npz(path, members)

    with pytest.raises(CheckpointError, match="state.npz"):
        checkpoint.load(path)
    assert not marker.exists()


# ---- the learner's state ------------------------------------------------------------------------

K, OBS, N_CLASSES = 2, 5, 3
MODEL = {"d_model": 16, "channels": 2, "layers": 1, "ffn_mult": 1, "slope_window": 2}
LEARN = {"batch": 4, "window": 3, "history": 8, "replay": 12, "lr": 1e-2}


def _learner(seed: int, model: dict | None = None, **learn) -> OnlineLearner:
    return OnlineLearner(
        ModelConfig(**(model or MODEL)),
        LearnConfig(**{**LEARN, **learn}),
        K,
        OBS,
        N_CLASSES,
        seed,
    )


def _drive(learner: OnlineLearner, rng: np.random.Generator, ticks: range) -> list:
    """act every tick, late labels for some earlier ticks, a learning step every other tick;
    returns everything the learner answered."""
    out: list = []
    for t in ticks:
        out.append(("act", learner.act(t, rng.standard_normal((K, OBS)).astype(np.float32))))
        back = rng.integers(0, 4, size=3)
        labels = np.stack([rng.integers(0, K, 3), t - back, rng.integers(0, N_CLASSES, 3)], axis=1)
        learner.add_labels(labels[labels[:, 1] >= 0])
        if t % 2 == 1:
            out.append(("learn", learner.learn_step()))
    out.append(("examples", learner.take_example_counts()))
    out.append(("dropped", learner.labels_dropped))
    return out


def _assert_same_outputs(a: list, b: list) -> None:
    assert len(a) == len(b)
    for (kind_a, x), (kind_b, y) in zip(a, b, strict=True):
        assert kind_a == kind_b
        if kind_a == "learn":
            assert set(x) == set(y)
            for key in x:
                np.testing.assert_array_equal(x[key], y[key], err_msg=key)  # nan == nan here
        else:
            np.testing.assert_array_equal(x, y, err_msg=kind_a)


def _checkpoint_round_trip(tmp_path, learner: OnlineLearner):
    arrays, scalars = learner_state(learner)
    path = tmp_path / "learner.npz"
    checkpoint.save(path, {f"learner.{k}": v for k, v in arrays.items()}, {"learner": scalars})
    got, meta = checkpoint.load(path)
    return {k[len("learner.") :]: v for k, v in got.items()}, meta["learner"]


VARIANTS = {
    "reservoir": {},
    "ewc": {"ewc_lambda": 5.0, "consolidate_every": 2, "fisher_batch": 4},
    "recent": {"replay_mode": "none"},
    "recent+ewc": {"replay_mode": "none", "ewc_lambda": 5.0, "consolidate_every": 3},
    "ssl+sgd": {"ssl_weight": 0.5, "ssl_batch": 2, "optimizer": "sgd"},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_restored_learner_continues_exactly_like_the_original(tmp_path, variant):
    learn = VARIANTS[variant]
    a = _learner(seed=1, **learn)
    first = _drive(a, np.random.default_rng(10), range(0, 14))
    assert any(k == "learn" and r["trained"].any() for k, r in first)
    if a.ewc is not None:
        assert int(a.ewc.consolidations.sum()) > 0  # the EWC state is not trivial
    if a.recent is not None:
        assert int(a.recent.count.sum()) > 0

    arrays, scalars = _checkpoint_round_trip(tmp_path, a)
    b = _learner(seed=2, **learn)  # another seed: everything must come from the checkpoint
    assert not torch.equal(a.population.flat, b.population.flat)
    load_learner_state(b, arrays, scalars)
    assert torch.equal(a.population.flat, b.population.flat)

    # the same further life: identical answers, losses and weights
    out_a = _drive(a, np.random.default_rng(20), range(20, 34))
    out_b = _drive(b, np.random.default_rng(20), range(20, 34))
    _assert_same_outputs(out_a, out_b)
    assert any(k == "learn" and np.isfinite(r["loss"]).any() for k, r in out_a)
    if a.ewc is not None:
        assert any(k == "learn" and r["consolidated"].any() for k, r in out_a)
        assert torch.equal(a.ewc.fisher, b.ewc.fisher)
        assert torch.equal(a.ewc.anchor, b.ewc.anchor)
    assert torch.equal(a.population.flat, b.population.flat)
    assert torch.equal(a.population.optimizer.m, b.population.optimizer.m)
    assert torch.equal(a.population.optimizer.t, b.population.optimizer.t)
    final_a, scalars_a = learner_state(a)
    final_b, scalars_b = learner_state(b)
    assert scalars_a == scalars_b
    for key in final_a:
        np.testing.assert_array_equal(final_a[key], final_b[key], err_msg=key)


def test_restored_learner_with_selective_ffn_continues_exactly(tmp_path):
    # the router's exploration noise has its own torch Generator: it must be restored too
    model = {**MODEL, "ffn_mult": 2, "ffn_groups": 4, "ffn_top_k": 2}
    a = _learner(seed=1, model=model)
    _drive(a, np.random.default_rng(10), range(0, 10))
    arrays, scalars = _checkpoint_round_trip(tmp_path, a)
    b = _learner(seed=2, model=model)
    load_learner_state(b, arrays, scalars)
    _assert_same_outputs(
        _drive(a, np.random.default_rng(20), range(20, 30)),
        _drive(b, np.random.default_rng(20), range(20, 30)),
    )
    assert torch.equal(a.population.flat, b.population.flat)


def test_without_the_checkpoint_the_two_learners_differ():
    # the control of the test above: the comparison can fail
    a, b = _learner(seed=1), _learner(seed=2)
    out_a = _drive(a, np.random.default_rng(20), range(20, 34))
    out_b = _drive(b, np.random.default_rng(20), range(20, 34))
    assert not torch.equal(a.population.flat, b.population.flat)
    with pytest.raises(AssertionError):
        _assert_same_outputs(out_a, out_b)


def test_state_scalars_are_json_and_hold_the_rng(tmp_path):
    a = _learner(seed=1)
    _drive(a, np.random.default_rng(0), range(6))
    arrays, scalars = learner_state(a)
    assert json.loads(json.dumps(scalars)) == scalars
    assert scalars["n"] == 6 and scalars["learn_steps"] == 3
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in arrays.values())


def test_loading_a_larger_model_raises_value_error_naming_the_array(tmp_path):
    a = _learner(seed=1)
    _drive(a, np.random.default_rng(0), range(4))
    arrays, scalars = _checkpoint_round_trip(tmp_path, a)
    bigger = _learner(seed=1, model={**MODEL, "d_model": 32})
    with pytest.raises(ValueError, match="flat"):
        load_learner_state(bigger, arrays, scalars)


def test_loading_another_window_raises_value_error_naming_the_array(tmp_path):
    a = _learner(seed=1)
    _drive(a, np.random.default_rng(0), range(4))
    arrays, scalars = _checkpoint_round_trip(tmp_path, a)
    other = _learner(seed=1, window=4)
    with pytest.raises(ValueError, match="obs"):
        load_learner_state(other, arrays, scalars)


def test_restored_random_trainable_subset_follows_the_checkpoint(tmp_path):
    learn = {"trainable": "random", "trainable_fraction": 0.3}
    a = _learner(seed=1, **learn)
    _drive(a, np.random.default_rng(10), range(0, 14))
    arrays, scalars = _checkpoint_round_trip(tmp_path, a)
    b = _learner(seed=2, **learn)
    load_learner_state(b, arrays, scalars)
    _drive(a, np.random.default_rng(20), range(20, 34))
    _drive(b, np.random.default_rng(20), range(20, 34))
    assert torch.equal(a.population.flat, b.population.flat)


# -- hostile files (issue 18): refused before anything large is allocated or inflated -------


def _rezip(src: Path, dst: Path, *, compress: int = zipfile.ZIP_STORED, patch=None) -> None:
    """Copy checkpoint `src` to `dst` member by member, optionally compressed or with a
    member's bytes changed by `patch(name, data) -> data`."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression=compress) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            zout.writestr(info.filename, patch(info.filename, data) if patch else data)


def test_metadata_is_under_the_checksum(tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    checkpoint.save(path, {"w": np.ones(3, np.float32)}, {"step": 5})

    def tamper(name: str, data: bytes) -> bytes:
        return data.replace(b'"step": 5', b'"step": 6') if name == "__meta__.npy" else data

    _rezip(path, tmp_path / "t.npz", patch=tamper)
    with pytest.raises(checkpoint.CheckpointError, match="do not match their checksum"):
        checkpoint.load(tmp_path / "t.npz")


def test_a_compressed_member_is_refused_uninflated(tmp_path: Path) -> None:
    # a deflate bomb: 64 MB of zeros in ~64 KB; the loader must not inflate it
    path = tmp_path / "c.npz"
    checkpoint.save(path, {"w": np.zeros(16 * 2**20, np.float32)}, {})
    _rezip(path, tmp_path / "z.npz", compress=zipfile.ZIP_DEFLATED)
    assert (tmp_path / "z.npz").stat().st_size < 2**20
    with pytest.raises(checkpoint.CheckpointError, match="'w.npy' is compressed"):
        checkpoint.load(tmp_path / "z.npz")


def test_a_header_claiming_a_huge_shape_is_refused_before_allocation(tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    checkpoint.save(path, {"w": np.zeros((1, 2), np.float32)}, {})

    def huge(name: str, data: bytes) -> bytes:
        if name != "w.npy":
            return data
        # the header is padded with spaces to a 64-byte boundary: grow into the padding
        old, new = b"'shape': (1, 2), }", b"'shape': (1, 68719476736), }"
        start = data.index(old)
        end = data.index(b"\n", start)
        assert end - start >= len(new)
        return data[:start] + new.ljust(end - start) + data[end:]

    _rezip(path, tmp_path / "h.npz", patch=huge)
    with pytest.raises(checkpoint.CheckpointError, match="declares"):
        checkpoint.load(tmp_path / "h.npz")


def test_not_a_regular_file_or_too_large_is_refused_unread(tmp_path: Path) -> None:
    link = tmp_path / "zero.npz"
    link.symlink_to("/dev/zero")
    with pytest.raises(checkpoint.CheckpointError, match="not a regular file"):
        checkpoint.load(link)
    path = tmp_path / "c.npz"
    checkpoint.save(path, {"w": np.zeros(1000, np.float32)}, {})
    with pytest.raises(checkpoint.CheckpointError, match=r"[0-9,]+ bytes, more than 100"):
        checkpoint.load(path, max_bytes=100)


def test_non_finite_weights_are_refused_where_the_caller_asks(tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    checkpoint.save(path, {"learner.pop.w": np.array([1.0, np.nan], np.float32)}, {})
    checkpoint.load(path)  # NaN may be meant (a loss not known yet) ...
    with pytest.raises(checkpoint.CheckpointError, match="'learner.pop.w' holds NaN"):
        checkpoint.load(path, finite=("learner.pop.",))  # ... but not in weights


def test_a_full_disk_keeps_the_previous_checkpoint_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch
) -> None:
    path = tmp_path / "c.npz"
    checkpoint.save(path, {"w": np.ones(3, np.float32)}, {"step": 1})
    before = path.read_bytes()

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    with pytest.raises(checkpoint.CheckpointError, match="No space left on device.*kept"):
        checkpoint.save(path, {"w": np.zeros(3, np.float32)}, {"step": 2})
    assert path.read_bytes() == before
    assert not checkpoint.temp_path(path).exists()

"""Arrays as files of a bundle (format 2): smoke-test vectors and the reference profile's bins as
``.npy`` files, listed in the manifest's file table like the model, so the release signature covers
them. docs/bundle-format.md §2.3-§2.4 is the spec.

Pure: bytes in, arrays or a :class:`ReferenceProfile` out. Readers take the files a verifier has
already checked against the signed manifest (size and sha256, a bounded inflate), and refuse a file
whose ``.npy`` header is not exactly the dtype and shape the manifest declares, or whose length is not
that header plus the declared data -- never pickled objects, Fortran order or big-endian data.
Format 1 (nested JSON lists in the manifest) is read here too, so callers see one form.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from edgefleet.protocol.drift import ReferenceProfile
from edgefleet.protocol.errors import VerificationError, first_problem
from edgefleet.protocol.manifest import ArrayFile, BundleManifest, GeneratedArray, ProfileFiles, SmokeTest

SMOKE_INPUTS = "smoke/inputs/"
SMOKE_EXPECTED = "smoke/expected/"
PROFILE_DIR = "profile/"
RESERVED = ("smoke/", PROFILE_DIR)
"""Path prefixes the builder writes; extra files may not use them."""
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_MAX_STEM = 64
STORED_INPUTS_MIN_BUDGET = 16 * 1024
STORED_INPUTS_MODEL_SHARE = 0.02
"""Smoke inputs are stored (the real sample rows) while they take at most max(16 KiB, 2 % of the model)
bytes in all; wider ones (images for a small model) are generated on the device (:class:`GeneratedArray`)."""
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class SmokeVectors:
    """A bundle's smoke test as arrays, whatever the format that stored it."""

    inputs: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]
    atol: float
    rtol: float


# --------------------------------------------------------------------------- writing

def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` as a ``.npy`` file: C order, little-endian, no pickle (deterministic bytes)."""
    a = np.ascontiguousarray(array)
    if a.dtype.hasobject:
        raise ValueError("object arrays cannot be stored in a bundle")
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _ref(path: str, array: np.ndarray) -> ArrayFile:
    return ArrayFile(file=path, dtype=array.dtype.name, shape=list(array.shape))


def _stems(names: list[str]) -> dict[str, str]:
    """A file stem per tensor name: the name with unsafe characters replaced by ``_`` (tensor names
    such as ``serving_default_x:0`` are not paths), made unique by its index where two collide."""
    stems: dict[str, str] = {}
    for i, name in enumerate(names):
        stem = _UNSAFE.sub("_", name)[:_MAX_STEM].strip(".") or f"t{i}"
        stems[name] = stem if stem not in stems.values() else f"{stem}-{i}"
    return stems


def splitmix64(seed: int, n: int) -> np.ndarray:
    """The first ``n`` outputs of splitmix64 seeded with ``seed`` (uint64; vectorised, portable)."""
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + np.arange(1, n + 1, dtype=np.uint64) * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        out: np.ndarray = z ^ (z >> np.uint64(31))
    return out


def generate(spec: GeneratedArray) -> np.ndarray:
    """The values a :class:`GeneratedArray` stands for: ``u = (x >> 11) / 2**53`` per splitmix64 output
    ``x``; floats ``low + u * (high - low)``, integers and bools ``floor(low) + floor(u * span)`` with
    ``span = floor(high) - floor(low) + 1``; cast to ``dtype`` in C order."""
    n = int(np.prod(spec.shape, dtype=np.int64))
    u = (splitmix64(spec.seed, n) >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
    dtype = np.dtype(spec.dtype)
    if dtype.kind == "f":
        values = spec.low + u * (spec.high - spec.low)
    else:
        lo = np.floor(spec.low)
        values = lo + np.floor(u * (np.floor(spec.high) - lo + 1))
    return values.astype(dtype).reshape(spec.shape)


def _generated(array: np.ndarray, seed: int) -> GeneratedArray:
    finite = array[np.isfinite(array)] if array.dtype.kind == "f" else array
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    return GeneratedArray(seed=seed, low=low, high=high, dtype=array.dtype.name, shape=list(array.shape))


def smoke_files(inputs: Mapping[str, np.ndarray], run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], *,
                model_bytes: int, atol: float, rtol: float) -> tuple[dict[str, bytes], SmokeTest, SmokeVectors]:
    """The ``.npy`` files of a smoke test, the manifest entry that names them and the vectors.

    ``inputs`` are the sample rows; ``run`` computes outputs with the device's runtime code. When the
    rows take more than max(16 KiB, 2 % of ``model_bytes``), every input is replaced by values generated
    in the rows' range (stored as a seed, not as values): the vectors then stay a small share of the
    bundle however wide the input is."""
    rows = {name: np.asarray(v) for name, v in inputs.items()}
    budget = max(STORED_INPUTS_MIN_BUDGET, STORED_INPUTS_MODEL_SHARE * model_bytes)
    files: dict[str, bytes] = {}
    declared: dict[str, ArrayFile | GeneratedArray] = {}
    if sum(a.nbytes for a in rows.values()) > budget:
        for i, (name, a) in enumerate(rows.items()):
            declared[name] = spec = _generated(a, seed=i)
            rows[name] = generate(spec)
    else:
        stems = _stems(list(rows))
        for name, a in rows.items():
            path = f"{SMOKE_INPUTS}{stems[name]}.npy"
            files[path] = npy_bytes(a)
            declared[name] = _ref(path, a)
    outputs = {name: np.asarray(v) for name, v in run(rows).items()}
    expected: dict[str, ArrayFile] = {}
    stems = _stems(list(outputs))
    for name, a in outputs.items():
        path = f"{SMOKE_EXPECTED}{stems[name]}.npy"
        files[path] = npy_bytes(a)
        expected[name] = _ref(path, a)
    test = SmokeTest(inputs=dict(declared), expected=dict(expected), atol=atol, rtol=rtol)
    return files, test, SmokeVectors(inputs=rows, expected=outputs, atol=atol, rtol=rtol)


def profile_files(profile: ReferenceProfile) -> tuple[dict[str, bytes], ProfileFiles]:
    """The ``.npy`` files of a reference profile and the manifest entry that names them (the profile
    without its per-bin arrays)."""
    sizes = np.asarray([len(f.probs) for f in profile.features], dtype=np.int32)
    width = int(sizes.max()) if len(sizes) else 1
    edges = np.full((len(sizes), width - 1), np.inf, dtype=np.float32)
    probs = np.zeros((len(sizes), width), dtype=np.float64)
    for i, f in enumerate(profile.features):
        edges[i, : len(f.edges)] = f.edges
        probs[i, : len(f.probs)] = f.probs
    regimes = np.zeros((len(profile.regimes), len(sizes), width), dtype=np.float64)
    for r, regime in enumerate(profile.regimes):
        for i, row in enumerate(regime.probs):
            regimes[r, i, : len(row)] = row
    header = profile.model_dump(mode="json", exclude={"features"})
    for regime_json in header["regimes"]:
        del regime_json["probs"]
    arrays: dict[str, np.ndarray] = {"bins": sizes, "edges": edges, "probs": probs, "regime_probs": regimes}
    files = {f"{PROFILE_DIR}{name}.npy": npy_bytes(a) for name, a in arrays.items()}
    refs = {name: _ref(f"{PROFILE_DIR}{name}.npy", a) for name, a in arrays.items()}
    return files, ProfileFiles(profile=header, **refs)


# --------------------------------------------------------------------------- reading

def read_npy(data: bytes, ref: ArrayFile) -> np.ndarray:
    """The array of a ``.npy`` file, refused unless its header declares exactly ``ref``'s dtype and
    shape and the data that follows is exactly that many bytes."""
    where = ref.file
    buf = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buf)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(buf)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(buf)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except ValueError as exc:
        raise VerificationError(f"not a valid .npy file: {exc}", where=where) from None
    want = np.dtype(ref.dtype).newbyteorder("<")
    if dtype.hasobject or fortran or dtype != want or list(shape) != ref.shape:
        raise VerificationError(f".npy header says {dtype.str} {list(shape)}{' (Fortran order)' if fortran else ''}, "
                                f"the manifest {want.str} {ref.shape}", where=where,
                                hint="the bundle was built by a broken writer: rebuild it")
    start = buf.tell()
    if len(data) - start != int(np.prod(ref.shape, dtype=np.int64)) * want.itemsize:
        raise VerificationError(f".npy data is {len(data) - start} bytes, {ref.dtype} {ref.shape} needs "
                                f"{int(np.prod(ref.shape, dtype=np.int64)) * want.itemsize}", where=where)
    array: np.ndarray = np.frombuffer(data, dtype=want, offset=start).reshape(ref.shape)
    return array


def _file(files: Mapping[str, bytes], ref: ArrayFile) -> bytes:
    if ref.file not in files:  # the manifest's validator already requires it to be listed
        raise VerificationError(f"array file {ref.file!r} is not in the bundle", where=ref.file)
    return files[ref.file]


def load_smoke(manifest: BundleManifest, files: Mapping[str, bytes]) -> SmokeVectors | None:
    """The smoke test of a verified bundle (either format)."""
    test = manifest.smoke_test
    if test is None:
        return None

    def arrays(values: Mapping[str, list[Any] | ArrayFile | GeneratedArray],
               dtype: type | None) -> dict[str, np.ndarray]:
        return {name: (read_npy(_file(files, v), v) if isinstance(v, ArrayFile)
                       else generate(v) if isinstance(v, GeneratedArray) else np.asarray(v, dtype=dtype))
                for name, v in values.items()}

    # format 1 lists: inputs take the model's dtypes when fed, expected values are compared in float64
    return SmokeVectors(inputs=arrays(test.inputs, None), expected=arrays(test.expected, np.float64),
                        atol=test.atol, rtol=test.rtol)


def load_profile(manifest: BundleManifest, files: Mapping[str, bytes]) -> ReferenceProfile | None:
    """The reference profile of a verified bundle (either format)."""
    pf = manifest.profile_files
    if pf is None:
        return manifest.reference_profile
    sizes, edges, probs, regimes = (read_npy(_file(files, ref), ref) for ref in pf.arrays())
    n, width = len(sizes), (probs.shape[1] if probs.ndim == 2 else 0)
    if (sizes.ndim != 1 or probs.shape != (n, width) or edges.shape != (n, max(width - 1, 0))
            or regimes.ndim != 3 or regimes.shape[1:] != (n, width)
            or any(not 1 <= int(s) <= width for s in sizes)):
        raise VerificationError(f"profile arrays do not fit together: bins {list(sizes.shape)}, edges "
                                f"{list(edges.shape)}, probs {list(probs.shape)}, regimes {list(regimes.shape)}",
                                where="manifest.profile_files")
    header = dict(pf.profile)
    header["features"] = [{"edges": edges[i, : int(s) - 1].tolist(), "probs": probs[i, : int(s)].tolist()}
                          for i, s in enumerate(sizes)]
    listed = header.get("regimes") or []
    if (not isinstance(listed, list) or len(listed) != len(regimes)
            or not all(isinstance(r, dict) for r in listed)):
        raise VerificationError(f"the profile lists {len(listed) if isinstance(listed, list) else '?'} regimes, "
                                f"its arrays hold {len(regimes)}", where="manifest.profile_files.profile.regimes")
    header["regimes"] = [{**r, "probs": [regimes[k, i, : int(s)].tolist() for i, s in enumerate(sizes)]}
                         for k, r in enumerate(listed)]
    try:
        return ReferenceProfile.model_validate(header)
    except ValidationError as exc:
        loc, problem = first_problem(exc)
        raise VerificationError(f"reference profile is invalid: {problem}",
                                where=f"manifest.profile_files.profile.{loc}") from None

"""A party's own data from its own file, checked against what every party agreed on.

An organisation brings its records as CSV (a header row, a label column, an optional id
column, every other column a feature), Parquet (the same columns) or NPZ (arrays ``x``,
``y`` and optionally ``ids``). The study parameters say what all parties must agree on
(:class:`DataSpec`): the feature count (and names, when files carry them), the classes,
the label column and the preprocessing, as stated constants. :func:`load_party_data`
refuses a file that does not match, before any message is sent, with an error naming the
party, the file and what differs.

:func:`split_to_files` writes a built-in data set as one such file per party (IID or
Dirichlet label skew) with its ``study.json``, so a user can try the whole path.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import train_test_split

FORMATS = (".csv", ".npz", ".parquet")
STUDY_FILE = "study.json"


class DataFileError(ValueError):
    """A party's data file, or the study's description of the data, is not usable."""


@dataclass(frozen=True)
class DataSpec:
    """What every party's data must be: ``features`` columns (named ``feature_names`` in
    CSV/Parquet files, when given), integer labels in ``0..classes-1`` under
    ``label_column``, and the preprocessing ``(x - shift) / scale`` with the study's
    constants (one number for every feature, or one per feature)."""

    features: int
    classes: int
    label_column: str = "label"
    id_column: str | None = None
    feature_names: tuple[str, ...] | None = None
    shift: float | tuple[float, ...] = 0.0
    scale: float | tuple[float, ...] = 1.0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataSpec:
        if not isinstance(d, dict):
            raise DataFileError(f"the study's data description must be an object, got {d!r}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise DataFileError(f"unknown data description key(s) {', '.join(unknown)}; "
                                f"known: {', '.join(sorted(known))}")
        for key in ("features", "classes"):
            if not isinstance(d.get(key), int) or isinstance(d.get(key), bool):
                raise DataFileError(f"the data description needs '{key}' as an integer, "
                                    f"got {d.get(key)!r}")
        names = d.get("feature_names")
        spec = cls(d["features"], d["classes"], str(d.get("label_column", "label")),
                   d.get("id_column"), tuple(map(str, names)) if names is not None else None,
                   _constants(d.get("shift", 0.0), "shift"), _constants(d.get("scale", 1.0), "scale"))
        spec.check()
        return spec

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def check(self) -> None:
        if self.features < 1 or self.classes < 2:
            raise DataFileError(f"the data needs >= 1 feature and >= 2 classes, the study says "
                                f"{self.features} and {self.classes}")
        if self.feature_names is not None and len(self.feature_names) != self.features:
            raise DataFileError(f"the study names {len(self.feature_names)} features but says "
                                f"there are {self.features}")
        for what in ("shift", "scale"):
            v = getattr(self, what)
            if isinstance(v, tuple) and len(v) != self.features:
                raise DataFileError(f"the study's '{what}' has {len(v)} values for "
                                    f"{self.features} features")
        if np.any(np.asarray(self.scale) == 0):
            raise DataFileError("the study's 'scale' has a zero: features would divide by it")

    def preprocess(self, x: np.ndarray) -> np.ndarray:
        return ((x - np.asarray(self.shift)) / np.asarray(self.scale)).astype(np.float32)


def _constants(v: Any, what: str) -> float | tuple[float, ...]:
    values = v if isinstance(v, list | tuple) else [v]
    if not all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
               for x in values):
        raise DataFileError(f"the study's '{what}' must be a finite number or a list of them")
    return tuple(float(x) for x in values) if isinstance(v, list | tuple) else float(v)


@dataclass(frozen=True)
class LocalData:
    """One party's records, preprocessed as the study says; ``ids`` name its rows."""

    x: np.ndarray
    y: np.ndarray
    ids: np.ndarray
    source: Path
    classes: int

    def __len__(self) -> int:
        return len(self.y)

    def split(self, test_fraction: float = 0.25, seed: int = 0
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_train, y_train, x_test, y_test): the party's own held-out part, stratified
        when every class has two rows (a split of public-seeded order, not a secret)."""
        counts = np.bincount(self.y, minlength=self.classes)
        stratify = self.y if counts[counts > 0].min() >= 2 else None
        xtr, xte, ytr, yte = train_test_split(self.x, self.y, test_size=test_fraction,
                                              random_state=seed, stratify=stratify)
        t = torch.as_tensor
        return (t(xtr, dtype=torch.float32), t(ytr, dtype=torch.long),
                t(xte, dtype=torch.float32), t(yte, dtype=torch.long))


def _read(path: Path, spec: DataSpec, labelled: bool = True
          ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, list[str] | None]:
    """(features, labels or None, ids, feature column names or None) as stored."""
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = [k for k in ("x", "y")[:2 if labelled else 1] if k not in z.files]
                if missing:
                    raise DataFileError(f"has no array {' or '.join(missing)} (an NPZ party file "
                                        f"holds x, y and optionally ids; it has {z.files})")
                x, y = z["x"], (z["y"] if "y" in z.files else None)
                ids = z["ids"] if "ids" in z.files else np.arange(len(y))
        except (OSError, ValueError) as e:
            raise DataFileError(f"is not a readable NPZ file ({e})") from None
        if x.ndim != 2:
            raise DataFileError(f"x has shape {x.shape}; expected (rows, features)")
        return x, y, (ids if y is not None or "ids" in z.files else np.arange(len(x))), None
    import pandas as pd

    try:
        frame = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise DataFileError(f"is not a readable {path.suffix[1:].upper()} file ({e})") from None
    except Exception as e:  # pyarrow's own errors for a broken Parquet file
        raise DataFileError(f"is not a readable {path.suffix[1:].upper()} file ({e})") from None
    if spec.label_column not in frame.columns and labelled:
        raise DataFileError(f"has no label column '{spec.label_column}' (columns: "
                            f"{', '.join(map(str, frame.columns[:8]))}{', ...' if frame.shape[1] > 8 else ''});"
                            " name it in the study's label_column or with --label-column")
    if spec.id_column is not None and spec.id_column not in frame.columns:
        raise DataFileError(f"has no id column '{spec.id_column}'")
    ids = frame.pop(spec.id_column).to_numpy() if spec.id_column else np.arange(len(frame))
    y = frame.pop(spec.label_column).to_numpy() if spec.label_column in frame.columns else None
    names = [str(c) for c in frame.columns]
    bad = [c for c in names if not pd.api.types.is_numeric_dtype(frame[c])]
    if bad:
        raise DataFileError(f"has non-numeric feature column(s) {', '.join(bad[:5])}: encode "
                            "them as numbers (or drop them) in every party's file")
    return frame.to_numpy(dtype=np.float64), y, ids, names


def load_party_data(path: str | Path, spec: DataSpec, party: str, labelled: bool = True
                    ) -> LocalData:
    """Read ``party``'s file and check it against the study; preprocess it. Unlabelled
    (``labelled=False``: a querying party's queries) the label column is optional; rows
    without one get label -1 (a label there is used only to score what was learned)."""
    path = Path(path)
    where = f"party '{party}': {'data' if labelled else 'queries'} file {path}"
    if path.suffix not in FORMATS:
        raise DataFileError(f"{where}: format '{path.suffix}' is not supported; use "
                            f"{', '.join(FORMATS)}")
    if not path.is_file():
        raise DataFileError(f"{where} does not exist")
    try:
        x, y, ids, names = _read(path, spec, labelled)
        _check(x, y, names, spec, minimum=4 if labelled else 1)
    except DataFileError as e:
        raise DataFileError(f"{where}: {e}") from None
    y = np.full(len(x), -1, dtype=np.int64) if y is None else y.astype(np.int64)
    return LocalData(spec.preprocess(x), y, ids, path, spec.classes)


def _check(x: np.ndarray, y: np.ndarray | None, names: list[str] | None, spec: DataSpec,
           minimum: int = 4) -> None:
    if names is not None and spec.feature_names is not None and names != list(spec.feature_names):
        missing = [n for n in spec.feature_names if n not in names]
        extra = [n for n in names if n not in spec.feature_names]
        raise DataFileError("its feature columns differ from the study's: "
                            + (f"missing {', '.join(missing[:5])}; " if missing else "")
                            + (f"unexpected {', '.join(extra[:5])}; " if extra else "")
                            + ("" if missing or extra else "same names in another order; ")
                            + "every party's file needs the study's columns")
    if x.shape[1] != spec.features:
        raise DataFileError(f"has {x.shape[1]} feature columns, the study says {spec.features}")
    if len(x) < minimum:
        raise DataFileError(f"has {len(x)} rows; at least {minimum} needed"
                            + (" (training and held-out)" if minimum > 1 else ""))
    if not np.issubdtype(x.dtype, np.number) or not np.all(np.isfinite(x)):
        row = int(np.argwhere(~np.isfinite(x.astype(np.float64)))[0][0])
        raise DataFileError(f"row {row} has a missing or non-finite feature value")
    if y is None:
        return
    labels = np.asarray(y)
    if not np.issubdtype(labels.dtype, np.number) or not np.all(np.mod(labels, 1) == 0):
        raise DataFileError(f"labels must be integers 0..{spec.classes - 1}; got e.g. {labels[:3]}")
    outside = sorted(set(labels.astype(np.int64).tolist()) - set(range(spec.classes)))
    if outside:
        raise DataFileError(f"has label(s) {outside[:5]} outside 0..{spec.classes - 1} "
                            f"(the study has {spec.classes} classes)")


# --------------------------------------------------------------------------- writing files

def write_party_file(path: str | Path, x: np.ndarray, y: np.ndarray,
                     feature_names: list[str], ids: np.ndarray | None = None,
                     label_column: str = "label") -> Path:
    path = Path(path)
    if path.suffix not in FORMATS:
        raise DataFileError(f"cannot write '{path.suffix}'; use {', '.join(FORMATS)}")
    ids = np.arange(len(y)) if ids is None else ids
    if path.suffix == ".npz":
        np.savez(path, x=x, y=y, ids=ids)
        return path
    import pandas as pd

    frame = pd.DataFrame(x, columns=feature_names)
    frame.insert(0, "id", ids)
    frame[label_column] = y
    frame.to_csv(path, index=False) if path.suffix == ".csv" else frame.to_parquet(path, index=False)
    return path


def split_to_files(dataset: str, parties: list[str], out_dir: str | Path, *, how: str = "iid",
                   alpha: float = 0.5, seed: int = 0, fmt: str = "csv", queries: int = 0,
                   querier: str | None = None) -> dict[str, Path]:
    """Write a built-in data set's training split as one raw file per party (``how``: iid,
    or noniid = Dirichlet(alpha) label skew), and ``study.json``: the spec whose constants
    give the built-in preprocessing. With ``queries``, that many rows are first held out
    as ``querier``'s unlabelled queries (``<querier>-queries.<fmt>``, no label column).
    Returns {party: file} (and {"<querier>-queries": file})."""
    from .datasets import partition, raw_table

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    raw = raw_table(dataset, seed=seed)
    names = [f"f{i}" for i in range(raw.x_train.shape[1])]
    files = {}
    rest = np.arange(len(raw.y_train))
    if queries:
        if querier not in parties or not 0 < queries < len(rest) // 2:
            raise DataFileError(f"queries need a querier among the parties and 0 < queries < "
                                f"{len(rest) // 2}; got {querier!r}, {queries}")
        order = np.random.default_rng(seed).permutation(rest)   # a public split, not a secret
        pool, rest = np.sort(order[:queries]), np.sort(order[queries:])
        files[f"{querier}-queries"] = _write_unlabelled(out / f"{querier}-queries.{fmt}",
                                                        raw.x_train[pool], names, pool)
    shards = partition(raw.y_train[rest], len(parties), how, seed=seed, alpha=alpha)
    for name, part in zip(parties, shards, strict=True):
        idx = rest[part]
        files[name] = write_party_file(out / f"{name}.{fmt}", raw.x_train[idx], raw.y_train[idx],
                                       names, ids=idx)
    spec = DataSpec(raw.x_train.shape[1], raw.classes, "label", "id", tuple(names),
                    raw.shift, raw.scale)
    study = spec.to_dict()   # exactly the protocols' 'data' parameter
    (out / STUDY_FILE).write_text("{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}"
                                                     for k, v in study.items()) + "\n}\n")
    return files


def _write_unlabelled(path: Path, x: np.ndarray, names: list[str], ids: np.ndarray) -> Path:
    if path.suffix == ".npz":
        np.savez(path, x=x, ids=ids)
        return path
    import pandas as pd

    frame = pd.DataFrame(x, columns=names)
    frame.insert(0, "id", ids)
    frame.to_csv(path, index=False) if path.suffix == ".csv" else frame.to_parquet(path, index=False)
    return path


def read_study(directory: str | Path) -> DataSpec:
    path = Path(directory) / STUDY_FILE
    if not path.is_file():
        raise DataFileError(f"{path} is missing: it says what every party's data must be, e.g. "
                            '{"features": 64, "classes": 10}; `confidant split-data` writes one')
    try:
        d = json.loads(path.read_text())
    except ValueError as e:
        raise DataFileError(f"{path} is not valid JSON ({e})") from None
    return DataSpec.from_dict(d)


def party_file(directory: str | Path, party: str, suffix: str = "", required: bool = True
               ) -> Path | None:
    """DIR/<party><suffix>.csv|.npz|.parquet: exactly one must exist (or none, when not
    ``required``)."""
    stem = f"{party}{suffix}"
    found = [Path(directory) / f"{stem}{ext}" for ext in FORMATS
             if (Path(directory) / f"{stem}{ext}").is_file()]
    if len(found) > 1 or (required and not found):
        raise DataFileError(f"party '{party}': expected one file {stem}.csv, .npz or "
                            f".parquet in {directory}, found {len(found)}")
    return found[0] if found else None

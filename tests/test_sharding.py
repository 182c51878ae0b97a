"""`metapl shard` for big sets (docs/scale.md#shard): the source is read lazily and shuffled in blocks, the shards
are the same bytes for any worker count, a killed run continues to an uninterrupted run's shards, a grown source
gets new shards without the finished ones being rewritten, unreadable files are left out with --skip-bad, and no
failure removes a finished shard."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from cli_helpers import cli, one_line_error, snapshot, succeeds
from fake_datasets import write_unlabeled_folder

from metapl.commands.shard import MANIFEST, Settings, plan_blocks, shard_items
from metapl.parts.data import folders
from metapl.parts.data.folders import iter_unlabeled_source, unlabeled_source


def _tars(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tar"))}


def _members(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return [m.name for m in tar.getmembers()]


def _records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / MANIFEST).read_text().splitlines()]


# ------------------------------------------------------------------------------------------------ reading the source
def test_the_walk_keeps_rglobs_order_and_lists_one_folder_at_a_time(tmp_path, monkeypatch):
    for name in ["a/z.jpg", "a/Z.PNG", "a.b/c.jpg", "a.jpg", "a0.jpg", ".h.jpg", "b/c/d/e.webp", "b/notes.txt"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "b", target_is_directory=True)  # not followed, as rglob does not
    expected = sorted(p for p in tmp_path.rglob("*") if p.suffix.lower() in folders.IMAGE_SUFFIXES and p.is_file())
    assert unlabeled_source(tmp_path) == [str(p) for p in expected]
    assert [entry for entry, _ in iter_unlabeled_source(tmp_path)][:3] == [".h.jpg", "a/Z.PNG", "a/z.jpg"]

    listed = []
    scandir = os.scandir

    def listing_scandir(path):
        listed.append(Path(path).name)
        return scandir(path)

    monkeypatch.setattr(folders.os, "scandir", listing_scandir)
    walk = iter_unlabeled_source(tmp_path)
    assert next(walk)[0] == ".h.jpg" and len(listed) == 1  # the first image comes before any sub-folder is listed
    assert next(walk)[0] == "a/Z.PNG" and listed == [tmp_path.name, "a"]


def test_a_csv_is_read_row_by_row(tmp_path):
    (tmp_path / "list.csv").write_text("path\n" + "".join(f"img{i}.jpg\n" for i in range(3)) + "\nmissing.jpg\n")
    for i in range(3):
        (tmp_path / f"img{i}.jpg").write_bytes(b"x")
    rows = iter_unlabeled_source(tmp_path / "list.csv")
    assert [next(rows)[0] for _ in range(3)] == ["img0.jpg", "img1.jpg", "img2.jpg"]  # before the bad row is read
    with pytest.raises(folders.DataError, match="line 6: image 'missing.jpg' does not exist"):
        next(rows)


def test_the_plan_streams_an_endless_source_and_shuffles_within_blocks():
    """The planner takes one block at a time: it works on a source that never ends, so it never holds the list."""
    settings = Settings(shard_size=4, shuffle=True, seed=3, buffer=10)  # blocks of 12: three shards each
    endless = ((f"img{i}.jpg", f"/x/img{i}.jpg") for i in itertools.count())
    blocks = list(itertools.islice(plan_blocks(endless, settings, [], Path("src")), 3))
    assert [(b.block, b.start, b.count, b.first_shard) for b, _, _ in blocks] == [
        (0, 0, 12, 0),
        (1, 12, 12, 3),
        (2, 24, 12, 6),
    ]
    for block, taken, new in blocks:
        shards = list(shard_items(block, taken, settings))
        assert new and [len(s) for s in shards] == [4, 4, 4]
        keys = [key for shard in shards for key, _, _ in shard]
        assert keys == list(range(block.start, block.start + 12))  # running numbers in the output's order
        names = sorted(int(entry[3:-4]) for shard in shards for _, entry, _ in shard)
        assert names == list(range(block.start, block.start + 12))  # every image of the block, once
        assert [entry for shard in shards for _, entry, _ in shard] != [entry for entry, _ in taken]  # shuffled
    ordered = Settings(shard_size=4, shuffle=False, seed=3, buffer=10)
    block, taken, _ = next(plan_blocks(iter(blocks[0][1]), ordered, [], Path("src")))
    assert [entry for shard in shard_items(block, taken, ordered) for _, entry, _ in shard] == [e for e, _ in taken]


# ------------------------------------------------------------------------------------------------ the command
@pytest.fixture()
def source(tmp_path) -> Path:
    return write_unlabeled_folder(tmp_path / "src", 30)


def _shard(out: Path, src: Path, *extra: object) -> list[object]:
    return ["shard", src, "--out", out, "--shard-size", 4, "--shuffle-buffer", 10, "--no-progress", *extra]


@pytest.mark.slow  # worker processes
def test_the_shards_do_not_depend_on_the_worker_count(source, tmp_path, capsys):
    one = succeeds(capsys, *_shard(tmp_path / "one", source, "--workers", 1))
    assert "wrote 30 images in 8 shards" in one and "shard-{000000..000007}.tar" in one
    succeeds(capsys, *_shard(tmp_path / "three", source, "--workers", 3))
    assert _tars(tmp_path / "one") == _tars(tmp_path / "three") and len(_tars(tmp_path / "one")) == 8
    # blocks of 12 (the buffer rounded up to whole shards): 4 + 4 + 4, 4 + 4 + 4, 4 + 2
    assert [len(_members(tmp_path / "one" / f"shard-{i:06d}.tar")) for i in range(8)] == [4] * 7 + [2]
    assert _members(tmp_path / "one" / "shard-000003.tar") == [f"{k:09d}.jpg" for k in range(12, 16)]
    shards = [r for r in _records(tmp_path / "one") if "shard" in r]
    assert [r["count"] for r in shards] == [4] * 7 + [2] and all(r["first"] and r["last"] for r in shards)
    again = succeeds(capsys, *_shard(tmp_path / "one", source, "--workers", 2))
    assert "already holds every image" in again and _tars(tmp_path / "one") == _tars(tmp_path / "three")


def test_a_grown_source_gets_new_shards_and_the_finished_ones_stay(source, tmp_path, capsys):
    out = tmp_path / "out"
    succeeds(capsys, *_shard(out, source, "--workers", 1))
    before = {name: (out / name).stat().st_ino for name in _tars(out)}
    first = _tars(out)
    write_unlabeled_folder(tmp_path / "more", 5)
    for i, image in enumerate(sorted((tmp_path / "more").rglob("*.jpg"))):
        image.rename(source / f"zz{i}.jpg")  # names that sort after every sharded image: new
    line = succeeds(capsys, *_shard(out, source, "--workers", 1))
    assert "wrote 5 images in 2 shards" in line and "(35 images in 10 shards in all)" in line
    assert all(_tars(out)[name] == data for name, data in first.items())  # not rewritten: the same files
    assert all((out / name).stat().st_ino == inode for name, inode in before.items())
    new = [_members(out / f"shard-{i:06d}.tar") for i in (8, 9)]
    assert sorted(new[0] + new[1]) == [f"{k:09d}.jpg" for k in range(30, 35)]  # keys continue

    (source / "a-late-arrival.jpg").write_bytes((source / "zz0.jpg").read_bytes())  # sorts among sharded images
    kept = snapshot(out)
    error = one_line_error(capsys, *_shard(out, source, "--workers", 1))
    assert "changed since its shards were written" in error and "'a-late-arrival.jpg'" in error
    assert "write its shards into a new --out" in error and snapshot(out) == kept


def test_rows_appended_to_a_csv_are_new(source, tmp_path, capsys):
    images = [str(p) for p in sorted(source.rglob("*.jpg"))]
    csv = tmp_path / "list.csv"
    csv.write_text("path\n" + "\n".join(images[:20]) + "\n")
    succeeds(capsys, *_shard(tmp_path / "out", csv, "--workers", 1))
    csv.write_text("path\n" + "\n".join(images) + "\n")
    assert "wrote 10 images in 3 shards" in succeeds(capsys, *_shard(tmp_path / "out", csv, "--workers", 1))
    csv.write_text("path\n" + "\n".join(images[:10]) + "\n")
    assert "it now has 10 images, fewer than the 30 already sharded" in one_line_error(
        capsys, *_shard(tmp_path / "out", csv, "--workers", 1)
    )


def test_bad_images_stop_the_run_keeping_finished_shards_or_are_left_out_with_skip_bad(source, tmp_path, capsys):
    for name in ("u8.jpg", "nested/u9.jpg"):
        (source / name).write_bytes(b"\xff\xd8 broken")
    out = tmp_path / "out"
    # in the source's order: nested/ u1 u11 u13 u15 | u17 u19 u21 u23 | u25 u27 u29 u3 | u5 u7 u9(bad) ...
    error = one_line_error(capsys, *_shard(out, source, "--workers", 1, "--no-shuffle"))
    assert "cannot read image" in error and "nested/u9.jpg (cannot identify image file)" in error
    assert "pass --skip-bad" in error and "the 3 finished shards are kept" in error
    assert sorted(os.listdir(out)) == ["metapl.json", *[f"shard-{i:06d}.tar" for i in range(3)], MANIFEST]
    kept = _tars(out)
    line = succeeds(capsys, *_shard(out, source, "--workers", 1, "--no-shuffle", "--skip-bad"))
    assert "wrote 16 images in 5 shards" in line and "(28 images in 8 shards in all)" in line
    assert "left out 2 unreadable files, listed in" in line and all(_tars(out)[n] == d for n, d in kept.items())
    skipped = (out / "skipped.txt").read_text().splitlines()
    assert skipped == ["nested/u9.jpg\t(cannot identify image file)", "u8.jpg\t(cannot identify image file)"]
    keys = [key for name in _tars(out) for key in _members(out / name)]
    assert len(keys) == 28 == len(set(keys))
    # a fresh run with --skip-bad writes the same shards as the stopped one continued
    succeeds(capsys, *_shard(tmp_path / "fresh", source, "--workers", 1, "--no-shuffle", "--skip-bad"))
    assert _tars(tmp_path / "fresh") == _tars(out)


def test_folders_not_of_metapl_shard_and_other_settings_are_refused(source, tmp_path, capsys):
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "keep.txt").write_text("mine")
    error = one_line_error(capsys, *_shard(tmp_path / "theirs", source))
    assert "is not a metapl shards directory" in error and "'keep.txt'" in error
    assert sorted(os.listdir(tmp_path / "theirs")) == ["keep.txt"]
    run = tmp_path / "run"
    run.mkdir()
    (run / "metapl.json").write_text('{"writer": "metapl", "kind": "run", "format": 1}')
    assert "is a metapl run directory, not a shards directory" in one_line_error(capsys, *_shard(run, source))
    assert "is inside the source folder" in one_line_error(capsys, *_shard(source / "out", source))

    out = tmp_path / "out"
    succeeds(capsys, *_shard(out, source, "--workers", 1))
    kept = snapshot(out)
    for extra, said in [
        (["--seed", "2"], "written with --seed 0"),
        (["--no-shuffle"], "written without --no-shuffle"),
        (["--shuffle-buffer", "12"], "written with --shuffle-buffer 10"),
    ]:
        assert said in one_line_error(capsys, *_shard(out, source, "--workers", 1, *extra))
    other_size = ["shard", source, "--out", out, "--shard-size", 5, "--shuffle-buffer", 10, "--no-progress"]
    assert "written with --shard-size 4" in one_line_error(capsys, *other_size)
    for bad, said in [("--workers", "--workers 0 is impossible"), ("--shuffle-buffer", "--shuffle-buffer 0 is")]:
        assert said in one_line_error(capsys, *_shard(tmp_path / "new", source), bad, 0)
    assert snapshot(out) == kept and not (tmp_path / "new").exists()
    (out / MANIFEST).write_text((out / MANIFEST).read_text().replace('"block": 1', '"block": 7'))
    assert f"{MANIFEST} line " in one_line_error(capsys, *_shard(out, source, "--workers", 1))


def test_a_torn_last_manifest_line_and_a_missing_shard_are_written_again(source, tmp_path, capsys):
    out = tmp_path / "out"
    succeeds(capsys, *_shard(out, source, "--workers", 1))
    reference = _tars(out)
    text = (out / MANIFEST).read_text()
    (out / MANIFEST).write_text(text[: text.rstrip("\n").rfind("\n") + 20])  # a kill while appending the last line
    (out / "shard-000004.tar").unlink()
    (out / ".shard-000005.tar.partial").write_bytes(b"half")
    assert "wrote 6 images in 2 shards" in succeeds(capsys, *_shard(out, source, "--workers", 1))
    assert _tars(out) == reference and not (out / ".shard-000005.tar.partial").exists()


# ------------------------------------------------------------------------------------------------ kill, resume, Ctrl-C
# Reads of 50 ms: the whole run takes about 3 s, so that on a loaded machine the signal still lands before the end
# (at 20 ms a CI run once saw the SIGINT-ed run finish with exit 0). SIGINT's default handler is set explicitly: a
# process whose parent ignores SIGINT (a job started with `&` by a script) gets no KeyboardInterrupt from Python.
_SLOW_READS = (
    "import signal, sys, time; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "import metapl.commands.shard as s; read = s._read_image; "
    "s._read_image = lambda path: (time.sleep(0.05), read(path))[1]; "
    "from metapl.commands.cli import main; sys.exit(main(sys.argv[1:]))"
)


def _started(args: list[object], out: Path, shards: int) -> subprocess.Popen:
    """`metapl ARGS` in a process whose image reads take 50 ms, once it has recorded `shards` finished shards."""
    process = subprocess.Popen(
        [sys.executable, "-c", _SLOW_READS, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if (out / MANIFEST).exists() and sum('"shard"' in line for line in (out / MANIFEST).open()) >= shards:
            return process
        time.sleep(0.01)
    process.kill()
    raise AssertionError(f"the run ended before writing {shards} shards: {process.communicate()}")


@pytest.mark.slow
def test_a_killed_run_continues_to_the_same_bytes_and_ctrl_c_keeps_finished_shards(tmp_path, capsys):
    source = write_unlabeled_folder(tmp_path / "src", 120)
    args = lambda out: ["shard", source, "--out", out, "--shard-size", 8, "--shuffle-buffer", 40, "--no-progress"]  # noqa: E731
    succeeds(capsys, *args(tmp_path / "whole"), "--workers", 2)
    reference = _tars(tmp_path / "whole")
    assert len(reference) == 15

    killed = tmp_path / "killed"
    process = _started([*args(killed), "--workers", 2], killed, shards=3)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 3 <= len(_tars(killed)) < 15
    line = succeeds(capsys, *args(killed), "--workers", 2)  # the same command
    assert "wrote" in line and "(120 images in 15 shards in all)" in line
    assert _tars(killed) == reference and not list(killed.glob(".*.partial"))

    stopped = tmp_path / "stopped"
    process = _started([*args(stopped), "--workers", 2], stopped, shards=2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("metapl: shard stopped by Ctrl-C: ") and "are kept in" in lines[0]
    finished = _tars(stopped)
    assert len(finished) >= 2 and all(reference[name] == data for name, data in finished.items())
    assert not list(stopped.glob(".*.partial"))
    code, _, _ = cli(capsys, *args(stopped), "--workers", 1)
    assert code == 0 and _tars(stopped) == reference

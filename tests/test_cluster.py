"""decontext cluster on a local Ray: 200 toy faces protected by the shipped toy protector with 2 actors,
one actor killed mid-run, the driver killed mid-run and run again, which skips exactly what the killed run had
finished and protects the rest; at the end every output exists once,
within budget, with a valid record, nothing else in the folder, and the same pixels as the CLI's."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray")
ROOT = Path(__file__).resolve().parents[1]
COUNT = 200  # enough that both kills land mid-run (after 40 and 100 images); the property needs no more
COMMON = [
    "--model",
    "toy",
    "--method",
    "amortized",
    "--protector",
    "toy-decontext",
    "--measure-draws",
    "0",
    "--seed",
    "7",
    "--no-progress",
]


def _faces(folder: Path, count: int) -> list[Path]:
    from decontext.toy import world

    folder.mkdir(parents=True, exist_ok=True)
    identities = world.train_identities() + world.eval_identities()
    paths = []
    for i in range(count):
        path = folder / f"face{i:03d}.png"
        Image.fromarray(world.render(world.sample_scene(identities[i % len(identities)], seed=1000 + i))).save(path)
        paths.append(path)
    return paths


def _journaled(output: Path) -> int:
    journals = output / ".cluster" / "journals"
    return (
        sum(line.count('"status": "done"') for f in journals.glob("*.jsonl") for line in f.read_text().splitlines())
        if journals.is_dir()
        else 0
    )


def _actor_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "ProtectWorker" in command or "MapWorker" in command:
                pids.append(int(entry.name))
    return pids


def _wait(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_a_ray_job_survives_a_killed_actor_and_a_killed_driver(tmp_path):
    faces = _faces(tmp_path / "faces", COUNT)
    output = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "decontext",
        "cluster",
        *COMMON,
        "--input",
        str(tmp_path / "faces"),
        "--output",
        str(output),
        "--actors",
        "2",
    ]
    env = {**os.environ, "RAY_DEDUP_LOGS": "0"}
    first = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        _wait(lambda: _journaled(output) >= 40, 300, "the first 40 images")
        actors = _actor_pids()
        assert actors, "no actor process found"
        os.kill(actors[0], signal.SIGKILL)  # Ray restarts it and retries its batch
        _wait(
            lambda: _journaled(output) >= 100 or first.poll() is not None, 300, "100 images after the actor was killed"
        )
        assert first.poll() is None, first.stdout.read().decode()[-3000:]
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the driver and the local Ray it started
        first.wait()
    assert (
        not (output / "manifest.json").exists()
        or len(json.loads((output / "manifest.json").read_text()).get("images", {})) < COUNT
    )
    from decontext.cluster import _known_records

    # the killed driver takes its actors with it; an actor may finish the image in hand before it goes
    _wait(lambda: not _actor_pids(), 60, "the actors to go with the killed driver")
    # what the killed run finished (its journals; a line cut short by the kill does not count) is skipped, exactly
    # that, and the rest protected: the same resume path a third run over a finished folder would take
    finished = sum(
        r.get("status") == "done" and (output / f"{Path(k).stem}.png").exists()
        for k, r in _known_records(output, output / ".cluster" / "journals").items()
    )
    assert 40 <= finished < COUNT
    second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"protected {COUNT - finished}, skipped {finished} (already done with the same settings), failed 0" in (
        second.stdout
    ), second.stdout[-2000:]

    manifest = json.loads((output / "manifest.json").read_text())
    images = manifest["images"]
    assert sorted(images) == sorted(p.name for p in faces) and all(r["status"] == "done" for r in images.values())
    assert manifest["method"]["method"] == "amortized" and manifest["args"]["actors"] == 2
    assert sorted(p.name for p in output.iterdir()) == sorted(
        [f"{p.stem}.png" for p in faces] + ["manifest.json", ".manifest.json.lock"]
    )
    eps = int(manifest["pgd"]["eps"])
    for face in faces[::10]:
        source = np.asarray(Image.open(face)).astype(int)
        saved = np.asarray(Image.open(output / face.name)).astype(int)
        record = images[face.name]
        assert 0 < np.abs(saved - source).max() <= eps and record["max_abs_diff_levels"] == np.abs(saved - source).max()
        assert len(record["input_sha256"]) == 64 and record["settings"]["method"]["method"] == "amortized"

    # the same pixels as the single-process CLI for the same image and seed, on the same number of threads as an
    # actor (--cpus-per-actor 1): float sums in another order can move a pixel by one level
    single = subprocess.run(
        [
            sys.executable,
            "-m",
            "decontext",
            "attack",
            *COMMON,
            "--input",
            str(faces[3]),
            "--output",
            str(tmp_path / "single"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert single.returncode == 0, single.stderr[-2000:]
    assert (tmp_path / "single" / faces[3].name).read_bytes() == (output / faces[3].name).read_bytes()


def test_inputs_from_a_glob_a_list_and_a_manifest(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from decontext.cluster import list_inputs

    faces = _faces(tmp_path / "faces", 3)
    (tmp_path / "faces" / "notes.txt").write_text("not an image")
    assert list_inputs(str(tmp_path / "faces")) == [str(p) for p in faces]
    assert list_inputs(str(tmp_path / "faces" / "face00[12].png")) == [str(p) for p in faces[1:]]
    (tmp_path / "list.txt").write_text("# photos\nfaces/face000.png\n" + str(faces[2]) + "\n")
    assert list_inputs(str(tmp_path / "list.txt")) == [str(faces[0]), str(faces[2])]
    pq.write_table(pa.table({"path": ["faces/face001.png"]}), tmp_path / "m.parquet")
    assert list_inputs(str(tmp_path / "m.parquet")) == [str(faces[1])]
    with pytest.raises(FileNotFoundError):
        list_inputs(str(tmp_path / "missing"))

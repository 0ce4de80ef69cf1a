"""compile --resume: kill a compile after its first sub-model, resume, and get the build an uninterrupted compile
with the same seed gives (issue 9)."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from synth_images import digits_checkpoint

KW = {"img_size": 16, "patch_size": 4, "in_chans": 1, "num_classes": 10, "embed_dim": 48, "depth": 2, "num_heads": 3}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return digits_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.safetensors", steps=300, kwargs=KW)


def _compile(recipe, out, *extra):
    return [sys.executable, "-m", "edvit_tool.cli.main", "compile", "--recipe", str(recipe), "--out", str(out),
            "-q", *extra]


def _tensors(path):
    return torch.load(path, weights_only=True)


def _rec(ckpt):
    return {"name": "r", "threads": 1,
           "model": {"name": "vit_tiny_patch16_224", "kwargs": KW, "checkpoint": str(ckpt)},
           "data": {"kind": "digits", "mean": [0.5], "std": [0.5]}, "split": {"groups": 3},
           # a trunk twice the sub-model size: each group is pruned class-wise from it, so groups take long
           # enough to kill the compile between two of them (at the default shared_size 1 they take milliseconds)
           "prune": {"steps": 2, "recovery_steps": 5, "importance_batches": 2, "shared_size": 2.0,
                     "shared_fraction": 0.5},
           "finetune": {"steps": 60}, "fusion": {"steps": 30, "kind": "mlp", "augment_views": 0}}


@pytest.mark.slow
def test_killed_compile_resumes_to_the_uninterrupted_build(tmp_path, ckpt):
    rec = _rec(ckpt)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(rec))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert subprocess.run(_compile(recipe, whole), env=env, capture_output=True).returncode == 0

    proc = subprocess.Popen(_compile(recipe, cut), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = tmp_path / "cut.partial"
    deadline = time.monotonic() + 600
    while not (partial / "g0.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (partial / "g0.json").exists() and not (partial / "g2.json").exists(), "killed too late to test resume"
    assert not cut.exists()   # no half-written build that looks complete

    r = subprocess.run(_compile(recipe, cut, "--resume"), env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert not partial.exists()
    for rel in ("submodels/g0.pt", "submodels/g1.pt", "submodels/g2.pt", "fusion/fusion.pt"):
        a, b = _tensors(whole / rel), _tensors(cut / rel)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), rel


@pytest.mark.slow
def test_jobs_2_gives_the_build_of_jobs_1(tmp_path, ckpt):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(_rec(ckpt)))
    for name, jobs in (("one", "1"), ("two", "2")):
        r = subprocess.run(_compile(recipe, tmp_path / name, "--jobs", jobs), capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    assert not (tmp_path / "two.partial").exists()
    for rel in ("submodels/g0.pt", "submodels/g1.pt", "submodels/g2.pt", "fusion/fusion.pt"):
        a, b = _tensors(tmp_path / "one" / rel), _tensors(tmp_path / "two" / rel)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), rel


@pytest.mark.slow
def test_the_peer_in_its_own_process_is_the_peer_trained_after_the_ensemble(tmp_path, ckpt):
    """peer.parallel: the peer trained beside the ensemble in a second process gives the report of the one
    trained after it in the main process; the ensemble is untouched."""
    import json

    reports = {}
    for mode in ("never", "always"):
        rec = _rec(ckpt)
        rec["peer"] = {"parallel": mode}
        recipe = tmp_path / f"{mode}.yaml"
        recipe.write_text(yaml.safe_dump(rec))
        r = subprocess.run(_compile(recipe, tmp_path / mode, "--peer", "--json"), capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        reports[mode] = json.loads(r.stdout)
        assert not (tmp_path / f"{mode}.partial").exists()
    inline, apart = reports["never"]["peer"], reports["always"]["peer"]
    for key in ("params", "params_budget", "train_steps", "validation_accuracy", "accuracy", "bytes"):
        assert inline[key] == apart[key], key
    # the per-board budget (params_ratio 0.25 by default), known before any sub-model is trained
    built = reports["always"]
    assert apart["params_budget"] == int(0.25 * built["original"]["params"])
    assert max(s["params"] for s in built["submodels"]) <= apart["params_budget"]
    for rel in ("submodels/g0.pt", "submodels/g2.pt", "fusion/fusion.pt"):
        a, b = _tensors(tmp_path / "never" / rel), _tensors(tmp_path / "always" / rel)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), rel


def test_a_jobs_worker_takes_the_main_process_teacher_outputs_instead_of_a_second_pass(tmp_path, ckpt):
    """--jobs workers get the teacher's fine-tune-split outputs from the main process (partial dir) and must use
    them as they are; outputs that do not fit the worker's data are recomputed, not trusted."""
    from edvit_tool.compile.pipeline import prepare
    from edvit_tool.compile.teacher import TeacherOutputs
    from edvit_tool.config import recipe as recipe_mod

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(_rec(ckpt)))
    recipe = recipe_mod.load(str(path))
    cpu = torch.device("cpu")
    main = prepare(recipe, cpu)
    handed = TeacherOutputs(main.teacher.features + 1.0, main.teacher.logits * 2.0, None, None)
    worker = prepare(recipe, cpu, for_worker=True, teacher=handed)
    assert worker.train.t_logits is handed.logits and worker.t_feats is handed.features
    short = TeacherOutputs(handed.features[:5], handed.logits[:5], None, None)
    again = prepare(recipe, cpu, for_worker=True, teacher=short)
    assert torch.equal(again.train.t_logits, main.teacher.logits)


def test_jobs_workers_start_early_and_leave_when_the_main_process_is_gone(tmp_path, ckpt):
    """--jobs workers start before the teacher pass and wait for its outputs in the partial dir; one whose main
    process is gone (here: a parent pid that is not its parent) stops with one line instead of waiting forever."""
    import json

    from edvit_tool.config import recipe as recipe_mod

    rec = tmp_path / "recipe.json"
    rec.write_text(json.dumps(recipe_mod.validate(_rec(ckpt)).to_dict()))
    cmd = [sys.executable, "-m", "edvit_tool.compile.jobs", str(rec), str(tmp_path / "b.partial"), "1", "1", "cpu",
           "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == ("Error: compile --jobs: the main process stopped before handing "
                                                 "over the teacher's outputs")


@pytest.mark.slow
def test_a_user_error_with_jobs_kills_the_waiting_workers_and_leaves_nothing(tmp_path, ckpt):
    recipe = tmp_path / "recipe.yaml"
    bad = _rec(ckpt)
    bad["model"]["classes"] = str(tmp_path / "missing-classes.txt")
    recipe.write_text(yaml.safe_dump(bad))
    r = subprocess.run(_compile(recipe, tmp_path / "out", "--jobs", "2"), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and "missing-classes.txt" in r.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
    left = subprocess.run(["pgrep", "-f", f"edvit_tool.compile.jobs .*{tmp_path}"], capture_output=True, text=True)
    assert left.stdout.strip() == ""


def test_a_failing_worker_is_reported_with_its_last_error_line(tmp_path, ckpt):
    """A --jobs worker that cannot load the checkpoint (it is gone by the time the worker reads it: the fault is
    produced for real, not mocked) exits with its Error line; finish() names the worker's groups and that line."""
    import shutil

    from edvit_tool.compile.jobs import WorkerPool
    from edvit_tool.compile.resume import Partial
    from edvit_tool.config import recipe as recipe_mod
    from edvit_tool.errors import EdvitError

    moved = tmp_path / "model.safetensors"
    shutil.copy(ckpt, moved)
    rec = _rec(moved)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(rec))
    recipe = recipe_mod.load(str(path))
    partial = Partial(str(tmp_path / "build"), recipe, resume=False)
    moved.unlink()  # the workers start after this: their load fails
    trained = []
    with WorkerPool(recipe, partial, 2, torch.device("cpu")) as pool:
        with pytest.raises(EdvitError) as e:
            pool.finish(trained.append)
    assert trained == [0, 2]  # the main process trained its own share first
    assert str(e.value).startswith("compile --jobs: the worker training groups [1] failed: Error: ")
    assert "model.safetensors" in str(e.value), str(e.value)
    assert all(p.poll() is not None for _, p in pool.procs)


def test_a_failing_peer_process_is_reported_with_its_last_error_line(tmp_path, ckpt):
    """The peer's process cannot load the checkpoint (gone by the time it reads it: a real fault, not a mock):
    result() names the peer's process and its Error line instead of waiting forever."""
    import shutil

    from edvit_tool.compile.jobs import PeerProcess
    from edvit_tool.compile.resume import Partial
    from edvit_tool.config import recipe as recipe_mod
    from edvit_tool.errors import EdvitError

    moved = tmp_path / "model.safetensors"
    shutil.copy(ckpt, moved)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(_rec(moved)))
    recipe = recipe_mod.load(str(path))
    partial = Partial(str(tmp_path / "build"), recipe, resume=False)
    moved.unlink()
    with PeerProcess(recipe, partial, torch.device("cpu")) as proc:
        with pytest.raises(EdvitError) as e:
            proc.result(recipe.model.name, recipe.model.kwargs)
    assert str(e.value).startswith("compile --peer: the process training the peer failed: Error: "), str(e.value)
    assert "model.safetensors" in str(e.value) and proc.proc.poll() is not None


def test_a_saved_peer_is_reloaded_with_its_report_entry(tmp_path, ckpt):
    """A finished peer survives in the partial dir (compile --resume takes it instead of training it again)."""
    from edvit_tool.compile.checkpoint import load_model
    from edvit_tool.compile.resume import Partial
    from edvit_tool.config import recipe as recipe_mod

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(_rec(ckpt)))
    recipe = recipe_mod.load(str(path))
    partial = Partial(str(tmp_path / "build"), recipe, resume=False)
    assert partial.load_peer(recipe.model.name, KW) is None
    model = load_model(recipe.model.name, KW, str(ckpt))
    partial.save_peer(model, {"accuracy": 0.5, "params": 7})
    again = Partial(str(tmp_path / "build"), recipe, resume=True)
    loaded, info = again.load_peer(recipe.model.name, KW)
    assert info == {"accuracy": 0.5, "params": 7}
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

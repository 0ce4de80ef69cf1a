"""Finished sub-models survive a crash or Ctrl-C: each is saved in `<out>.partial/` as soon as it is trained,
and `compile --resume` loads those and continues with the next group.

The partial dir is tied to what produced it (the resolved recipe and the checkpoint file's size and mtime): a
different recipe or checkpoint never resumes from it. Each group seeds its own RNGs, so a resumed build is
identical to an uninterrupted one with the same seed. The partial dir is removed once the build is in place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from types import SimpleNamespace

import torch

from ..config.recipe import Recipe
from .prune import surgery


def partial_dir(out_dir: str) -> str:
    return os.path.abspath(out_dir).rstrip("/") + ".partial"


def fingerprint(recipe: Recipe) -> str:
    from ..config import recipe as recipe_mod

    ck = recipe.model.checkpoint
    st = os.stat(ck) if ck and os.path.isfile(ck) else None
    key = recipe_mod.dump(recipe) + (f"\n{st.st_size} {st.st_mtime_ns}" if st else "")
    return hashlib.sha256(key.encode()).hexdigest()


class Partial:
    def __init__(self, out_dir: str, recipe: Recipe, resume: bool, log=lambda s: None):
        self.dir, self.key, self.log = partial_dir(out_dir), fingerprint(recipe), log
        state = os.path.join(self.dir, "state.json")
        usable = False
        if os.path.isfile(state):
            with open(state, encoding="utf-8") as f:
                usable = json.load(f).get("fingerprint") == self.key
        if os.path.isdir(self.dir) and not (resume and usable):
            if resume:
                log(f"resume: {self.dir} was made by another recipe or checkpoint; starting over")
            shutil.rmtree(self.dir)
        os.makedirs(self.dir, exist_ok=True)
        with open(state, "w", encoding="utf-8") as f:
            json.dump({"fingerprint": self.key}, f)

    @classmethod
    def attach(cls, out_dir: str, recipe: Recipe) -> "Partial":
        """The partial dir a running compile made (a --jobs worker writes into it; nothing is reset)."""
        self = cls.__new__(cls)
        self.dir, self.key, self.log = partial_dir(out_dir), fingerprint(recipe), (lambda s: None)
        return self

    def empty(self) -> bool:
        """Nothing trained yet (only the fingerprint, and the teacher's outputs handed to --jobs workers)."""
        return not os.path.isdir(self.dir) or set(os.listdir(self.dir)) <= {"state.json", "teacher-finetune.tensors.pt",
                                                                             "peer-progress.json"}

    def has(self, name: str) -> bool:
        return os.path.isfile(os.path.join(self.dir, f"{name}.json"))

    def load(self, name: str, model_name: str, kwargs: dict, resumed: bool = True):
        """The finished sub-model `name` (a distill.Student: the pruned ViT + its aux head), or None. `resumed`:
        log that it was (False: another process of this compile saved it just now)."""
        from .distill import Student

        meta = os.path.join(self.dir, f"{name}.json")
        if not os.path.isfile(meta):
            return None
        with open(meta, encoding="utf-8") as f:
            info = json.load(f)
        net = surgery.build_pruned(model_name, kwargs, info["arch"])
        state = torch.load(os.path.join(self.dir, f"{name}.pt"), map_location="cpu", weights_only=True)
        net.load_state_dict(state["model"])
        side = {}
        for key in ("aux", "proj"):  # the training-time heads (proj only matters for a shared trunk)
            side[key] = None
            if info.get(key):
                side[key] = torch.nn.Linear(*info[key])
                side[key].load_state_dict(state[key])
        if resumed:
            self.log(f"resume: {name} loaded from {self.dir}")
        return Student(net.eval(), side["aux"], side["proj"])

    def save(self, name: str, student) -> None:
        """Weights first, then the small json that marks them complete (both renamed into place)."""
        pt, meta = os.path.join(self.dir, f"{name}.pt"), os.path.join(self.dir, f"{name}.json")
        state = {"model": {k: v.detach().cpu().contiguous() for k, v in student.model.state_dict().items()}}
        shapes = {"arch": surgery.vit_arch(student.model), "aux": None, "proj": None}
        for key in ("aux", "proj"):
            lin = getattr(student, key)
            if lin is not None:
                state[key] = {k: v.detach().cpu().contiguous() for k, v in lin.state_dict().items()}
                shapes[key] = [lin.in_features, lin.out_features]
        torch.save(state, pt + ".tmp")
        os.replace(pt + ".tmp", pt)
        with open(meta + ".tmp", "w", encoding="utf-8") as f:
            json.dump(shapes, f)
        os.replace(meta + ".tmp", meta)

    def has_peer(self) -> bool:
        return self.has("peer")

    def save_peer(self, model, info: dict) -> None:
        """The trained peer and its report entry (the entry first: has_peer() means both are there)."""
        path = os.path.join(self.dir, "peer-info.json")
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(info, f)
        os.replace(path + ".tmp", path)
        self.save("peer", SimpleNamespace(model=model, aux=None, proj=None))

    def load_peer(self, model_name: str, kwargs: dict, resumed: bool = True):
        """(peer timm ViT, report entry), or None when no peer was saved."""
        if not self.has_peer():
            return None
        with open(os.path.join(self.dir, "peer-info.json"), encoding="utf-8") as f:
            info = json.load(f)
        return self.load("peer", model_name, kwargs, resumed).model.eval(), info

    def has_tensors(self, name: str) -> bool:
        return os.path.isfile(os.path.join(self.dir, f"{name}.tensors.pt"))

    def save_tensors(self, name: str, state: dict) -> None:
        """A plain state dict (the joint phase's fusion MLP), renamed into place when written."""
        path = os.path.join(self.dir, f"{name}.tensors.pt")
        torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, path + ".tmp")
        os.replace(path + ".tmp", path)

    def load_tensors(self, name: str) -> dict:
        return torch.load(os.path.join(self.dir, f"{name}.tensors.pt"), map_location="cpu", weights_only=True)

    def done(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

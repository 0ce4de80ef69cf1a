"""Quick method ablations (issue 10): train one variant's sub-models (or its peer) on a bench/tasks.py task and
score every fusion head on the validation and test splits, without export or a build dir.

    python bench/ablate.py TASK K RATIO LABEL [--set finetune.joint_fraction=1.0 ...] [--peer]

Appends one entry per run to bench/results/ablate.json (the peer is a separate run: it does not depend on
the sub-model knobs). Decisions are read off the *_val figures; *_test is for the report. Sub-model outputs are
kept in runs/ablate/<label>/ for offline fusion experiments.
"""
import argparse, dataclasses, json, os, sys, time
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
ROOT = os.path.dirname(_HERE)
sys.path.insert(0, ROOT); sys.path.insert(1, _HERE)
import torch, yaml
import tasks as task_mod
from edvit_tool.config import recipe as recipe_mod
from edvit_tool.compile import build, distill, fuse, pipeline
from edvit_tool.compile.prune import surgery
import torch.nn.functional as F

ap = argparse.ArgumentParser()
ap.add_argument("task"); ap.add_argument("k", type=int); ap.add_argument("ratio", type=float); ap.add_argument("variant")
ap.add_argument("--set", action="append", default=[]); ap.add_argument("--peer", action="store_true")
a = ap.parse_args()
torch.set_num_threads(1)
ov = {"split.groups": a.k, "prune.target.params_ratio": a.ratio, "threads": 1, "device": "cpu"}
for s in a.set:
    k, v = s.split("=", 1); ov[k] = yaml.safe_load(v)
recipe = recipe_mod.load(task_mod.ensure_task(a.task), ov)
dev = torch.device("cpu")
t0 = time.perf_counter()
st = pipeline.prepare(recipe, dev)
res = {"task": a.task, "k": a.k, "ratio": a.ratio, "variant": a.variant, "set": a.set}
if a.peer:
    from edvit_tool.compile.peer import build_peer
    pipeline.seed_everything(st.seed + 99)
    tp = time.perf_counter()
    peer, info = build_peer(st.model, st.train, st.data.val.x, st.data.val.y, recipe, int(st.params_target), a.k, dev, st.seed + 99)
    res["peer_val"] = info["validation_accuracy"]
    res["peer_test"] = distill.accuracy(distill.predict(peer, st.data.test.x, dev), st.data.test.y)
    res["peer_s"] = time.perf_counter() - tp
else:
    ts = time.perf_counter()
    trunk = pipeline.train_trunk(st, recipe, dev) if pipeline.shared_trunk_plan(recipe, st.k, st.params_target) else None
    if trunk is not None:  # the class-agnostic trunk alone: what the branches start from
        for name, split in (("val", st.data.val), ("test", st.data.test)):
            res[f"trunk_{name}"] = distill.accuracy(distill.predict(trunk.model, split.x, dev), split.y)
        res["trunk_s"] = time.perf_counter() - ts
    students = [pipeline.train_group(st, gi, recipe, dev, trunk=trunk) for gi in range(len(st.groups))]
    from edvit_tool.compile.resume import Partial
    partial = Partial(os.path.join(ROOT, "runs", "ablate", "partial", f"{a.variant}-{a.task}-{a.k}"), recipe, False)
    joint = pipeline.joint_phase(recipe, st, students, partial, dev, None)
    res["ens_train_s"] = time.perf_counter() - ts
    wrapped = [surgery.SubModelWrapper(s.model) for s in students]
    dump = {"groups": st.groups}
    for name, split in (("fusion", st.data.fusion), ("val", st.data.val), ("test", st.data.test)):
        if len(split) == 0:
            continue
        outs = [distill.predict(s, split.x, dev) for s in students]  # (group logits, aux, proj)
        feats = [distill.predict(w, split.x, dev)[0] for w in wrapped]
        dump[name] = {"y": split.y, "feats": feats, "logits": [o[0] for o in outs],
                      "aux": [o[1] for o in outs], "teacher": distill.predict(st.model, split.x, dev)}
    os.makedirs(os.path.join(ROOT, "runs", "ablate", a.variant), exist_ok=True)
    torch.save(dump, os.path.join(ROOT, "runs", "ablate", a.variant, f"{a.task}-k{a.k}-r{a.ratio}.pt"))
    va_out = [(dump["val"]["feats"][i], dump["val"]["logits"][i]) for i in range(len(students))]
    rc = dataclasses.replace(recipe.fusion, kind="auto")
    fu = fuse.fit_fusion(rc, wrapped, students, st.model, st.groups, st.data, st.t_fu, va_out, dev, st.seed, None, joint)
    for split in ("val", "test"):
        d = dump[split]
        fe, lo = torch.cat(d["feats"], 1), torch.cat(d["logits"], 1)
        with torch.no_grad():
            for kname, h in fu.heads.items():
                res[f"{kname}_{split}"] = distill.accuracy(h(lo if kname == "logits" else fe), d["y"])
        if d["aux"][0] is not None:
            res[f"auxmean_{split}"] = distill.accuracy(sum(F.log_softmax(x, 1) for x in d["aux"]), d["y"])
            res[f"aux_each_{split}"] = [round(distill.accuracy(x, d["y"]), 4) for x in d["aux"]]
        res[f"ingroup_{split}"] = [round(build.group_accuracy(d["logits"][i], d["y"], g, len(st.data.classes)), 3) for i, g in enumerate(st.groups)]
        res[f"orig_{split}"] = distill.accuracy(d["teacher"], d["y"])
res["total_s"] = time.perf_counter() - t0
print(json.dumps(res))
path = os.path.join(ROOT, "bench", "results", "ablate.json")
doc = {"about": "bench/ablate.py runs", "runs": []}
if os.path.isfile(path):
    with open(path) as f:
        doc = json.load(f)
doc["runs"].append(res)
with open(path + ".tmp", "w") as f:
    json.dump(doc, f, indent=1)
os.replace(path + ".tmp", path)

"""Sub-model views (split.view_shift): each sub-model sees the image moved by its own fixed offset. The offset is
part of the architecture: it survives pruning, the manifest's arch, a rebuild, and ONNX / TFLite export."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from prune_models import NAME, BASE
from prune_models import make_vit
from prune_models import one_thread  # noqa: F401  (autouse fixture)

from edvit_tool.compile import partition
from edvit_tool.compile.prune.importance import Importance
from edvit_tool.compile.prune.plan import plan_keep
from edvit_tool.compile.prune.surgery import (
    SubModelWrapper, apply_keep, build_pruned, set_view, shift_image, view_of, vit_arch,
)
from edvit_tool.errors import ModelError


def images(n=4, c=1):
    return torch.rand(n, c, 16, 16, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("dy,dx", [(1, 0), (0, -1), (2, 1), (-1, -2), (0, 0)])
@pytest.mark.parametrize("c", [1, 3])
def test_shift_image_is_a_replicate_padded_translation(dy, dx, c):
    x = images(2, c)
    p = max(abs(dy), abs(dx), 1)
    ref = F.pad(x, (p, p, p, p), mode="replicate")[:, :, p - dy:p - dy + 16, p - dx:p - dx + 16]
    assert torch.equal(shift_image(x, dy, dx), ref)


def test_view_offsets_start_plain_and_stay_distinct():
    offs = partition.view_offsets(30)
    assert offs[0] == (0, 0) and len(set(offs)) == 30
    assert set(offs[1:5]) == {(1, 1), (-1, -1), (1, -1), (-1, 1)}  # ring 1's corners first
    assert all(max(map(abs, o)) == 1 for o in offs[1:9]) and max(map(abs, offs[9])) == 2
    assert partition.views(3, None, 16) == [(0, 0), (2, 2), (-2, -2)]   # auto: patch / 8 px
    assert partition.views(3, None, 4) == [(0, 0), (1, 1), (-1, -1)]    # at least one pixel
    assert partition.views(4, 0, 16) == [(0, 0)] * 4                    # 0: every sub-model sees the plain image
    # beyond 5 views (ring 1's edges are one step from their neighbours) the auto step doubles
    assert partition.views(5, None, 16)[-1] == (-2, 2)
    assert partition.views(6, None, 16)[:2] == [(0, 0), (4, 4)]
    assert partition.views(10, None, 4)[:3] == [(0, 0), (2, 2), (-2, -2)]
    assert partition.views(10, 1, 16)[:2] == [(0, 0), (1, 1)]            # an explicit step is kept at any K


def test_view_is_architecture_survives_pruning_and_rebuild():
    torch.manual_seed(0)
    model = make_vit().eval()
    x = images()
    plain = model(x)
    set_view(model, (1, -1))
    viewed = model(x)
    assert not torch.allclose(viewed, plain)
    assert torch.allclose(viewed, set_view(copy.deepcopy(model), (0, 0))(shift_image(x, 1, -1)), atol=1e-6)
    a = vit_arch(model)
    imp = Importance(heads=[torch.rand(h) for h in a["heads"]], mlp=[torch.rand(n) for n in a["mlp_hidden"]],
                     embed=torch.rand(a["embed_dim"]))
    pruned = apply_keep(model, plan_keep(model, imp, keep_ratios={"heads": 0.5, "mlp": 0.5, "embed": 0.5}))
    assert view_of(pruned) == (1, -1)
    arch = vit_arch(pruned)
    assert arch["view"] == [1, -1]
    rebuilt = build_pruned(NAME, BASE, arch)
    rebuilt.load_state_dict(pruned.state_dict(), strict=True)
    assert torch.allclose(rebuilt.eval()(x), pruned.eval()(x), atol=1e-6)
    set_view(rebuilt, (0, 0))
    assert "view" not in vit_arch(rebuilt) and view_of(rebuilt) == (0, 0)


def test_set_view_refuses_a_foreign_patch_embed():
    model = make_vit()
    model.patch_embed = torch.nn.Identity()
    with pytest.raises(ModelError, match="cannot take a view"):
        set_view(model, (1, 1))


def test_viewed_submodel_exports_to_onnx_and_tflite(tmp_path):
    import onnxruntime as ort

    from edvit_tool.export.onnx import export_onnx
    from edvit_tool.export.tflite import convert_tflite
    from ai_edge_litert.interpreter import Interpreter

    torch.manual_seed(0)
    wrapped = SubModelWrapper(set_view(make_vit(), (-2, 1)).eval()).eval()
    x = images(3)
    with torch.no_grad():
        feats, logits = wrapped(x)
    export_onnx(wrapped, "submodel", x, str(tmp_path / "g.onnx"), 17, "none")
    out = ort.InferenceSession(str(tmp_path / "g.onnx")).run(["logits"], {"pixel_values": x.numpy()})[0]
    np.testing.assert_allclose(out, logits.numpy(), atol=1e-4)
    convert_tflite(wrapped, "sub-model", x[:1], str(tmp_path / "g.tflite"))
    it = Interpreter(model_path=str(tmp_path / "g.tflite"))
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x[:1].numpy())
    it.invoke()
    outs = [it.get_tensor(d["index"]) for d in it.get_output_details()]
    got = next(o for o in outs if o.shape == (1, logits.shape[1]))
    np.testing.assert_allclose(got, logits[:1].numpy(), atol=1e-4)


def test_peer_views_reference_averages_the_views_and_leaves_the_peer_plain():
    from edvit_tool.compile import distill
    from edvit_tool.compile.pipeline import views_accuracy

    model = make_vit()
    x, y = images(40), torch.randint(0, 10, (40,), generator=torch.Generator().manual_seed(0))
    plain = distill.accuracy(distill.predict(model, x, torch.device("cpu")), y)
    assert views_accuracy(model, [(0, 0)], x, y, torch.device("cpu")) == plain
    views = [(0, 0), (1, 1), (-1, -1)]
    probs = sum(distill.predict(set_view(copy.deepcopy(model), v), x, torch.device("cpu")).softmax(1) for v in views)
    assert views_accuracy(model, views, x, y, torch.device("cpu")) == distill.accuracy(probs, y)
    assert view_of(model) == (0, 0)

import pytest

from edvit_tool.config import recipe as r
from edvit_tool.errors import RecipeError


def test_defaults_fill_an_empty_recipe():
    rec = r.validate({"model": {"checkpoint": "x.pt"}})
    assert rec.split.groups == 4
    assert rec.prune.target.params_ratio == 0.25
    assert rec.export.quant == ["fp32"]


@pytest.mark.parametrize("raw, needle", [
    ({"prune": {"critrion": "taylor"}}, "unknown key prune.critrion (valid: criterion"),
    ({"split": {"groups": "four"}}, "split.groups must be an integer, got 'four'"),
    ({"prune": {"target": {"params_ratio": 1.5}}}, "prune.target.params_ratio must be in (0, 1], got 1.5"),
    ({"split": {"strategy": "random"}}, "split.strategy must be one of balanced, similarity, got 'random'"),
    ({"export": {"quant": ["int4"]}}, "export.quant must be one of fp32, fp16, int8-dynamic, int8-static, got 'int4'"),
    ({"data": {"kind": "npz"}}, "data.root is required for data.kind=npz"),
    ({"data": {"distort": "yes"}}, "data.distort must be true/false, got 'yes'"),
    ({"peer": {"parallel": True}}, "peer.parallel must be one of auto, always, never, got True (quote it: YAML "
                                   "reads bare yes/no/on/off as true/false)"),
    ({"threads": True}, "threads must be an integer, got True"),
])
def test_each_bad_value_is_named_with_its_path(raw, needle):
    with pytest.raises(RecipeError) as e:
        r.validate(raw, source="x.yaml")
    assert str(e.value).startswith("x.yaml: ")
    assert needle in str(e.value)


def test_all_problems_are_reported_at_once():
    with pytest.raises(RecipeError) as e:
        r.validate({"bogus": 1, "seed": -1, "split": {"groups": 0}})
    msg = str(e.value)
    assert "unknown key bogus" in msg and "seed must be in [0" in msg and "split.groups must be in [1" in msg


def test_overrides_apply_before_validation():
    rec = r.validate({}, overrides={"split.groups": 3, "prune.target.params_ratio": 0.5, "seed": None})
    assert rec.split.groups == 3 and rec.prune.target.params_ratio == 0.5 and rec.seed == 0
    with pytest.raises(RecipeError, match="split.groups must be an integer"):
        r.validate({}, overrides={"split.groups": "x"})


def test_explicit_keep_ratios_replace_the_params_ratio():
    rec = r.validate({"prune": {"target": {"keep": {"heads": 0.5, "mlp": 0.25}}}})
    assert rec.prune.target.params_ratio is None
    assert rec.prune.target.keep.heads == 0.5


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(RecipeError, match="bad.yaml: not valid YAML at line"):
        r.load(str(bad))
    with pytest.raises(RecipeError, match="recipe file not found"):
        r.load(str(tmp_path / "missing.yaml"))


def test_sections_are_typed_objects_read_by_attribute():
    rec = r.validate({"finetune": {"lr": 1}, "model": {"kwargs": {"num_classes": 10}}})
    assert isinstance(rec, r.Recipe) and isinstance(rec.finetune, r.FinetuneCfg)
    assert isinstance(rec.prune.target.keep, r.KeepCfg)
    assert rec.finetune.lr == 1.0 and isinstance(rec.finetune.lr, float)  # an integer where a number goes
    assert rec.model.kwargs == {"num_classes": 10}
    with pytest.raises(AttributeError):
        rec.finetune.learning_rate  # noqa: B018  (a typo is an error, not a silent default)


def test_to_dict_round_trips_and_is_a_copy():
    rec = r.validate({"export": {"formats": ["onnx"]}, "prune": {"target": {"keep": {"heads": 0.5}}}})
    d = rec.to_dict()
    assert list(d) == ["name", "seed", "device", "threads", "model", "data", "split", "prune", "finetune", "peer",
                       "fusion", "export", "gate"]
    assert r.Recipe.from_dict(d) == rec
    d["export"]["formats"].append("tflite")
    assert rec.export.formats == ["onnx"]


def test_list_and_mapping_defaults_are_not_shared_between_recipes():
    a, b = r.validate({}), r.validate({})
    a.model.kwargs["depth"] = 2
    a.export.quant.append("fp16")
    assert b.model.kwargs == {} and b.export.quant == ["fp32"]
    assert r.ExportCfg().quant == ["fp32"]


def test_resolved_yaml_is_the_recipe_as_a_mapping_and_reads_back_to_it():
    """recipe.resolved.yaml and the resume fingerprint hash dump(): it is the typed recipe's to_dict() in schema
    order, stable between calls, and validating it again gives the same recipe."""
    import yaml

    rec = r.validate({"prune": {"target": {"keep": {"heads": 0.5}}},
                      "export": {"formats": ["onnx"], "quant": ["fp32", "int8-static"]},
                      "data": {"mean": [0.5], "std": [0.25]}, "model": {"kwargs": {"num_classes": 10, "img_size": 32}}},
                     overrides={"split.groups": 3})
    text = r.dump(rec)
    assert text == r.dump(rec)
    back = yaml.safe_load(text)
    assert back == rec.to_dict()
    assert list(back) == list(r.validate({}).to_dict())  # every section, in the schema's order
    assert r.dump(r.validate(back)) == text
    assert back["split"]["groups"] == 3 and back["prune"]["target"]["keep"]["heads"] == 0.5


def test_load_resolves_relative_paths_and_applies_overrides(tmp_path):
    (tmp_path / "m.pt").write_bytes(b"")
    path = tmp_path / "r.yaml"
    path.write_text("model:\n  checkpoint: m.pt\nsplit:\n  groups: 2\n")
    rec = r.load(str(path), {"split.groups": 3, "finetune.steps": 5})
    assert rec.model.checkpoint == str(tmp_path / "m.pt")
    assert rec.split.groups == 3 and rec.finetune.steps == 5
    with pytest.raises(RecipeError, match="finetune.steps must be in"):
        r.load(str(path), {"finetune.steps": -1})

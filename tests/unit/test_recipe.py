import pytest

from edvit_tool.config import recipe as r
from edvit_tool.errors import RecipeError


def test_defaults_fill_an_empty_recipe():
    rec = r.validate({"model": {"checkpoint": "x.pt"}})
    assert rec["split"]["groups"] == 4
    assert rec["prune"]["target"]["params_ratio"] == 0.25
    assert rec["export"]["quant"] == ["fp32"]


@pytest.mark.parametrize("raw, needle", [
    ({"prune": {"critrion": "taylor"}}, "unknown key prune.critrion (valid: criterion"),
    ({"split": {"groups": "four"}}, "split.groups must be an integer, got 'four'"),
    ({"prune": {"target": {"params_ratio": 1.5}}}, "prune.target.params_ratio must be in (0, 1], got 1.5"),
    ({"split": {"strategy": "random"}}, "split.strategy must be one of balanced, similarity, got 'random'"),
    ({"export": {"quant": ["int4"]}}, "export.quant must be one of fp32, fp16, int8-dynamic, int8-static, got 'int4'"),
    ({"data": {"kind": "npz"}}, "data.root is required for data.kind=npz"),
    ({"data": {"distort": "yes"}}, "data.distort must be true/false, got 'yes'"),
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
    assert rec["split"]["groups"] == 3 and rec["prune"]["target"]["params_ratio"] == 0.5 and rec["seed"] == 0
    with pytest.raises(RecipeError, match="split.groups must be an integer"):
        r.validate({}, overrides={"split.groups": "x"})


def test_explicit_keep_ratios_replace_the_params_ratio():
    rec = r.validate({"prune": {"target": {"keep": {"heads": 0.5, "mlp": 0.25}}}})
    assert rec["prune"]["target"]["params_ratio"] is None
    assert rec["prune"]["target"]["keep"]["heads"] == 0.5


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(RecipeError, match="bad.yaml: not valid YAML at line"):
        r.load(str(bad))
    with pytest.raises(RecipeError, match="recipe file not found"):
        r.load(str(tmp_path / "missing.yaml"))

import numpy as np
import pytest

from edvit_tool.compile import partition as P
from edvit_tool.compile.teacher import class_similarity
from edvit_tool.errors import RecipeError


def test_balanced_is_contiguous_with_sizes_differing_by_at_most_one():
    assert P.balanced(10, 4) == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
    assert P.balanced(5, 5) == [[0], [1], [2], [3], [4]]
    assert P.balanced(7, 1) == [list(range(7))]


def test_k_larger_than_the_class_count_is_a_recipe_error():
    with pytest.raises(RecipeError, match=r"split.groups must be between 1 and the number of classes \(3\), got 4"):
        P.partition("balanced", 3, 4)


def test_similarity_puts_confusable_classes_together():
    # classes {0,3} and {1,2} are near-duplicates; balanced sizes of 2
    feats = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 0.1], [1, 0.05, 0]], dtype=float)
    sim = class_similarity(np.repeat(feats, 5, axis=0), np.repeat(np.arange(4), 5), 4)
    assert P.partition("similarity", 4, 2, sim) == [[0, 3], [1, 2]]


def test_similarity_covers_every_class_once_with_balanced_sizes():
    rng = np.random.default_rng(0)
    sim = rng.normal(size=(11, 11))
    groups = P.similarity(sim, 3)
    assert sorted(c for g in groups for c in g) == list(range(11))
    assert sorted(len(g) for g in groups) == [3, 4, 4]

"""zoo-s retrained with other seeds: shipped beside the family, never in it."""
import dataclasses

import pytest

import explorer as ex
from explorer import zoo
from explorer.zoo import seeds


def test_the_replicas_ship_but_the_family_keeps_its_four_sizes():
    assert zoo.names() == ["zoo-xs", "zoo-s", "zoo-m", "zoo-l"]
    assert seeds.available() == [0, *seeds.SEEDS]
    assert seeds.path(0) == zoo.path("zoo-s")


def test_a_replica_differs_from_zoo_s_only_in_its_seed():
    base, other = zoo.spec("zoo-s"), seeds.spec(2)
    assert dataclasses.replace(other, name=base.name, seed=base.seed) == base
    a, b = ex.load(str(seeds.path(0))), ex.load(str(seeds.path(1)))
    assert a.facts.params == b.facts.params
    wa, wb = a.hf.model.layers[0].mlp.up_proj.weight, b.hf.model.layers[0].mlp.up_proj.weight
    assert not bool((wa == wb).all())


def test_a_replica_that_was_never_trained_says_how_to_train_it():
    with pytest.raises(FileNotFoundError, match=r"python -m explorer.zoo.seeds 7"):
        seeds.path(7)
    with pytest.raises(ValueError, match="seed=-1"):
        seeds.spec(-1)

"""The sharding rules table (`parallel.rules`): logical names -> mesh axes, one place."""

import jax
import pytest
from jax.sharding import PartitionSpec as P

from dreamlayer_jax.parallel import rules
from dreamlayer_jax.parallel.mesh import batch_sharding, fsdp_spec, layer_sharding, make_mesh


def test_logical_names_map_through_the_table():
    assert rules.logical_spec(("batch", "layer", "tokens")) == P(("data", "fsdp"), "layer", None)
    assert rules.logical_spec(("batch", None)) == P(("data", "fsdp"), None)
    assert rules.logical_spec(rules.LAYOUTS["token_owner"]) == P(("data", "fsdp"), None)
    # a mesh without "fsdp" shards batches over "data" alone
    assert rules.logical_spec(("batch",), mesh_axes=("data", "layer")) == P(("data",))
    with pytest.raises(KeyError, match="no rule"):
        rules.logical_spec(("nonsense",))
    with pytest.raises(ValueError, match="twice"):
        rules.logical_spec(("layer", "layer"))
    names = [name for name, _ in rules.RULES]
    assert len(names) == len(set(names))


def test_layout_pads_and_cuts():
    assert rules.layout("layer_valid", 4) == ("batch", "layer", None, None)
    assert rules.layout("text", 2) == ("batch", "layer")


def test_param_rule():
    rule = rules.PARAM_RULE
    assert rules.param_spec((4, 4), 8) == P()  # under min_size: replicated
    assert rules.param_spec((320, 1280), 8) == P(None, "fsdp")  # largest divisible axis
    assert rules.param_spec((1280, 3, 3, 320), 8) == P("fsdp", None, None, None)
    assert rules.param_spec((1031, 7), 8) == P()  # no divisible axis
    assert rules.param_spec((4096,), 1) == P()  # no fsdp axis to speak of
    assert fsdp_spec((320, 1280), 8) == rules.param_spec((320, 1280), 8, rule)


def test_mesh_helpers_follow_the_rules():
    mesh = make_mesh(2, 2, 2, devices=jax.devices()[:8]) if jax.device_count() >= 8 \
        else make_mesh(1, 1, 1, devices=jax.devices()[:1])
    assert layer_sharding(mesh, 5).spec == P(("data", "fsdp"), "layer", None, None, None)
    assert batch_sharding(mesh, 2).spec == P(("data", "fsdp"), None)
    tree = {"w": jax.ShapeDtypeStruct((64, 32), "float32"),
            "b": jax.ShapeDtypeStruct((32,), "float32")}
    shardings = rules.param_shardings(mesh, tree)
    fsdp = mesh.shape["fsdp"]
    assert shardings["w"].spec == (P("fsdp", None) if fsdp > 1 else P())
    assert shardings["b"].spec == P()
    assert "batch" in rules.describe()

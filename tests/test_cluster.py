import copy
from pathlib import Path

import pytest
import yaml

CLUSTER = Path(__file__).parents[1] / "cluster.yaml"


def launcher_checks(config):
    """What `ray up` checks before it starts anything: defaults filled in, then Ray's own schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


def test_cluster_yaml_is_a_valid_launcher_config_for_this_project():
    config = yaml.safe_load(CLUSTER.read_text())
    launcher_checks(config)
    nodes = config["available_node_types"]
    assert nodes[config["head_node_type"]]["resources"] == {"CPU": 0}  # the head runs the driver only
    workers = [node for name, node in nodes.items() if name != config["head_node_type"]]
    assert workers and all(node["min_workers"] <= node["max_workers"] <= config["max_workers"] for node in workers)
    assert config["docker"]["image"].startswith("rayproject/ray:2.60.0") and config["docker"]["image"].endswith("-gpu")
    assert any("pip install" in command and "dsseg" in command for command in config["setup_commands"])

    broken = copy.deepcopy(config)
    broken["head_node_type"] = "missing"
    with pytest.raises(ValueError, match="head_node_type"):
        launcher_checks(broken)

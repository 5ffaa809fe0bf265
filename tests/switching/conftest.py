import pytest

from oserve.costmodel.catalog import load_models, parse_cluster
from oserve.costmodel.cost_model import CostModel
from oserve.switching import IoProfile, LinkModel


@pytest.fixture(scope="session")
def cost70():
    return CostModel(load_models().get("llama-2-70b"))


@pytest.fixture(scope="session")
def cost13():
    return CostModel(load_models().get("llama-2-13b"))


@pytest.fixture(scope="session")
def cluster2():
    return parse_cluster("2x8xH100")


@pytest.fixture(scope="session")
def links2(cluster2):
    return LinkModel(cluster2, IoProfile.h100())


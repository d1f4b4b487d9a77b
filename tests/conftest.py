import os

# Tests never touch the network: the Hub is off for every test and subprocess.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def zoo_models():
    import explorer as ex

    return {name: ex.load(name) for name in ex.zoo.names()}


@pytest.fixture(scope="session")
def tiny_model(zoo_models):
    return zoo_models["zoo-xs"]


@pytest.fixture(scope="session")
def mid_model(zoo_models):
    return zoo_models["zoo-m"]

"""Datasets load from IDX files (small generated ones; the real ones with --full) with the right
shapes; splits and subsets are seeded."""

from __future__ import annotations

import pytest
import torch
from conftest import IDX_SIZES, make_cfg, make_idx_images

from stagetrain.core.errors import StagetrainError
from stagetrain.data import epoch_permutation
from stagetrain.datasets import dataset_meta, load_data
from stagetrain.runs.runner import train


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_mnist_family_loads_idx_files_through_torchvision(idx_root, name):
    cfg = make_cfg(f"dataset={name}", f"dataset.root={idx_root}")
    data = load_data(cfg.dataset, seed=0)
    assert data.train.x.dtype == torch.uint8 and data.in_shape == (1, 28, 28) and data.num_classes == 10
    assert len(data.train) + len(data.val) == IDX_SIZES["train"] and len(data.test) == IDX_SIZES["t10k"]
    x, y = make_idx_images(IDX_SIZES["t10k"], int(name == "fashion_mnist"), 1)
    assert torch.equal(data.test.x[:, 0], x) and torch.equal(data.test.y, y.long()), "the bytes written"


def test_missing_idx_files_say_how_to_get_them_offline(idx_root, tmp_path):
    for name in ("mnist", "fashion_mnist"):
        cfg = make_cfg(f"dataset={name}", f"dataset.root={tmp_path}")
        with pytest.raises(StagetrainError) as err:
            load_data(cfg.dataset, seed=0)
        message = str(err.value)
        folder = "MNIST" if name == "mnist" else "FashionMNIST"
        assert str(tmp_path / folder / "raw") in message and "STAGETRAIN_DATA" in message
        assert "dataset.root" in message and "train-images-idx3-ubyte" in message
        assert "download=True" not in message
    assert "dataset-fashion-mnist" in message  # Debian's package, for Fashion-MNIST


@pytest.mark.full
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_mnist_family_loads_from_shared_data(data_root, name):
    cfg = make_cfg(f"dataset={name}", f"dataset.root={data_root}")
    data = load_data(cfg.dataset, seed=0)
    assert data.train.x.dtype == torch.uint8 and tuple(data.train.x.shape[1:]) == (1, 28, 28)
    assert len(data.train) + len(data.val) == 60000 and len(data.test) == 10000
    assert data.num_classes == 10 and data.in_shape == (1, 28, 28)
    assert dataset_meta(cfg.dataset)[:3] == ((1, 28, 28), 10, len(data.train))


def test_digits_split_is_seeded_and_disjoint():
    cfg = make_cfg()
    a, b = load_data(cfg.dataset, seed=0), load_data(cfg.dataset, seed=0)
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.train.y, b.train.y)
    c = load_data(cfg.dataset, seed=1)
    assert not torch.equal(a.val.y, c.val.y)
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    assert dataset_meta(cfg.dataset)[2] == len(a.train)


def test_digits_are_scikit_learns_with_its_stratified_split():
    """Read without importing scikit-learn, the data and split equal what it would give."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from stagetrain.datasets.digits.reader import load

    d = load_digits()
    tr, te = train_test_split(range(len(d.target)), test_size=0.2, random_state=0, stratify=d.target)
    train, test, _ = load(None, 0)
    assert torch.equal(train.x, torch.tensor(d.images[tr], dtype=torch.uint8).unsqueeze(1))
    assert torch.equal(test.y, torch.tensor(d.target[te]))


def test_class_subset_is_relabelled_in_order():
    cfg = make_cfg("dataset.classes=[5,6,7,8,9]")
    data = load_data(cfg.dataset, seed=0)
    assert data.num_classes == 5
    assert set(data.train.y.tolist()) == set(data.test.y.tolist()) == {0, 1, 2, 3, 4}


def test_labeled_fraction_is_stratified_and_seeded():
    cfg = make_cfg("dataset.labeled_fraction=0.1")
    data = load_data(cfg.dataset, seed=0)
    labels = data.train.y[data.labeled]
    assert abs(len(data.labeled) - 0.1 * len(data.train)) <= 10
    assert set(labels.tolist()) == set(range(10))
    assert torch.equal(data.labeled, load_data(cfg.dataset, seed=0).labeled)


def test_synthetic_is_seeded_and_shaped():
    cfg = make_cfg("dataset=synthetic", "dataset.shape=[3,32,32]", "dataset.n_train=300", "dataset.n_test=50")
    a, b = load_data(cfg.dataset, seed=3), load_data(cfg.dataset, seed=3)
    assert a.in_shape == (3, 32, 32) and torch.equal(a.train.x, b.train.x)


def test_epoch_order_is_a_pure_function_of_seed_stage_epoch():
    p = epoch_permutation(100, 0, 1, 2, torch.device("cpu"))
    assert torch.equal(p, epoch_permutation(100, 0, 1, 2, torch.device("cpu")))
    assert not torch.equal(p, epoch_permutation(100, 0, 1, 3, torch.device("cpu")))
    assert sorted(p.tolist()) == list(range(100))


def test_cnn_trains_on_cifar_shaped_synthetic_images(tmp_path):
    info = train(make_cfg("strategy=scratch", "model=cnn", "dataset=synthetic", "dataset.shape=[3,32,32]",
                          "dataset.n_train=600", "dataset.n_test=200", "train.epochs=3"), tmp_path / "r")
    assert info["status"] == "completed" and info["final"]["test/acc"] > 0.3


@pytest.mark.slow
@pytest.mark.full
def test_one_epoch_of_mnist_reaches_095(data_root, tmp_path):
    info = train(make_cfg("strategy=scratch", "dataset=mnist", f"dataset.root={data_root}",
                          "train.epochs=1", "model.widths=[256,128]", "train.batch_size=64"), tmp_path / "r")
    assert info["final"]["test/acc"] >= 0.95

"""dataset=imagefolder on folders of PNGs the tests write: splits, classes, statistics in
run.json, memory and stream alike, resizing, and clear errors for broken folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import final_weights, make_cfg

from stagetrain.core.errors import StagetrainError
from stagetrain.data.stream import sequential_batches
from stagetrain.datasets import dataset_meta, load_data
from stagetrain.runs.config import validate
from stagetrain.runs.runner import train

CLASSES = ("cat", "dog", "owl")


def write_pngs(folder: Path, per_class: int, size: int = 12, seed: int = 0) -> None:
    """``per_class`` learnable RGB images per class: a class colour plus noise."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    for c, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True, exist_ok=True)
        base = torch.zeros(3, 1, 1)
        base[c] = 180
        for i in range(per_class):
            x = (base + 60 * torch.rand(3, size, size, generator=g)).clamp(0, 255).to(torch.uint8)
            Image.fromarray(x.permute(1, 2, 0).numpy()).save(folder / name / f"{i}.png")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    write_pngs(root / "train", 40)
    return root


def _cfg(root: Path, *overrides: str):
    return make_cfg("strategy=scratch", "dataset=imagefolder", f"dataset.root={root}", "model=cnn",
                    "model.channels=[8]", "train.epochs=2", "train.batch_size=16", "plots=false", *overrides)


def test_imagefolder_trains_and_records_classes_statistics_and_storage(folder, tmp_path):
    infos = {st: train(_cfg(folder, f"dataset.storage={st}", "dataset.workers=2"), tmp_path / st)
             for st in ("memory", "stream")}
    ref, got = final_weights(tmp_path / "memory"), final_weights(tmp_path / "stream")
    assert all(torch.equal(ref[k], got[k]) for k in ref), "memory and stream trained differently"
    data = infos["stream"]["data"]
    assert data["class_to_idx"] == {name: i for i, name in enumerate(CLASSES)}
    assert data["storage"] == "stream" and len(data["mean"]) == 3 and data["mean"] == infos["memory"]["data"]["mean"]
    assert "no test/ folder" in data["test_split"] and "val_fraction" in data["val_split"]
    assert infos["memory"]["final"]["test/acc"] > 0.9  # three colours: learnable in two epochs


def test_val_and_test_folders_are_used_and_images_resized(tmp_path):
    write_pngs(tmp_path / "train", 10, size=20)
    write_pngs(tmp_path / "val", 4, size=20, seed=1)
    write_pngs(tmp_path / "test", 5, size=20, seed=2)
    cfg = validate(_cfg(tmp_path, "dataset.image_size=8", "dataset.channels=1"))
    data = load_data(cfg.dataset, seed=0)
    assert (len(data.train), len(data.val), len(data.test)) == (30, 12, 15)
    assert data.in_shape == (1, 8, 8) and data.train.x.dtype == torch.uint8
    assert dataset_meta(cfg.dataset)[:3] == ((1, 8, 8), 3, 30)  # what a dry run plans with
    assert data.info["val_split"] == "val/" and data.info["test_split"] == "test/"


def test_augmentation_switches_the_feature_cache_off_with_a_note(folder, tmp_path):
    info = train(make_cfg("strategy=layerwise", "dataset=imagefolder", f"dataset.root={folder}", "model.widths=[16,16]",
                          "strategy.epochs_per_layer=2", "strategy.finetune.epochs=1", "dataset.augment=flip_crop",
                          "dataset.workers=0", "plots=false"), tmp_path / "run")
    assert info["data"]["storage"] == "stream" and info["data"]["augment"] == "flip_crop"
    assert "cached features would freeze one augmentation" in info["stages"][1]["cache"]


@pytest.mark.parametrize("broken, words", [
    ("no_train", "train is not a folder"),
    ("empty", "has no class folders"),
    ("empty_class", "hold no images"),
])
def test_broken_folders_get_a_clear_error(tmp_path, broken, words):
    if broken != "no_train":
        (tmp_path / "train").mkdir()
    if broken == "empty_class":
        write_pngs(tmp_path / "train", 3)
        (tmp_path / "train" / "zebra").mkdir()
    cfg = validate(_cfg(tmp_path))
    with pytest.raises(StagetrainError, match=words):
        load_data(cfg.dataset, seed=0)


def _folder_with_a_broken_png(tmp_path: Path) -> tuple[Path, Path]:
    write_pngs(tmp_path / "data" / "train", 6)
    bad = tmp_path / "data" / "train" / "dog" / "3.png"
    bad.write_bytes(b"not a png at all")
    return tmp_path / "data", bad


@pytest.mark.parametrize("storage, workers", [("memory", 0), ("stream", 2)])
def test_an_unreadable_image_is_named_in_one_paragraph(tmp_path, storage, workers):
    """Read in this process or by a DataLoader worker: the same StagetrainError (which the
    CLI prints without a traceback), not the worker's wrapped traceback."""
    root, bad = _folder_with_a_broken_png(tmp_path)
    cfg = validate(_cfg(root, f"dataset.storage={storage}", f"dataset.workers={workers}"))
    with pytest.raises(StagetrainError) as e:
        data = load_data(cfg.dataset, seed=0)  # in memory: every image is read here
        for split in (data.train, data.val, data.test):  # streamed: read by the loader's workers
            list(sequential_batches(split.x, 4))
    assert str(e.value).startswith(f"dataset=imagefolder: cannot read {bad} as an image")
    assert "Traceback" not in str(e.value) and "\n" not in str(e.value)

"""Datasets (a registry of (train, test) factories) and the tensor batch loader."""

from mbq.core.data._registry import create_dataset, list_datasets, register_dataset
from mbq.core.data.dataset import ImageDataset, TensorImageDataset, split_holdout, take_subset
from mbq.core.data.loader import Batch, BatchLoader

# importing a dataset module registers it
from mbq.core.data import digits, fake, imagefolder, mnist, torchvision_sets  # noqa: E402,F401

__all__ = [
    "create_dataset", "list_datasets", "register_dataset", "split_holdout", "take_subset",
    "BatchLoader", "Batch", "ImageDataset", "TensorImageDataset",
]

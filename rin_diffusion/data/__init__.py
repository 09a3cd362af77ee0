"""Input pipeline: TFDS random-access sources, preprocessing and deterministic per-process batches."""

from rin_diffusion.data.pipeline import (
    BatchIterator,
    BatchMaker,
    DatasetNotReadyError,
    TfdsSource,
    make_iterator,
    make_source,
    preprocess_image,
    validate_dataset_config,
)

__all__ = [
    "BatchIterator",
    "BatchMaker",
    "DatasetNotReadyError",
    "TfdsSource",
    "make_iterator",
    "make_source",
    "preprocess_image",
    "validate_dataset_config",
]

"""Labelled dataset on disk: format (images/, conditions/, labels.jsonl + JSON Schema), atomic
writer, torch reader, consistency check and repair, FreiHAND-style export."""

from .check import CheckReport, Problem, check_dataset
from .format import (
                     CONDITION_NAMES,
                     DatasetLock,
                     condition_path,
                     file_sha256,
                     image_path,
                     labels_schema,
                     read_labels,
                     record_errors,
                     update_records,
)
from .freihand import FreiHandExport, export_freihand
from .reader import HandDataset
from .writer import PNG_COMPRESS_LEVEL, DatasetWriter, to_uint8_image

__all__ = [
    "CONDITION_NAMES", "PNG_COMPRESS_LEVEL", "CheckReport", "DatasetLock", "DatasetWriter", "FreiHandExport",
    "HandDataset", "Problem", "check_dataset", "condition_path", "export_freihand", "file_sha256",
    "image_path", "labels_schema", "read_labels", "record_errors", "to_uint8_image", "update_records",
]

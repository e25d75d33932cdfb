"""Data: the seeded toy world and loaders that turn any configured source into records and datasets."""

from .loaders import load_records, map_rows, to_conversational, to_dataset
from .toy import DEFAULT_SIZES, build_toy_world, read_jsonl, write_jsonl, write_toy_world

__all__ = ["DEFAULT_SIZES", "build_toy_world", "load_records", "map_rows", "read_jsonl", "to_conversational",
           "to_dataset", "write_jsonl", "write_toy_world"]

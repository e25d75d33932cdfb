"""Data: the seeded toy world, file and hub sources, the mapping from rows to records, and loaders."""

from .loaders import SOURCE_KEYS, check_spec, load_records, local_files, messages, to_conversational, to_dataset
from .toy import DEFAULT_SIZES, build_toy_world, read_jsonl, write_jsonl, write_toy_world

__all__ = ["DEFAULT_SIZES", "SOURCE_KEYS", "build_toy_world", "check_spec", "load_records", "local_files",
           "messages", "read_jsonl", "to_conversational", "to_dataset", "write_jsonl", "write_toy_world"]

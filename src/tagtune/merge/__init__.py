"""Merge single-file SDXL checkpoints tensor by tensor (`tagtune merge`).

- `checkpoints`: `MergeSpec`, `merge_checkpoints` (weighted sum, add difference).
- `blocks`: per-block weights (`parse_blocks`).
- `io`: streaming reads and writes of the files being merged.
"""

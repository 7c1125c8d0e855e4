"""Merge single-file SDXL checkpoints tensor by tensor (`tagtune merge`).

- `checkpoints`: `MergeSpec`, `merge_checkpoints` (weighted sum, add difference).
- `blocks`: per-block weights (`parse_blocks`).
- `io`: streaming reads and writes of the files being merged.
- `lora_extract`: `extract_lora` (`tagtune extract-lora`: TUNED - BASE as a kohya LoRA by
  truncated SVD per module, streaming, with the error each rank leaves).
- `lora_merge`: `merge_loras` (`tagtune merge-lora`: kohya LoRAs baked into a checkpoint).
"""

"""Synthetic data for tests, benchmarks and the demo: nothing here is a real image or post.

- `collection`: `write_collection`, `iter_synthetic_posts`, a gallery-dl-shaped collection
  of coloured shapes with harmless tags; `THEMES`, `theme_image`.
- `runs`: tiny training runs on the tiny model (`python -m tagtune.synthetic.runs WS`),
  the processes that the SIGKILL, DDP and ZeRO tests launch.
"""

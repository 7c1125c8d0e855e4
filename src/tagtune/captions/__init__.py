"""Captions: the catalog's posts -> one caption each (`tagtune caption WS`).

- `rules`: the caption rules as pure functions (`build_caption`, `explain_caption`).
- `build`: `build_captions(ws)`, `show_caption(ws, post_id)`: the verb's library side.
- `fast`: the same rules over Arrow columns, for whole catalogs.
- `write`: chunked, crash-safe writing of captions.jsonl.
- `sidecars`: `.txt` files beside the images, never over a hand-written one.
- `tokens`: CLIP token counts of the captions.
"""

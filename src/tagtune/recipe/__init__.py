"""The recipe (`WS/tagtune.toml`): one pydantic model of every setting, and its file.

- `model`: `Recipe` and its sections, `load_recipe(path)`.
- `validation`: the `[validation]` section (held-out set, evaluation).
- `errors`: pydantic errors turned into `tagtune` errors that name the key.
- `toml_io`: `render_recipe`, the commented TOML a new workspace starts with.
- `workspace`: `workspace_recipe(ws)`, `init_workspace(path)`.
"""

"""The core every stage stands on; it imports nothing else of tagtune.

- `errors`: `TagtuneError` and its kinds (recipe, workspace, input, model file, dependency,
  training), each naming the file, field and value.
- `atomic`: crash-safe writes (`atomic_path`, `atomic_open`, `write_text_atomic`).
- `outputs`: the overwrite rule (`claim_output`: never replace what tagtune did not write).
- `stale_temps`: `clean_stale_temps`, the temp files of killed runs.
- `untrusted`: bounded reads of files that come from outside (`read_regular`, `parse_json`).
- `workers`: a worker thread fed through a queue (hashing and writing overlap reading).
- `workspace`: `Workspace`, `open_workspace` (the folder layout, `RECIPE_FILE`).
- `catalog`: the DuckDB catalog (`open_catalog`, `check_subset`, `transaction`).
- `subsets`: `render_clause`, a stage's subset expression parsed and rendered as safe SQL.

Modules are imported by their own names (`tagtune.core.workspace`); this file imports nothing,
so `import tagtune.core.errors` stays light.
"""

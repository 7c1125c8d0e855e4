"""Tag analytics over the captions (`tagtune tags WS ...`).

- `analytics`: `top_tags`, `similar_tags`, `suggest_tags`, `recommended_tags`.
- `index`: the sparse post x tag matrix the queries run on.
- `chart`: `write_tags_chart`, a bar chart of the top tags.
"""

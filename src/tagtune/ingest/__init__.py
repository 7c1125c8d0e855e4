"""Ingest: readers for every SOURCE kind, image checks, favorites, the catalog writer, and the
safety filter and tag normaliser it judges posts with (`safety`, `tag_normalize`, `verdicts`)."""

from tagtune.ingest.driver import apply_favorites, ingest, ingest_source, update_favorites
from tagtune.ingest.favorites import mark_favorites, parse_favorites
from tagtune.ingest.images import REASONS, check_image
from tagtune.ingest.report import catalog_summary, read_status, workspace_status
from tagtune.ingest.sources import detect_kind
from tagtune.ingest.verdicts import catalog_is_current, sync_with_recipe

__all__ = [
    "REASONS",
    "apply_favorites",
    "catalog_is_current",
    "catalog_summary",
    "check_image",
    "detect_kind",
    "ingest",
    "ingest_source",
    "mark_favorites",
    "parse_favorites",
    "read_status",
    "sync_with_recipe",
    "update_favorites",
    "workspace_status",
]

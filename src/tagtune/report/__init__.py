"""`tagtune report`: one HTML page that shows a workspace and its runs.

Sections: Dataset (counts, exclusions, problems, top tags, captions), Buckets (histogram and
the crop training sees), Runs (loss, learning rate, validation, resumes, sample grids) and
Outputs (exports and hashes, model card, recommended tags). `write_report` writes it once;
`watch_report` rewrites it while a run trains.
"""

from tagtune.report.build import REPORT_NAME, ReportResult, report_path, write_report
from tagtune.report.watch import watch_report

__all__ = ["REPORT_NAME", "ReportResult", "report_path", "watch_report", "write_report"]

"""Run reports: figures (:mod:`.plots`), the self-contained HTML page (:mod:`.html`) and the stage that
assembles them (:mod:`.build`). Imported lazily by the pipeline; matplotlib is only loaded here."""

from sslguard.report.html import Figure, Notice, ReportContent, render_html

__all__ = ["Figure", "Notice", "ReportContent", "render_html"]

"""A build's reports: report.json + report.md (summary.py, written by compile), and the plots + self-contained
report.html (`edvit-tool report`, plots.py / html.py). Importing this package stays cheap (no matplotlib)."""

from .summary import build_report, refresh_reports, render_markdown, write_reports

__all__ = ["build_report", "refresh_reports", "render_markdown", "write_reports", "write_html_report"]


def write_html_report(build_dir: str, profiles: str | None = None, plan: str | None = None,
                      deployment: str | None = None, out_dir: str | None = None) -> str:
    """Write report.html (+ the PNGs) for `build_dir`; returns the HTML's path. See html.write_html_report."""
    from .html import write_html_report as write

    return write(build_dir, profiles=profiles, plan=plan, deployment=deployment, out_dir=out_dir)

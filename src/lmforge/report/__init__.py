"""The run report: one self-contained HTML page made from a run's manifests and metric files.

    artifacts.py   reading RUN/: stage manifests in run order, JSON and JSONL files
    parts.py       what sections are made of: Section, Table, cell formatting
    figures.py     matplotlib charts as inline PNG data
    data.py, training.py, results.py, lineage.py   one builder per section
    page.py        the Jinja2 page (templates/) and `write_report`

It reads artifacts only and never imports training, model or serving code, so a report can be
made anywhere the run directory can be read.
"""

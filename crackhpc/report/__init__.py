"""`crackhpc report results/<sweep>`: run folders → summary.csv (a row per run), comparison.csv (per
framework, model and the settings that vary, across seeds), and report.md / report.html with their
figures in report/. Pending and failed runs stay in as rows; only completed runs get figures, and
of a large sweep only those a person looks at: the best and the worst runs, or those asked for.

Files only: no framework is imported, so a report runs on the login node while jobs are queued.
Any file of a run folder may be damaged (a job killed mid-write on a filesystem without atomic
rename, a disk that filled, a hand edit): each damaged file is one line naming it and what to do,
and every other run is still reported.

    reading   run folders and the read cache       evidence  curves, confusion, misclassified images
    tables    summary.csv and comparison.csv       document  Markdown/HTML (also predict's page)
    build     report.md/.html and the figures
"""

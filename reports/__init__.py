"""Reports: read a run's output folder, write matched.csv and report.html (`reports.html.write_report`)."""

"""report.pdf, the homework's report, built from recorded runs: build.py is the command,
sections.py what each question's section reads and computes, document.py the reportlab page
layout, demo.py the runs behind the committed report.pdf (the offline demo's)."""

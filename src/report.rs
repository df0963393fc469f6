//! Plots (SVG and PNG), length analysis and the Markdown report for one or several finished runs.

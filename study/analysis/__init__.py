"""Analysis: from the tidy table of per-seed results to statistics and reports.

``stats`` compares groups (arms, generations, roles) across seeds with paired statistics;
``power`` says how many seeds a comparison needs.
"""

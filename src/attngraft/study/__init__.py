"""The reference studies: a study file in, trained, tested and measured cells out.

``configs/studies/<name>.yaml`` → ``results.csv``/``results.json``/``results.md`` and plots, in one directory per
study run.
"""

from attngraft.study.config import Cell, Run, Study, find_study, list_studies, load_study
from attngraft.study.run import StudyOptions, default_directory, run_study

__all__ = [
    "Cell",
    "Run",
    "Study",
    "StudyOptions",
    "default_directory",
    "find_study",
    "list_studies",
    "load_study",
    "run_study",
]

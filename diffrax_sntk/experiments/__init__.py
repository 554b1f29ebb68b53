"""Reproducible experiments built on the public API."""

from ._config import StudentTeacherConfig as StudentTeacherConfig
from ._sweep import CRITERIA as CRITERIA, run_sweep as run_sweep, summarise as summarise
from .student_teacher import (
    REPORT_SCHEMA as REPORT_SCHEMA,
    Interrupted as Interrupted,
    run_student_teacher as run_student_teacher,
)

"""Reproducible experiments built on the public API."""

from .student_teacher import (
    REPORT_SCHEMA as REPORT_SCHEMA,
    Interrupted as Interrupted,
    StudentTeacherConfig as StudentTeacherConfig,
    run_student_teacher as run_student_teacher,
)

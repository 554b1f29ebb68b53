"""Configuration of the student–teacher experiment and its sweep."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import jax

__all__ = ["StudentTeacherConfig"]


def require_x64(name: str) -> None:
    """Raises unless float64 is enabled. The experiment never enables it itself: a library call
    must not change global JAX configuration (the `diffrax-sntk` command does enable it)."""
    if not jax.config.read("jax_enable_x64"):
        raise ValueError(
            f"`{name}` needs float64 (the effective rank and the normal forms lose their small "
            "eigenvalues in float32): call `jax.config.update(\"jax_enable_x64\", True)` at the "
            "start of your program (the `diffrax-sntk` command does)."
        )

_STUDENTS = ("shared", "independent")
_TRAINABLE = ("W", "W,b,U")
_TASKS = ("pitchfork", "fold", "hopf")
_HOPF_FREQUENCY = ("fixed", "trained")
# Fields of the fold and Hopf tasks; left out of `to_dict` while `None`, so that a pitchfork
# run keeps the configuration (run id, cache key) it had before these tasks existed.
_TASK_FIELDS = ("hopf_frequency", "teacher_bias", "teacher_frequency", "student_frequency")
_PR_METHODS = ("auto", "exact", "matfree")
_TRACKERS = ("initial", "births")
# Fields that change the analysis only: left out of the training cache key
# (`StudentTeacherConfig.training_key`), so a variant re-analyses the same training.
_ANALYSIS_FIELDS = ("tracker",)


@dataclasses.dataclass(frozen=True)
class StudentTeacherConfig:
    """Sizes, variant and hyperparameters of one student–teacher run (one seed, one learning rate).

    **Variant:**

    - `student`: `"shared"` (the first round's set-up: teacher and student share the direction q,
        the bulk, U and the readout; only the gain along q differs) or `"independent"` (teacher
        W_T = g_T q qᵀ + random bulk; student W_S = g_S q_S q_Sᵀ + its own random bulk, its own
        random U; both bulks have entries N(0, (bulk_gain/√N)²) with their q projected out).
    - `trainable`: `"W"` or `"W,b,U"` (default: `"W"` for shared, `"W,b,U"` for independent).
    - `task`: `"pitchfork"` (the teacher has passed a pitchfork along q), `"fold"` (the same
        teacher with a bias `teacher_bias`·q: an imperfect pitchfork whose far attractor the
        student, starting at gain `student_gain` with the same bias, must create in a
        saddle-node) or `"hopf"` (the teacher has a stable limit cycle, born in a supercritical
        Hopf of a rotation block of gain `teacher_gain` and frequency `teacher_frequency` in a
        plane; the student starts with damped oscillations, gain `student_gain`). See
        `experiments/_tasks.py` and `docs/fold_hopf_tasks.md`.
    - `hopf_frequency` (task `"hopf"`): `"fixed"` (the student's frequency is the teacher's and
        is not trained) or `"trained"` (it starts at `student_frequency` and is trained).
    - `teacher_bias` (fold; default 0.15), `teacher_frequency` (Hopf; default 1.0),
        `student_frequency` (Hopf, trained frequency; default 0.7).
    - `tracker`: which equilibria the analysis follows. `"initial"` (the default for the
        pitchfork task): the student's initial equilibrium only. `"births"` (always used by the
        fold and Hopf tasks; for the pitchfork task the pre-registered births-aware variant):
        trajectory-seeded equilibria too, so saddle-node births and deaths of other equilibria
        are crossings as well (`docs/student_teacher_protocol.md`). Analysis only: the
        training, and its cache, are those of the default.

    **Sizes:** `hidden` (N), `outputs` (observed units), `trials`, `times` observation times on
    [`t_start`, `t_end`] (`t_start` default `t_end / times`), input pulses on [0, `pulse_end`].

    **Training:** `learning_rate` of this run; `learning_rates`, the grid on which the optimizer
    comparison (criterion C5) is run; `steps`; `eval_every`; the natural gradient's `rank` and
    `refresh_every`.

    **Analysis:** `top_k` sNTK eigenvalues kept per evaluation; `pr_method` (`"exact"` from the
    eigenvalues of JᵀJ, `"matfree"` from `ds.effective_rank`, `"auto"`: exact for N < 64);
    `landscape_points`.
    """

    hidden: int = 10
    outputs: int = 2
    trials: int = 8
    times: int = 20
    t_start: float | None = None
    t_end: float = 20.0
    pulse_end: float = 1.0
    teacher_gain: float = 1.6
    student_gain: float = 0.5
    bulk_radius: float = 0.3
    bulk_gain: float = 0.8
    initial_spread: float = 1.0
    student: str = "shared"
    trainable: str | None = None
    task: str = "pitchfork"
    hopf_frequency: str | None = None
    teacher_bias: float | None = None
    teacher_frequency: float | None = None
    student_frequency: float | None = None
    learning_rate: float = 0.5
    learning_rates: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5)
    steps: int = 120
    eval_every: int = 1
    rank: int = 2
    refresh_every: int = 5
    top_k: int = 5
    pr_method: str = "auto"
    landscape_points: int = 21
    rtol: float = 1e-6
    atol: float = 1e-8
    seed: int = 0
    # Last, so that positional construction of the fields above is unchanged.
    tracker: str | None = None

    def __post_init__(self):
        def check(name, ok, what):
            if not ok:
                raise ValueError(f"`{name}` must be {what}, got {getattr(self, name)!r}.")

        check("student", self.student in _STUDENTS, f"one of {_STUDENTS}")
        check("trainable", self.trainable in (None,) + _TRAINABLE, f"one of {_TRAINABLE}")
        check("task", self.task in _TASKS, f"one of {_TASKS}")
        check("hopf_frequency", self.hopf_frequency in (None,) + _HOPF_FREQUENCY,
              f"None or one of {_HOPF_FREQUENCY}")
        check("hopf_frequency", self.hopf_frequency is None or self.task == "hopf",
              "None unless `task` is \"hopf\"")
        check("teacher_bias", self.teacher_bias is None or self.task == "fold",
              "None unless `task` is \"fold\"")
        for name in ("teacher_frequency", "student_frequency"):
            check(name, getattr(self, name) is None or self.task == "hopf",
                  "None unless `task` is \"hopf\"")
        check("hidden", self.task != "hopf" or self.hidden >= 3, "at least 3 for the Hopf task")
        check("trainable", self.task != "hopf" or self.trainable is None,
              "None for the Hopf task (it trains gain, bulk, U and, if trained, omega)")
        check("pr_method", self.pr_method in _PR_METHODS, f"one of {_PR_METHODS}")
        check("tracker", self.tracker in (None,) + _TRACKERS, f"None or one of {_TRACKERS}")
        check("tracker", self.tracker != "initial" or self.task == "pitchfork",
              "None or \"births\" for the fold and Hopf tasks (they always track births)")
        for name in ("hidden", "outputs", "trials", "times", "steps", "eval_every", "rank",
                     "refresh_every", "top_k", "landscape_points"):
            value = getattr(self, name)
            check(name, isinstance(value, int) and not isinstance(value, bool) and value > 0,
                  "a positive int")
        check("outputs", self.outputs <= self.hidden, "at most `hidden`")
        check("top_k", self.top_k >= 2, "at least 2")
        check("learning_rate", self.learning_rate > 0, "positive")
        check("learning_rates", len(self.learning_rates) > 0
              and all(lr > 0 for lr in self.learning_rates), "a non-empty tuple of positive rates")
        check("t_end", self.t_end > 0, "positive")
        check("t_start", self.t_start is None or 0 < self.t_start < self.t_end,
              "None or in (0, t_end)")
        if not isinstance(self.learning_rates, tuple):
            object.__setattr__(self, "learning_rates", tuple(float(v) for v in
                                                             self.learning_rates))

    @property
    def trained(self) -> tuple[str, ...]:
        """The trained model fields (CTRNN fields; for the Hopf task the rotation model's
        `gain`, `bulk`, `U` and, with a trained frequency, `omega`)."""
        if self.task == "hopf":
            base = ("gain", "bulk", "U")
            return base + (("omega",) if self.frequency_mode == "trained" else ())
        default = "W" if self.student == "shared" and self.task == "pitchfork" else "W,b,U"
        return tuple((self.trainable or default).split(","))

    @property
    def frequency_mode(self) -> str:
        """`hopf_frequency` with its default (`"fixed"`)."""
        return self.hopf_frequency or "fixed"

    @property
    def bias(self) -> float:
        """`teacher_bias` with its default (0.15)."""
        return 0.15 if self.teacher_bias is None else float(self.teacher_bias)

    @property
    def omega_teacher(self) -> float:
        return 1.0 if self.teacher_frequency is None else float(self.teacher_frequency)

    @property
    def omega_student(self) -> float:
        """The student's initial frequency: the teacher's when it is fixed."""
        if self.frequency_mode == "fixed":
            return self.omega_teacher
        return 0.7 if self.student_frequency is None else float(self.student_frequency)

    @property
    def tracks_births(self) -> bool:
        """Whether the analysis tracks births and deaths (`tracker` with its default)."""
        return self.task != "pitchfork" or self.tracker == "births"

    @property
    def task_label(self) -> str:
        """`pitchfork`, `fold`, `hopf_fixed` or `hopf_trained` (the summary's task groups)."""
        return f"hopf_{self.frequency_mode}" if self.task == "hopf" else self.task

    @property
    def first_time(self) -> float:
        return self.t_end / self.times if self.t_start is None else self.t_start

    @classmethod
    def preset(cls, name: str, **overrides) -> StudentTeacherConfig:
        """`"quick"`, `"default"` or `"full"`, with field overrides."""
        presets = {
            "quick": dict(hidden=4, trials=4, times=12, steps=40, eval_every=2,
                          landscape_points=13, learning_rates=(0.1, 0.5)),
            "default": {},
            "full": dict(hidden=32, trials=32, times=50, steps=600, eval_every=5, rank=4,
                         refresh_every=10),
        }
        if name not in presets:
            raise ValueError(f"`preset` must be one of {sorted(presets)}, got {name!r}.")
        return dataclasses.replace(cls(), **{**presets[name], **overrides})

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["learning_rates"] = list(self.learning_rates)
        for name in _TASK_FIELDS + _ANALYSIS_FIELDS:
            if d[name] is None:
                d.pop(name)
        return d

    def group(self) -> dict:
        """The configuration without `seed` and `learning_rate`: runs of one group share one
        compiled program (seeds vmapped) and one optimizer comparison (all rates)."""
        d = self.to_dict()
        d.pop("seed")
        d.pop("learning_rate")
        return d

    def group_key(self) -> str:
        return hashlib.sha1(json.dumps(self.group(), sort_keys=True).encode()).hexdigest()[:12]

    def training_key(self) -> str:
        """`group_key` without the analysis-only fields (`tracker`): the training cache's key,
        so an analysis variant reuses the training of its default."""
        g = {k: v for k, v in self.group().items() if k not in _ANALYSIS_FIELDS}
        return hashlib.sha1(json.dumps(g, sort_keys=True).encode()).hexdigest()[:12]

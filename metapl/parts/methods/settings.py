"""The methods' settings: the config's `method` section of each method, as dataclasses that declare their defaults
and allowed values. Torch-free, so that the config (and `metapl config`) can be built without importing PyTorch;
each method's module imports its settings from here and registers them in its MethodEntry.

Each class also says which data inputs its method reads, so that the config refuses a setting the method would
ignore (config.unread_inputs) without importing the method: READS_UNLABELED (unlabeled images: data.unlabeled_dir,
data.unlabeled_shards) and READS_STORED (a teacher's stored distributions: data.label_dir)."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from metapl.core.errors import ConfigError
from metapl.core.settings import above, at_least, choice, fraction, ranged

if TYPE_CHECKING:
    from metapl.run.config import Config


@dataclass
class SupervisedSettings:
    """The config's `method` section for method.name=supervised."""

    READS_UNLABELED: ClassVar[bool] = False
    READS_STORED: ClassVar[bool] = False

    label_smoothing: float = fraction(0.0)  # ε of the label-smoothed CE


TSA_SCHEDULES = ("none", "linear", "log", "exp")


@dataclass
class UDALosses:
    """The supervised CE and UDA's consistency loss on one network's logits (parts/methods/uda.py: auxiliary_losses)."""

    label_smoothing: float = fraction(0.0)  # ε of the supervised CE
    tsa: str = choice(
        "none", TSA_SCHEDULES
    )  # training-signal annealing of the supervised CE (off in the official code)
    uda_weight: float = at_least(0, 8.0)  # λ, reached after uda_ramp_steps
    uda_temperature: float = above(0, 0.7)  # the weak view's target is softmax(logits / temperature)
    uda_threshold: float = fraction(0.6, closed=True)  # unlabeled examples whose target's max is below are masked
    uda_ramp_steps: int = at_least(0, 5000)  # λ(t) = uda_weight · min(1, t / uda_ramp_steps)


@dataclass
class UDASettings(UDALosses):
    """The config's `method` section for method.name=uda (flat: method.uda_weight, ...)."""

    READS_UNLABELED: ClassVar[bool] = True
    READS_STORED: ClassVar[bool] = False


@dataclass
class PseudoLabelSettings:
    """The config's `method` section for method.name=pseudo_label."""

    READS_UNLABELED: ClassVar[bool] = True
    READS_STORED: ClassVar[bool] = False

    teacher_fraction: float = ranged(0.5, lambda v: 0 < v < 1, "in (0, 1)")  # share of the steps training the teacher
    label_smoothing: float = fraction(0.0)  # ε of the teacher's supervised CE
    student_label_smoothing: float = fraction(0.0)  # ε of the student's CE on pseudo labels
    soft: bool = False  # the student learns the teacher's distribution instead of its argmax


TEACHER_SIGNALS = ("mpl", "shuffled", "none")


@dataclass
class FeedbackSettings:
    """How the student's step is credited to the teacher (docs/method.md#feedback-modes): the `method.feedback`
    section of mpl and reduced_mpl, whichever the teacher."""

    # The key a field had in the flat method section of config formats 1 and 2, where it is not the field's name.
    FLAT_NAMES: ClassVar[dict[str, str]] = {"mode": "feedback"}

    mode: str = choice("hard", ("hard", "soft", "official"))
    h: str = choice("dot", ("dot", "cosine", "taylor"))  # hard: the estimate of the student's improvement
    sampling: str = choice("sample", ("sample", "argmax"))  # hard: ŷ ~ T(x_u_strong), or its argmax
    h_sign: int = choice(1, (1, -1))  # 1: h > 0 when the student improved (the paper); -1 flips the feedback
    baseline: bool = True  # subtract b, a moving average of h
    baseline_decay: float = fraction(0.99)
    # hard: CE(ŷ, T) averaged over the batch (the code's scale) or summed (the unbiased estimate, docs/method.md#hard-labels)
    reinforce_reduction: str = choice("mean", ("mean", "sum"))
    student_label_smoothing: float = fraction(0.0)  # ε of the student's CE on pseudo labels
    # the teacher's MPL term: mpl (the feedback), shuffled (h of a random earlier step: the control with the same
    # distribution and no information about this step; hard and official), none (no MPL term; docs/method.md#controls)
    teacher_signal: str = choice("mpl", TEACHER_SIGNALS)
    shuffle_buffer: int = at_least(1, 256)  # shuffled: the earlier steps' h drawn from (the latest this many)

    def check(self) -> None:
        """Settings that conflict with each other (the methods' constructors and config.validate call it)."""
        if self.teacher_signal == "shuffled" and self.mode == "soft":
            raise ConfigError(
                "method.feedback.teacher_signal=shuffled needs a scalar h to shuffle, which method.feedback.mode=soft "
                "has not; set method.feedback.mode=hard"
            )

    def check_student_optimizer(self, optimizer: str) -> None:
        """The feedback credits the teacher with the student's SGD step (θ'_S = θ_S − η_S·g, docs/method.md#adam),
        so the student steps by SGD whenever the feedback is on."""
        if optimizer != "sgd" and self.teacher_signal != "none":
            raise ConfigError(
                f"student.optimizer={optimizer} is not the step MPL's feedback differentiates (the student's SGD "
                "step); set student.optimizer=sgd (teacher.optimizer may be adam), or "
                "method.feedback.teacher_signal=none for no feedback"
            )

    def check_with(self, cfg: Config) -> None:
        """Settings that conflict with the run's other sections (config.validate calls it)."""
        self.check()
        self.check_student_optimizer(cfg.student.optimizer)
        if cfg.train.compile and self.mode == "soft":
            raise ConfigError(
                "train.compile=true does not support method.feedback.mode=soft (its JVP); set train.compile=false"
            )

    def label(self) -> str:
        """'hard/dot', 'soft' or 'official', with ', shuffled h' or 'no feedback' for the controls."""
        mode = f"{self.mode}/{self.h}" if self.mode == "hard" else self.mode
        return {"mpl": mode, "shuffled": f"{mode}, shuffled h", "none": "no feedback"}[self.teacher_signal]


@dataclass
class TeacherLosses(UDALosses):
    """The image-network teacher's own losses in MPL (`method.teacher_losses`): UDA's, each part switchable."""

    supervised_loss: bool = True  # the teacher's supervised CE on the labeled batch
    uda: bool = True  # the teacher's UDA consistency loss


@dataclass
class MPLSettings:
    """The config's `method` section for method.name=mpl: the feedback, the image-network teacher's own losses,
    and how its graph is kept."""

    READS_UNLABELED: ClassVar[bool] = True
    READS_STORED: ClassVar[bool] = False
    SIZE_KEYS: ClassVar[tuple[str, ...]] = ("feedback.shuffle_buffer",)  # what the memory check names (budget.py)

    feedback: FeedbackSettings = field(default_factory=FeedbackSettings)
    teacher_losses: TeacherLosses = field(default_factory=TeacherLosses)
    # keep the teacher's graph while the student steps (fastest), or recompute it afterwards (one more teacher
    # forward, about a third less peak memory); the same update either way (docs/method.md#teacher-graph)
    teacher_graph: str = choice("keep", ("keep", "recompute"))

    def check_with(self, cfg: Config) -> None:
        self.feedback.check_with(cfg)


@dataclass
class ReducedTeacherLosses:
    """The reduced teacher's own loss (`method.teacher_losses` of reduced_mpl)."""

    supervised_weight: float = at_least(0, 0.0)  # weight of CE(R(p_l), y_l) on the labeled images' distributions
    label_smoothing: float = fraction(0.0)  # ε of that CE (and, as in MPL, of the student's target in official mode)


@dataclass
class ReducedMPLSettings:
    """The config's `method` section for method.name=reduced_mpl: MPL's feedback, the reduced teacher's width and
    its optional supervised loss."""

    READS_UNLABELED: ClassVar[bool] = True
    READS_STORED: ClassVar[bool] = True
    SIZE_KEYS: ClassVar[tuple[str, ...]] = ("hidden", "feedback.shuffle_buffer")  # what the memory check names

    feedback: FeedbackSettings = field(default_factory=FeedbackSettings)
    teacher_losses: ReducedTeacherLosses = field(default_factory=ReducedTeacherLosses)
    hidden: int = at_least(1, 128)  # the reduced teacher's hidden width (one hidden layer)

    def check_with(self, cfg: Config) -> None:
        """Settings that conflict with the run's other sections (config.validate calls it)."""
        if not cfg.data.label_dir:
            raise ConfigError(
                "method.name=reduced_mpl needs data.label_dir, a teacher's stored class distributions; "
                "run metapl label SOURCE --out DIR first, then --set data.label_dir=DIR"
            )
        self.feedback.check_with(cfg)


# ---------------------------------------------------------------------------------------------- nested keys
FieldPath = tuple[str, ...]


def sections(settings_class: type) -> dict[str, type]:
    """The nested settings classes of a method's settings class, by field name (mpl: feedback, teacher_losses)."""
    hints = typing.get_type_hints(settings_class)
    return {
        f.name: hints[f.name]
        for f in dataclasses.fields(settings_class)
        if isinstance(hints[f.name], type) and dataclasses.is_dataclass(hints[f.name])
    }


def flat_keys(settings_class: type) -> dict[str, FieldPath]:
    """The keys of the flat method section of config formats 1 and 2 (method.h, method.uda_weight, method.feedback)
    → the field path each names now (("feedback", "h"), ...), derived from the nested classes: a nested field's
    flat key is its name, or its class's FLAT_NAMES entry. Flat keys are unique within a method (tests check it)."""
    nested = sections(settings_class)
    table: dict[str, FieldPath] = {}
    for f in dataclasses.fields(settings_class):
        names: list[tuple[str, FieldPath]]
        if f.name in nested:
            renamed = getattr(nested[f.name], "FLAT_NAMES", {})
            names = [
                (renamed.get(inner.name, inner.name), (f.name, inner.name))
                for inner in dataclasses.fields(nested[f.name])
            ]
        else:
            names = [(f.name, (f.name,))]
        for flat, path in names:  # a top-level field and a nested one may not share a flat key either
            if flat in table:
                raise TypeError(f"{settings_class.__name__}: flat key {flat!r} names two fields")
            table[flat] = path
    return table


def leaf_paths(settings_class: type) -> list[FieldPath]:
    """Every settable field's path, nested ones inside their sections, in declaration order."""
    nested = sections(settings_class)
    paths: list[FieldPath] = []
    for f in dataclasses.fields(settings_class):
        if f.name in nested:
            paths += [(f.name, inner.name) for inner in dataclasses.fields(nested[f.name])]
        else:
            paths.append((f.name,))
    return paths


S = typing.TypeVar("S")


def from_flat(settings_class: type[S], **values: typing.Any) -> S:
    """Settings from their flat keys (config formats 1–2): from_flat(MPLSettings, feedback="soft", uda_weight=2.0)
    is MPLSettings(feedback=FeedbackSettings(mode="soft"), teacher_losses=TeacherLosses(uda_weight=2.0)); for code
    written against the flat settings of metapl 0.2. Unchecked, as the dataclasses are (the methods check them)."""
    table = flat_keys(settings_class)
    nested: dict[str, dict[str, typing.Any]] = {}
    top: dict[str, typing.Any] = {}
    for name, value in values.items():
        if name not in table:
            raise TypeError(f"{settings_class.__name__} has no flat key {name!r}; its keys: {', '.join(table)}")
        path = table[name]
        if len(path) == 1:
            top[name] = value
        else:
            nested.setdefault(path[0], {})[path[1]] = value
    classes = sections(settings_class)
    return settings_class(**top, **{name: classes[name](**fields) for name, fields in nested.items()})

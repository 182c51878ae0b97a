"""The methods' settings: the config's `method` section of each method, as dataclasses that declare their defaults
and allowed values. Torch-free, so that the config (and `metapl config`) can be built without importing PyTorch;
each method's module imports its settings from here and registers them in its MethodEntry.

Each class also says which data inputs its method reads, so that the config refuses a setting the method would
ignore (config.unread_inputs) without importing the method: READS_UNLABELED (unlabeled images: data.unlabeled_dir,
data.unlabeled_shards) and READS_STORED (a teacher's stored distributions: data.label_dir)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from metapl.errors import ConfigError
from metapl.settings import above, at_least, choice, fraction, ranged

if TYPE_CHECKING:
    from metapl.config import Config


@dataclass
class SupervisedSettings:
    """The config's `method` section for method.name=supervised."""

    READS_UNLABELED: ClassVar[bool] = False
    READS_STORED: ClassVar[bool] = False

    label_smoothing: float = fraction(0.0)  # ε of the label-smoothed CE


TSA_SCHEDULES = ("none", "linear", "log", "exp")


@dataclass
class UDASettings:
    """The config's `method` section for method.name=uda; also the teacher's auxiliary losses in MPL."""

    READS_UNLABELED: ClassVar[bool] = True
    READS_STORED: ClassVar[bool] = False

    label_smoothing: float = fraction(0.0)  # ε of the supervised CE
    tsa: str = choice(
        "none", TSA_SCHEDULES
    )  # training-signal annealing of the supervised CE (off in the official code)
    uda_weight: float = at_least(0, 8.0)  # λ, reached after uda_ramp_steps
    uda_temperature: float = above(0, 0.7)  # the weak view's target is softmax(logits / temperature)
    uda_threshold: float = fraction(0.6, closed=True)  # unlabeled examples whose target's max is below are masked
    uda_ramp_steps: int = at_least(0, 5000)  # λ(t) = uda_weight · min(1, t / uda_ramp_steps)


@dataclass
class PseudoLabelSettings:
    """The config's `method` section for method.name=pseudo_label."""

    READS_UNLABELED: ClassVar[bool] = True
    READS_STORED: ClassVar[bool] = False

    teacher_fraction: float = ranged(0.5, lambda v: 0 < v < 1, "in (0, 1)")  # share of the steps training the teacher
    label_smoothing: float = fraction(0.0)  # ε of the teacher's supervised CE
    student_label_smoothing: float = fraction(0.0)  # ε of the student's CE on pseudo labels
    soft: bool = False  # the student learns the teacher's distribution instead of its argmax


@dataclass
class FeedbackSettings:
    """How the student's step is credited to the teacher (docs/method.md#feedback-modes)."""

    READS_UNLABELED: ClassVar[bool] = True
    READS_STORED: ClassVar[bool] = False

    feedback: str = choice("hard", ("hard", "soft", "official"))
    h: str = choice("dot", ("dot", "cosine", "taylor"))  # hard: the estimate of the student's improvement
    sampling: str = choice("sample", ("sample", "argmax"))  # hard: ŷ ~ T(x_u_strong), or its argmax
    h_sign: int = choice(1, (1, -1))  # 1: h > 0 when the student improved (the paper); -1 flips the feedback
    baseline: bool = True  # subtract b, a moving average of h
    baseline_decay: float = fraction(0.99)
    # hard: CE(ŷ, T) averaged over the batch (the code's scale) or summed (the unbiased estimate, docs/method.md#hard-labels)
    reinforce_reduction: str = choice("mean", ("mean", "sum"))
    student_label_smoothing: float = fraction(0.0)  # ε of the student's CE on pseudo labels

    def check_with(self, cfg: Config) -> None:
        """Settings that conflict with the run's other sections (config.validate calls it)."""
        if cfg.train.compile and self.feedback == "soft":
            raise ConfigError(
                "train.compile=true does not support method.feedback=soft (its JVP); set train.compile=false"
            )

    def feedback_label(self) -> str:
        """'hard/dot', 'soft' or 'official', for plots and tables."""
        return f"{self.feedback}/{self.h}" if self.feedback == "hard" else self.feedback


@dataclass
class MPLSettings(FeedbackSettings, UDASettings):
    """The config's `method` section for method.name=mpl: the feedback, and the teacher's auxiliary losses
    (UDA's settings, each part switchable)."""

    supervised_loss: bool = True  # the teacher's supervised CE on the labeled batch
    uda: bool = True  # the teacher's UDA consistency loss
    # keep the teacher's graph while the student steps (fastest), or recompute it afterwards (one more teacher
    # forward, about a third less peak memory); the same update either way (docs/method.md#teacher-graph)
    teacher_graph: str = choice("keep", ("keep", "recompute"))


@dataclass
class ReducedMPLSettings(FeedbackSettings):
    """The config's `method` section for method.name=reduced_mpl: MPL's feedback settings, the reduced teacher's
    width, its optional supervised loss and the teacher signal of the experiment's controls."""

    READS_STORED: ClassVar[bool] = True
    SIZE_KEYS: ClassVar[tuple[str, ...]] = ("hidden", "shuffle_buffer")  # what the memory check names (budget.py)

    hidden: int = at_least(1, 128)  # the reduced teacher's hidden width (one hidden layer)
    # mpl: MPL's feedback; shuffled: h of a random earlier step (hard/official); none: no feedback term
    teacher_signal: str = choice("mpl", ("mpl", "shuffled", "none"))
    supervised_weight: float = at_least(0, 0.0)  # weight of CE(R(p_l), y_l) on the labeled images' distributions
    label_smoothing: float = fraction(0.0)  # ε of that CE (and, as in MPL, of the student's target in official mode)
    shuffle_buffer: int = at_least(1, 256)  # shuffled: the earlier steps' h drawn from (the latest this many)

    def check_with(self, cfg: Config) -> None:
        """Settings that conflict with the run's other sections (config.validate calls it)."""
        if not cfg.data.label_dir:
            raise ConfigError(
                "method.name=reduced_mpl needs data.label_dir, a teacher's stored class distributions; "
                "run metapl label SOURCE --out DIR first, then --set data.label_dir=DIR"
            )
        super().check_with(cfg)
        check_teacher_signal(self)


def check_teacher_signal(settings: ReducedMPLSettings) -> None:
    if settings.teacher_signal == "shuffled" and settings.feedback == "soft":
        raise ConfigError(
            "method.teacher_signal=shuffled needs a scalar h to shuffle, which method.feedback=soft has not; "
            "set method.feedback=hard"
        )

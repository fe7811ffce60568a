"""One module per stage kind; each ``run(stage, ctx, folder) -> summary`` trains or labels
into RUN/<stage> and returns what its summary.json records. A new kind is one module here
and one line in `RUNNERS`.
"""

from collections.abc import Callable
from pathlib import Path

from tsmixit.training.fit import StageContext
from tsmixit.training.plan import Stage
from tsmixit.training.stages import (
    finetune,
    label,
    pretrained,
    remixit,
    self_remixing,
    semi_mixit,
    sparse_mixit,
    student,
    supervised,
    teacher,
)

RUNNERS: dict[str, Callable[[Stage, StageContext, Path], dict]] = {
    "pretrained": pretrained.run,
    "teacher": teacher.run,
    "label": label.run,
    "student": student.run,
    "finetune": finetune.run,
    "supervised": supervised.run,
    "semi_mixit": semi_mixit.run,
    "sparse_mixit": sparse_mixit.run,
    "remixit": remixit.run,
    "self_remixing": self_remixing.run,
}

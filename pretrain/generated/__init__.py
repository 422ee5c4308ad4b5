"""The generated datasets, one module each, drawn with one shape generator (`shapes`) and published atomically
(`publish`): the embedded classification set (`embedded`, `simsiam make-data`), its detection twin
(`embedded_detection`) and the ImageNet- and VOC/COCO-shaped rehearsal trees (`rehearsal`)."""

from ..errors import InputError


class GeneratedDataError(InputError, ValueError):
    """An argument the generators refuse (a size, a count, a shape name): one line, exit code 2."""


class TargetExistsError(InputError, FileExistsError):
    """The output folder holds something the generator would not overwrite: one line, exit code 2."""

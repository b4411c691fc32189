"""One exception hierarchy for everything vla-compress reports to a user.

Every error names the file (or object) it is about and what is wrong with it, so a
user can fix the input without reading a traceback.
"""

from __future__ import annotations

from pathlib import Path


class VLACompressError(Exception):
    """Base class: the CLI turns these into a one-line message and exit code 2."""


class CheckpointError(VLACompressError):
    """A checkpoint directory or file is missing, malformed or does not match its config."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class UnsafeFileError(CheckpointError):
    """A file would need unpickling (arbitrary code execution) and no opt-in was given."""


class DatasetError(VLACompressError):
    """A dataset directory is not a valid LeRobot-layout dataset."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ConfigError(VLACompressError):
    """A user-supplied configuration (recipe, pass config, hardware file) is invalid."""


class PassError(ConfigError):
    """A compression pass cannot run as configured: a bad pass config (names the pass and the key),
    a `where:` scope naming an unknown component or a pattern that matches nothing, a missing
    calibration set or teacher, or a model family the pass does not support."""


class ObservationError(VLACompressError):
    """An observation does not match what the model expects (camera, image shape, state size)."""


class ExportError(VLACompressError):
    """An export or a parity validation could not be carried out (names the artifact or file)."""

    def __init__(self, path: str | Path, problem: str):
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class OutputError(VLACompressError, OSError):
    """A result cannot be written: no space left, a read-only folder, no permission (names the file).
    Also an OSError, so code that tolerates a failed write (best-effort records) still does."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ExecutorError(VLACompressError):
    """Episodes could not be run: an executor's workers kept being lost (a dead Ray actor or node),
    which is not a failure of the policy."""


class SimulationError(VLACompressError):
    """The simulator could not be created or rendered (missing GL backend, unknown task)."""


class HardwareError(ConfigError):
    """A hardware profile (hardware/*.yaml) or its calibration file is missing or invalid.

    The message names the file, the line where YAML gives one, and the key path inside the file
    (`power_modes.MAXN.peak_tflops.fp16`), so the fix is one edit away.
    """

    def __init__(self, path: str | Path | None, problem: str, key: str = "", line: int | None = None):
        self.path = Path(path) if path is not None else None
        self.key = key
        self.line = line
        self.problem = problem
        where = "" if self.path is None else f"{self.path}{f':{line}' if line else ''}: "
        super().__init__(f"{where}{f'{key}: ' if key else ''}{problem}")

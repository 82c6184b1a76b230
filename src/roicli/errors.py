"""roicli's exception types. The CLI maps them to one-line messages and exit codes."""


class RoicliError(Exception):
    """Base class of every error roicli raises on purpose.

    `param` names the parameter(s) of the Python API the error is about (`"chunk_size"`, or a tuple).
    The message may mark where a parameter is named with `{name}`: `str(e)` words it as the API's
    name (`chunk_size: expected ...`), and the CLI words it as its flag (`--chunk-size: expected ...`)
    with `e.worded(flag_of)`."""

    exit_code = 1

    def __init__(self, message: str = "", *args, param: str | tuple[str, ...] | None = None):
        self.params = (param,) if isinstance(param, str) else tuple(param or ())
        self.param = self.params[0] if self.params else None
        self.template = message
        super().__init__(self.worded(), *args)

    def worded(self, name=None) -> str:
        """The message with each marked parameter as `name(param)` (default: the parameter itself)."""
        text = self.template
        for p in self.params:
            text = text.replace("{" + p + "}", name(p) if name else p)
        return text


class ValidationError(RoicliError, ValueError):
    """An argument has the wrong shape, type, value or device ("expected X, got Y")."""


class InputError(RoicliError):
    """An input file or stream cannot be read or parsed; the message names the file/row/field."""


class OutputError(RoicliError):
    """An output cannot be written where it was asked for. `errno` is the OS error's, when there was
    one (ENOSPC: the disk is full)."""

    def __init__(self, message: str, errno: int | None = None, *, param: str | tuple[str, ...] | None = None):
        super().__init__(message, param=param)
        self.errno = errno


class EngineError(RoicliError):
    """An execution engine (a Ray cluster) refused the job or failed under it."""


class UsageError(RoicliError):
    """Options that do not fit together (exit code 2, like a usage error)."""

    exit_code = 2


class ExportUnsupported(RoicliError):
    """An op (or one of its modes) has no equivalent in the export format asked for (e.g. ONNX)."""


class KernelUnavailable(RoicliError):
    """A forced kernel implementation (ROICLI_KERNEL or `roicli.ops.kernels.use`) cannot run here."""


class Terminated(BaseException):
    """SIGTERM arrived: raised in the main thread so that every `finally`/cleanup runs, like Ctrl-C.

    A BaseException (like KeyboardInterrupt), so that `except Exception` blocks do not swallow it."""

    exit_code = 143


class ResourceError(RoicliError):
    """The work cannot fit in the memory (or other resources) available; found before it starts."""


class StdoutClosed(OutputError):
    """The reader of stdout went away before all the data was written (EPIPE): exit 141, like SIGPIPE."""

    exit_code = 141

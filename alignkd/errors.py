"""Which exceptions are the user's to fix, and the one line that tells them.

A cause outside the program (bad input, a missing or unreadable file, a full disk, an interrupted
or concurrent run) is answered with `error: <what and where>; <what to do>` and exit code 1. Any
other exception is a bug in alignkd and keeps its traceback. `alignkd --debug ...` or
ALIGNKD_DEBUG=1 shows the traceback for every error.

The packages keep their own error classes (they must not import the CLI); they are listed here by
qualified name, so this module imports none of them (no torch at start-up for `alignkd --help`).
"""

from __future__ import annotations

import errno
import os


class UserError(Exception):
    """Base for errors whose message is meant for the user as is (one line, naming the path)."""


# errors of the packages whose messages already name the file/record/field and the fix
USER_ERRORS = frozenset({
    "alignkd.errors.UserError",
    "cache_schema.errors.CacheError",
    "pipeline.workflow.WorkflowError",
    "pipeline.data.ManifestError",
    "pipeline.models.config.ModelConfigError",
    "pipeline.models.checkpoint.CheckpointError",
    "pipeline.templates.TemplateError",
    "pipeline.tokenizer_load.TokenizerLoadError",
    "toy_world.generate.WorldError",
    "teacher_dump.validate.DumpInputError",
    "teacher_dump.run.DumpError",
    "teacher_dump.lock.DumpLockedError",
    "student_train.plan.PlanError",
    "student_train.checkpoint.ResumeError",
    "student_train.data.store_check.StoreMismatchError",
    "student_train.teacher_projector.TowerMismatchError",
    "student_train.data.dataset.CacheMismatchError",
    "student_train.losses.presets.LossConfigError",
    "student_train.engine.EngineConfigError",
    "alignkd.reproduce_plan.BudgetMismatch",
})

# OS errors caused by the environment, with what to do about them
_OS_HINTS = {
    errno.ENOENT: "check the path (a workflow key or an option names it)",
    errno.EACCES: "check its permissions, or point the workflow/option at a path you can read and write",
    errno.EPERM: "check its permissions, or point the workflow/option at a path you can read and write",
    errno.EROFS: "the filesystem is read-only: write to another directory",
    errno.EISDIR: "a file was expected here, not a directory",
    errno.ENOTDIR: "a directory was expected here, not a file",
    errno.ENOSPC: "the disk is full: free space and re-run the same command (interrupted runs resume)",
    errno.EDQUOT: "the disk quota is exhausted: free space and re-run the same command",
}
_BY_CLASS = ((FileNotFoundError, errno.ENOENT), (PermissionError, errno.EACCES), (IsADirectoryError, errno.EISDIR),
             (NotADirectoryError, errno.ENOTDIR))


def debug_enabled() -> bool:
    return os.environ.get("ALIGNKD_DEBUG", "").strip() not in ("", "0", "false", "no")


def _names(exc: BaseException) -> set[str]:
    return {f"{c.__module__}.{c.__qualname__}" for c in type(exc).__mro__}


def user_message(exc: BaseException) -> str | None:
    """The `error: ...` text for a cause outside the program, None for a bug (keep the traceback)."""
    if _names(exc) & USER_ERRORS:
        return str(exc).strip() or type(exc).__name__
    if isinstance(exc, RecursionError):
        return None
    if isinstance(exc, OSError) and exc.errno is None:  # raised without errno (pyarrow: FileNotFoundError(path))
        code = next((e for cls, e in _BY_CLASS if isinstance(exc, cls)), None)
        if code is None:
            return None
        where = " ".join(map(str, exc.args)) or ""
        what = os.strerror(code)
        return f"{what}: {where}; {_OS_HINTS[code]}" if where else f"{what}; {_OS_HINTS[code]}"
    if isinstance(exc, OSError) and exc.errno in _OS_HINTS:
        where = exc.filename if exc.filename is not None else ""
        if exc.filename2 is not None:
            where = f"{where} -> {exc.filename2}"
        what = exc.strerror or type(exc).__name__
        return f"{what}: {where}; {_OS_HINTS[exc.errno]}" if where else f"{what}; {_OS_HINTS[exc.errno]}"
    return None

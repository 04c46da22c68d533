"""The command line's one error policy: a user error is one line on stderr and exit status 2,
a failed run (a non-finite loss) exit 1, an interrupt exit 130; never a traceback."""

from __future__ import annotations

import os
import sys
from typing import Callable

from feature3dgs.training.distributed import DistributedError
from feature3dgs.training.trainer import NonFiniteLossError
from feature3dgs.utils.optional import MissingDependencyError

__all__ = ["CLIError", "run_command", "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_INTERRUPTED"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class CLIError(Exception):
    """A user error found by a command (bad option values, missing inputs)."""


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename is not None and str(e.filename) not in str(e):
        text = f"{e.strerror or e}: {e.filename}"
    else:
        text = str(e) or type(e).__name__
    return " ".join(text.split())


def run_command(name: str, handler: Callable[[], int]) -> int:
    """Run ``handler`` under the error policy; returns the exit status."""
    try:
        return handler()
    except (NonFiniteLossError, DistributedError) as e:
        print(f"feature3dgs {name}: error: {_one_line(e)}", file=sys.stderr)
        if isinstance(e, DistributedError) and e.peer_lost:
            # The process group is broken; tearing it down at exit can abort the process
            # ("terminate called without an active exception", status -6). Leave now.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_FAILED)
        return EXIT_FAILED
    except (CLIError, ValueError, MissingDependencyError, OSError) as e:
        print(f"feature3dgs {name}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as e:  # a TrainingInterrupted says where its checkpoint went
        print(f"feature3dgs {name}: {e or 'interrupted'}", file=sys.stderr)
        return EXIT_INTERRUPTED

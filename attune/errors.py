"""The project's error tree, split by what the caller does with the error.

    AttuneError
    ├── InputError            bad input from a user or a message: reject it (exit 2 / nack)
    │   ├── ConfigError       config file, env override or profile is invalid
    │   └── MessageError      an AMQP body that cannot be decoded into a known message
    ├── ExecutionError        this execution cannot run: record it `failed` with the reason
    │   └── UnreadableExecution   its row cannot be read; carries what names it
    ├── SandboxUnavailable    the host cannot provide the sandbox: refuse to run anything
    └── TransientError        a server is unreachable or busy: retry later, lose nothing

Third-party exceptions (psycopg, aiormq, OSError from bwrap) are translated into these
at the adapter that imports the library, so the rest of the code never sees them.
"""


class AttuneError(Exception):
    """Base of every error this project raises on purpose."""


class InputError(AttuneError):
    """The input is wrong; retrying the same input cannot help."""


class ConfigError(InputError):
    """A config file, environment override or runtime profile is invalid."""


class MessageError(InputError):
    """A broker message cannot be decoded; it is rejected without requeue."""


class ExecutionError(AttuneError):
    """The execution cannot run (missing code, escaping path, bad secret...)."""


class UnreadableExecution(ExecutionError):
    """A claimed row (or its action's row) has a shape the worker cannot read.

    The claim is rolled back; the ids travel with the error so the pipeline can still
    record the execution `failed` and announce it by name.
    """

    def __init__(
        self, reason: str, *, execution_id: int, action_id: int | None, action_ref: str
    ) -> None:
        super().__init__(reason)
        self.execution_id = execution_id
        self.action_id = action_id
        self.action_ref = action_ref


class SandboxUnavailable(AttuneError):
    """The host lacks something the sandbox needs (bwrap, user namespaces, seccomp)."""


class TransientError(AttuneError):
    """A dependency (database, broker) is unavailable for now; the caller retries."""

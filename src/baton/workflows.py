"""Workflows as code, and finding them again from any process.

A run records where its workflow is defined (``path/to/file.py:name`` or
``package.module:name``) so that whichever worker picks it up can load the same code.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from .errors import UsageError, WorkflowNotFound
from .sensitive.seal import hints_of
from .signatures import evaluated_signature, model_from_parameters, validate

if TYPE_CHECKING:
    from .engine.context import Context

_FILE_MODULES: dict[str, Path] = {}
# Imports are process-wide state; a worker running several runs loads files from several
# threads, and none may see a module before it has finished executing.
_IMPORT_LOCK = threading.RLock()


@dataclass(eq=False)
class Workflow:
    """A deterministic function of ``(ctx, **input)`` that reaches the world only via ``ctx``."""

    fn: Callable[..., Any]
    name: str
    sensitive: tuple[str, ...] = ()
    """Keys of the input and result whose values are sensitive (besides parameters
    marked ``Annotated[..., Sensitive]``)."""

    def __post_init__(self) -> None:
        self.is_async = inspect.iscoroutinefunction(self.fn)
        signature = evaluated_signature(self.fn)
        params = list(signature.parameters.values())
        if not params:
            raise TypeError(f"workflow {self.name} must take a Context as its first parameter")
        self.input_model = model_from_parameters(f"{self.name}_input", params[1:])
        self.hints = hints_of({p.name: p.annotation for p in params[1:]}, signature.return_annotation,
                              self.sensitive)

    def __call__(self, ctx: Context, /, **kwargs: Any) -> Any:
        return self.fn(ctx, **kwargs)

    @property
    def ref(self) -> str:
        """Where to load this workflow from in another process."""
        module = sys.modules.get(self.fn.__module__)
        path = _FILE_MODULES.get(self.fn.__module__)
        if path is None and self.fn.__module__ == "__main__" and module is not None:
            main_file = getattr(module, "__file__", None)
            path = Path(main_file).resolve() if main_file else None
        if path is not None:
            return f"{path}:{self.fn.__name__}"
        return f"{self.fn.__module__}:{self.fn.__name__}"

    def validate_input(self, data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Check a run's input against the signature. Returns (python values, JSON values)."""
        return validate(self.input_model, data, what=f"input for workflow {self.name}", error=UsageError)


@overload
def workflow(fn: Callable[..., Any], /) -> Workflow: ...


@overload
def workflow(*, name: str | None = None,
             sensitive: Iterable[str] = ()) -> Callable[[Callable[..., Any]], Workflow]: ...


def workflow(
    fn: Callable[..., Any] | None = None, /, *, name: str | None = None, sensitive: Iterable[str] = ()
) -> Workflow | Callable[[Callable[..., Any]], Workflow]:
    """Declare a workflow: ``def refund(ctx: Context, order_id: str, amount: float)``.

    On resume the function runs again from the top; every ``ctx`` call already in the
    journal returns its recorded result without running, so the code must reach the world
    only through ``ctx`` and make the same calls in the same order for the same input.

    ``sensitive`` names input and result keys whose values are sealed (encrypted at rest,
    masked when shown), like parameters marked ``Annotated[str, Sensitive]``.
    """

    def wrap(f: Callable[..., Any]) -> Workflow:
        return Workflow(fn=f, name=name or f.__name__, sensitive=tuple(sensitive))

    return wrap(fn) if fn is not None else wrap


def _import_file(path: Path) -> Any:
    module_name = "baton_user_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise WorkflowNotFound(f"cannot load {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    sys.modules[module_name] = module
    _FILE_MODULES[module_name] = path
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        del sys.modules[module_name]
        raise WorkflowNotFound(f"cannot load {path}: {type(exc).__name__}: {exc}") from exc
    return module


def load_workflow(ref: str) -> Workflow:
    """Load ``path/to/file.py:name`` or ``package.module:name``."""
    with _IMPORT_LOCK:
        return _load_workflow(ref)


def _load_workflow(ref: str) -> Workflow:
    target, sep, attr = ref.rpartition(":")
    if not sep or not target or not attr:
        raise WorkflowNotFound(f"{ref!r} is not FILE.py:WORKFLOW or module:WORKFLOW")
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target).expanduser().resolve()
        if not path.is_file():
            raise WorkflowNotFound(f"workflow file {target} does not exist")
        module = _import_file(path)
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as exc:
            raise WorkflowNotFound(f"cannot import module {target!r}: {exc}") from None
        except Exception as exc:
            raise WorkflowNotFound(f"cannot load {target}: {type(exc).__name__}: {exc}") from exc
    found = getattr(module, attr, None)
    if found is None:
        raise WorkflowNotFound(f"{target} has no workflow named {attr!r}")
    if not isinstance(found, Workflow):
        raise WorkflowNotFound(f"{target}:{attr} is not decorated with @workflow")
    return found


def canonical_ref(ref: str) -> str:
    """The form of ``ref`` that works from any working directory."""
    target, _, attr = ref.rpartition(":")
    if target.endswith(".py") or "/" in target:
        return f"{Path(target).expanduser().resolve()}:{attr}"
    return ref

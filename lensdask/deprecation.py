"""Old names that still work for a while: renamed keyword arguments and renamed functions.

Both warn with a :class:`DeprecationWarning` that names the replacement, so callers can move at
their own pace::

    @renamed_keywords(data="store")
    def train(store, out): ...

    gallery = renamed_function(gallery_html, "lensdask.review.gallery")
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def renamed_keywords(**old_to_new: str) -> Callable[[F], F]:
    """Decorate a function whose keyword arguments were renamed: ``old=`` still works, with a warning.

    Parameters
    ----------
    **old_to_new : str
        Each old keyword and the parameter that replaced it.

    A call that gives both the old and the new name (the new one by keyword or by position) is a
    :class:`TypeError` that shows the current signature, so an old positional order never runs
    on swapped inputs.
    """

    def decorate(func: F) -> F:
        params = list(inspect.signature(func).parameters)
        missing = [new for new in old_to_new.values() if new not in params]
        if missing:
            raise ValueError(f"{func.__qualname__} has no parameter {missing[0]!r}")
        shown = (
            f"{func.__name__}({', '.join(params[:3])}, ...)"
            if len(params) > 3
            else f"{func.__name__}({', '.join(params)})"
        )

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in old_to_new.items():
                if old not in kwargs:
                    continue
                if new in kwargs or params.index(new) < len(args):
                    raise TypeError(
                        f"{func.__name__}() got {new!r} twice: {old}= is the old name of {new}=; "
                        f"the signature is now {shown}"
                    )
                warnings.warn(f"{func.__name__}({old}=...) is deprecated; use {new}=", DeprecationWarning, stacklevel=2)
                kwargs[new] = kwargs.pop(old)
            return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def renamed_function(func: F, old: str) -> F:
    """``func`` under its old name ``old`` (dotted, for the message): calling it warns and names ``func``."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        warnings.warn(f"{old} is deprecated; use {func.__module__}.{func.__name__}", DeprecationWarning, stacklevel=2)
        return func(*args, **kwargs)

    wrapper.__name__ = wrapper.__qualname__ = old.rsplit(".", 1)[-1]
    return wrapper  # type: ignore[return-value]

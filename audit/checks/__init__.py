"""Audit checks: one module each, registered in :data:`audit.checks.base.REGISTRY` (run in import order).

To add a check, write ``audit/checks/<name>.py`` with a class decorated by ``@register`` and import it below.
"""

from audit.checks import agreement, distribution, mistakes  # noqa: F401  (registration order = run order)
from audit.checks.base import REGISTRY, Check, CheckContext, CheckError, CheckInputError, CheckResult, register

__all__ = ["REGISTRY", "Check", "CheckContext", "CheckError", "CheckInputError", "CheckResult", "register"]

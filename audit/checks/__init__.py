"""Audit checks: one module each, registered in :data:`audit.checks.base.REGISTRY` (run in import order).

To add a check, write ``audit/checks/<name>.py`` with a subclass of :class:`Check` decorated by ``@register`` and
import it below. The order matters where a check reads an earlier one's result (``context.prior``): ``mistakes``
audits ``agreement``'s consensus, ``review`` measures ``mistakes``' flags. Image-level checks run before the
object-level ones (boxes and mask regions, see :mod:`audit.objects`).
"""

# ruff: noqa: I001, F401  (the import order is the run order)
from audit.checks import agreement, distribution
from audit.checks import mistakes
from audit.checks import review
from audit.checks import duplicates, outliers, quality
from audit.checks import mask_stats, mask_agreement, mask_mistakes
from audit.checks import object_distribution, object_agreement, object_mistakes, object_detection
from audit.checks.base import REGISTRY, Check, CheckContext, CheckError, CheckInputError, CheckResult, register

__all__ = ["REGISTRY", "Check", "CheckContext", "CheckError", "CheckInputError", "CheckResult", "register"]

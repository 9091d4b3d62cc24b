"""Names of the numeric features that describe an action (a model) to a policy.

They live at the lowest layer because both the policies (``router.policy``) and the event
export (``router.events.dsjson``) name the same columns, and neither may import the other.
"""

from __future__ import annotations

ACTION_FEATURES = ("log_usd_in", "log_usd_out", "log_ttft", "log_speed", "log_context")

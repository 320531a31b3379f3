"""Removal safety: refuse plans that would remove too many people at once.

A typo in a group (``@eng`` → ``@egn``) can empty a 1,000-member chat. Like
octoDNS's update/delete thresholds and peribolos's maximum removal delta,
apply refuses such a plan unless ``--force``. Small chats are exempt from the
percentage rule (octoDNS's MIN_EXISTING_RECORDS idea): removing 1 of 3 is
housekeeping, not an accident.
"""

from __future__ import annotations

from dataclasses import dataclass

from .plan import Action, Plan

DEFAULT_MAX_REMOVAL_PCT = 30.0
#: The percentage rule applies only to chats with at least this many members now.
MIN_EXISTING_MEMBERS = 10


@dataclass(frozen=True)
class Thresholds:
    max_removal_pct: float = DEFAULT_MAX_REMOVAL_PCT
    #: Absolute cap on removals across the whole run; None = no cap.
    max_removals: int | None = None


def removal_violations(plan: Plan, thresholds: Thresholds = Thresholds()) -> tuple[str, ...]:
    """One message per breached threshold, naming the chats and figures; () when safe."""
    problems: list[str] = []
    for c in plan.of(Action.UPDATE):
        if c.live_count >= MIN_EXISTING_MEMBERS and c.remove:
            pct = 100.0 * len(c.remove) / c.live_count
            if pct > thresholds.max_removal_pct:
                problems.append(
                    f"chat {c.key} would lose {len(c.remove)} of its {c.live_count} members ({pct:.0f}%), "
                    f"more than --max-removal-pct {thresholds.max_removal_pct:g}%"
                )
    total = sum(len(c.remove) for c in plan.changes)
    if thresholds.max_removals is not None and total > thresholds.max_removals:
        problems.append(
            f"the run would remove {total} members in all, more than --max-removals {thresholds.max_removals}"
        )
    return tuple(problems)

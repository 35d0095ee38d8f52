"""What the reliability suite tried and saw, kept across its tests for the closing summary
(``conftest.pytest_terminal_summary`` prints it after the run)."""

from __future__ import annotations

from collections import Counter

# (case, status) of every bad input sent
BAD_INPUTS: list[tuple[str, int]] = []
# fuzz cases run, by fuzzer; statuses seen, by fuzzer
FUZZ_CASES: Counter[str] = Counter()
FUZZ_STATUSES: dict[str, Counter[int]] = {}
# one line per load wave, per fault injected and survived
LOAD: list[str] = []
FAULTS: list[str] = []


def bad_input(case: str, status: int) -> None:
    BAD_INPUTS.append((case, status))


def fuzz_case(fuzzer: str, status: int) -> None:
    FUZZ_CASES[fuzzer] += 1
    FUZZ_STATUSES.setdefault(fuzzer, Counter())[status] += 1


def summary_lines() -> list[str]:
    lines = []
    if BAD_INPUTS:
        server_errors = sum(status >= 500 for _, status in BAD_INPUTS)
        lines.append(f"bad inputs: {len(BAD_INPUTS)} cases, 5xx: {server_errors}")
    for fuzzer, n in FUZZ_CASES.items():
        statuses = FUZZ_STATUSES[fuzzer]
        seen = ", ".join(f"{status} x{count}" for status, count in sorted(statuses.items()))
        server_errors = sum(count for status, count in statuses.items() if status >= 500)
        lines.append(f"fuzz ({fuzzer}): {n} cases, 5xx: {server_errors} ({seen})")
    lines += [f"load: {line}" for line in LOAD]
    lines += [f"fault survived: {line}" for line in FAULTS]
    return lines

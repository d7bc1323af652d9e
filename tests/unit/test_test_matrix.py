"""devtools/test_matrix.py: the order `make test` runs its steps in, and
which e2e modules may share the machine (tests/e2e/conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from devtools.test_matrix import CONFIGURATIONS, Configuration, Run, run_steps
from tests.e2e.conftest import SHARES_THE_MACHINE, pytest_collection_modifyitems

E2E = Path(__file__).parents[1] / "e2e"


@dataclass
class FakeProcess:
    name: str
    journal: list[str]
    waited: bool = field(default=False)

    def wait(self) -> int:
        if not self.waited:
            self.journal.append(f"end {self.name}")
            self.waited = True
        return 0


def launches(journal: list[str]) -> Any:
    def launch(configuration: Configuration, step: int, quiet: bool) -> Run:
        name = f"{configuration.name}/{step}"
        journal.append(f"start {name}")
        return Run(configuration, cast(Any, FakeProcess(name, journal)), Path("unused.log"))

    return launch


def test_the_others_run_beside_the_company_step_and_end_before_the_next() -> None:
    first = Configuration("A", {}, [["0"], ["1"], ["2"]], company=1)
    others = [Configuration("B", {}, [["0"]]), Configuration("C", {}, [["0"]])]
    journal: list[str] = []
    runs = run_steps(first, others, launches(journal))
    assert journal == [
        "start A/0",
        "end A/0",
        "start A/1",
        "start B/0",
        "start C/0",
        "end A/1",
        "end B/0",
        "end C/0",
        "start A/2",
        "end A/2",
    ]
    assert [len(runs[name]) for name in "ABC"] == [3, 1, 1]


def test_one_configuration_alone_runs_its_steps_in_order() -> None:
    journal: list[str] = []
    run_steps(Configuration("A", {}, [["0"], ["1"]]), [], launches(journal))
    assert journal == ["start A/0", "end A/0", "start A/1", "end A/1"]


def test_make_test_runs_the_budgeted_e2e_tests_with_nothing_beside() -> None:
    sqlite = CONFIGURATIONS[0]
    assert sqlite.steps[sqlite.company][:2] == ["-m", "e2e and not alone"]
    assert sqlite.steps[sqlite.company + 1][:2] == ["-m", "e2e and alone"]
    assert len(sqlite.steps) == sqlite.company + 2


def test_the_modules_that_share_the_machine_exist_and_hold_no_budget() -> None:
    modules = {path.stem for path in E2E.glob("test_*.py")}
    assert modules >= SHARES_THE_MACHINE
    # Modules whose tests time what they check: never beside anything.
    budgeted = {
        "test_h2_abuse",
        "test_connections",
        "test_faults",
        "test_hostile",
        "test_bench",
        "test_readme",
        "test_migrations",
        "test_s3",
    }
    assert not budgeted & SHARES_THE_MACHINE


@dataclass
class FakeItem:
    path: Path
    marks: list[str] = field(default_factory=list)

    def add_marker(self, mark: pytest.MarkDecorator) -> None:
        self.marks.append(mark.name)


def test_every_e2e_module_but_those_listed_is_marked_alone() -> None:
    items = [
        FakeItem(E2E / "test_h2_abuse.py"),
        FakeItem(E2E / "test_new_module.py"),
        FakeItem(E2E / "test_tus.py"),
        FakeItem(E2E.parent / "app" / "test_files.py"),
    ]
    pytest_collection_modifyitems(cast(Any, items))
    assert [("alone" in item.marks, "e2e" in item.marks) for item in items] == [
        (True, True),
        (True, True),
        (False, True),
        (False, False),
    ]

"""`salary`: the total salary of one department over generated employee records.

Each record is one line of about 240 characters:

```
Employee #00042 | Name: Maria Okafor | Department: Engineering | Title: Staff Engineer |
Salary: $187,450 | Start date: 2016-03-12 | Office: Austin, TX | Status: Full-time |
Email: maria.okafor42@example.com | Phone: 555-0193 | Manager: #00007
```

(one line in the context). The query asks for the total salary of one department
(Engineering unless `department=` says otherwise); the answer is an exact integer and is
scored 1 when it matches, 0 otherwise. This is the seed's example task: easy for code
(a regex and a sum), hard for a model reading 100,000 records in its prompt.
"""

from __future__ import annotations

import random

from rlm.evals.base import Instance, Task, extract_number

FIRST_NAMES = (
    "Aisha", "Alejandro", "Amara", "Anika", "Arjun", "Beatriz", "Chen", "Chloe", "Dmitri",
    "Elena", "Emeka", "Fatima", "Gabriel", "Hana", "Hiroshi", "Ines", "Isaac", "Jamal",
    "Javier", "Jin", "Kavya", "Kofi", "Lars", "Leila", "Lucas", "Maria", "Mateo", "Mei",
    "Nadia", "Noah", "Olga", "Omar", "Priya", "Rafael", "Rosa", "Samir", "Sofia", "Tariq",
    "Tomas", "Uma", "Valentina", "Wei", "Yara", "Yusuf", "Zoe", "Ravi", "Ingrid", "Kenji",
)  # fmt: skip

LAST_NAMES = (
    "Abe", "Alvarez", "Andersen", "Banerjee", "Brown", "Castillo", "Chowdhury", "Costa",
    "Dubois", "Eriksen", "Fernandez", "Garcia", "Haddad", "Ivanova", "Jensen", "Kim",
    "Kowalski", "Lee", "Lopez", "Mbeki", "Moreau", "Nakamura", "Nguyen", "Novak", "Okafor",
    "Olsen", "Patel", "Petrov", "Quinn", "Rossi", "Sato", "Schmidt", "Silva", "Singh",
    "Smith", "Tanaka", "Torres", "Usman", "Varga", "Wang", "Weber", "Wilson", "Yilmaz",
    "Zhang", "Zielinski", "Mensah", "Larsen", "Romero",
)  # fmt: skip

# Department, weight, salary range, titles.
DEPARTMENTS: tuple[tuple[str, int, tuple[int, int], tuple[str, ...]], ...] = (
    ("Engineering", 24, (95_000, 240_000),
     ("Software Engineer", "Senior Engineer", "Staff Engineer", "Engineering Manager")),
    ("Sales", 16, (55_000, 160_000),
     ("Account Executive", "Sales Manager", "Sales Development Rep")),
    ("Marketing", 10, (60_000, 150_000),
     ("Marketing Specialist", "Brand Manager", "Content Strategist")),
    ("Finance", 8, (70_000, 190_000), ("Financial Analyst", "Controller", "Accountant")),
    ("Human Resources", 6, (55_000, 140_000),
     ("HR Generalist", "Recruiter", "People Partner")),
    ("Operations", 10, (50_000, 145_000),
     ("Operations Analyst", "Logistics Lead", "Program Manager")),
    ("Legal", 4, (90_000, 230_000), ("Counsel", "Paralegal", "Compliance Officer")),
    ("Customer Support", 12, (42_000, 95_000),
     ("Support Specialist", "Support Lead", "Success Manager")),
    ("Research", 6, (85_000, 210_000), ("Research Scientist", "Data Scientist")),
    ("Product", 4, (90_000, 220_000), ("Product Manager", "Product Designer")),
)  # fmt: skip

OFFICES = (
    "Austin, TX", "Boston, MA", "Chicago, IL", "Denver, CO", "New York, NY", "Seattle, WA",
    "San Jose, CA", "Atlanta, GA", "Toronto, ON", "London, UK", "Berlin, DE", "Remote",
)  # fmt: skip


STATUSES = ("Full-time", "Full-time", "Full-time", "Part-time", "Contractor")


def department_names() -> list[str]:
    """The departments records are drawn from."""
    return [name for name, *_ in DEPARTMENTS]


class SalaryTask(Task):
    """Total salary of one department over `size` employee records (100 to 100,000+)."""

    name = "salary"
    description = "total salary of one department over generated employee records"
    size_unit = "records"
    default_sizes = (100, 1_000, 10_000, 100_000)
    min_size = 1
    max_size = 2_000_000

    def generate(self, size: int, seed: int = 0, *, department: str = "Engineering") -> Instance:
        """`size` records; the query asks for the total salary of `department`."""
        self.check_size(size)
        names = department_names()
        if department not in names:
            raise ValueError(f"unknown department {department!r}; use one of {names}")
        rng = random.Random(f"rlm-salary:{seed}:{size}")
        width = max(5, len(str(size)))
        weights = [w for _, w, _, _ in DEPARTMENTS]
        lines: list[str] = []
        total = 0
        count = 0
        for number in range(1, size + 1):
            dept, _, (low, high), titles = rng.choices(DEPARTMENTS, weights)[0]
            first = rng.choice(FIRST_NAMES)
            last = rng.choice(LAST_NAMES)
            salary = rng.randrange(low, high, 50)
            start = f"{rng.randint(2004, 2024)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
            manager = rng.randint(1, max(1, min(number, size // 10 + 1)))
            lines.append(
                f"Employee #{number:0{width}d} | Name: {first} {last} | Department: {dept} | "
                f"Title: {rng.choice(titles)} | Salary: ${salary:,} | Start date: {start} | "
                f"Office: {rng.choice(OFFICES)} | Status: {rng.choice(STATUSES)} | "
                f"Email: {first.lower()}.{last.lower()}{number}@example.com | "
                f"Phone: 555-{rng.randint(0, 9999):04d} | Manager: #{manager:0{width}d}"
            )
            if dept == department:
                total += salary
                count += 1
        return Instance(
            task=self.name,
            size=size,
            seed=seed,
            context="\n".join(lines),
            query=(
                f"What is the total salary of all {department} employees? "
                "Answer with the number only."
            ),
            gold=str(total),
            answer_kind="number",
            details={"department": department, "employees_in_department": count},
        )

    def score(self, instance: Instance, answer: str | None) -> float:
        """1 for the exact total (written any usual way: "$1,234", "1234"), else 0."""
        value = extract_number(answer)
        return 1.0 if value is not None and value == float(instance.gold) else 0.0

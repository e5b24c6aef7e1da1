"""Count each model's answers in a whole-answer format their prompt did not ask for, from evaluations' responses.jsonl:
wrapped in double quotes, all lowercase, or all capitals (the edits rewrite pairs teach, and contrast pairs answer).

    python benchmarks/unasked_formats.py runs/demo/eval/responses.jsonl [more responses.jsonl ...]

An answer counts as quoted when it starts with a double quote and its prompt has no `startend:quotation` instruction;
as lowercase or capitals when it has letters, all of one case, and its prompt has no `change_case` instruction.
"""

from __future__ import annotations

import argparse
import json


def unasked(records: list[dict], label: str) -> dict[str, tuple[int, int]]:
    """(answers in that format, answers whose prompt did not ask for it) per format, for the model `label`."""
    counts = {"quoted": [0, 0], "lowercase": [0, 0], "capitals": [0, 0]}
    for record in records:
        ids = record.get("instruction_id_list") or []
        text = record["responses"][label]["text"].strip()
        letters = [c for c in text if c.isalpha()]
        if not any(i == "startend:quotation" for i in ids):
            counts["quoted"][1] += 1
            counts["quoted"][0] += text.startswith('"')
        if not any(i.startswith("change_case:") for i in ids):
            for name, same_case in (("lowercase", str.islower), ("capitals", str.isupper)):
                counts[name][1] += 1
                counts[name][0] += bool(letters) and all(same_case(c) for c in letters)
    return {name: (n, total) for name, (n, total) in counts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("responses", nargs="+", help="an evaluation's responses.jsonl")
    args = parser.parse_args()
    for path in args.responses:
        with open(path, encoding="utf-8") as lines:
            records = [json.loads(line) for line in lines]
        for label in records[0]["responses"]:
            cells = ", ".join(f"{name} {n}/{total}" for name, (n, total) in unasked(records, label).items())
            print(f"{path}: {label}: {cells}")


if __name__ == "__main__":
    main()

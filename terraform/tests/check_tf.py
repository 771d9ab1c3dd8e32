#!/usr/bin/env python3
"""Static checks of the Terraform sources that `terraform fmt` and checkov do not make.

Parses every .tf file under the given directories with python-hcl2 (the parser checkov ships,
bc-python-hcl2) and reports, each with file, line and name:
  - a variable without a non-empty description or without a type;
  - an output without a non-empty description;
  - an IAM policy statement whose actions contain a wildcard ("*", "s3:*", "s3:Get*", ...);
  - an identity-policy statement (one without principals) with Resource "*" whose sid is not in
    the README's table of documented exceptions (the rows of the section whose heading contains
    "exceptions": the first cell holds the sid in backticks). In resource policies (statements
    with principals, e.g. a KMS key policy) Resource "*" means the resource itself and is fine.
Exit 0 when clean, 1 with one line per finding, 2 on unreadable or unparsable input.

Usage: check_tf.py --readme README.md DIR [DIR...]
"""

import argparse
import pathlib
import re
import sys

try:
    import hcl2
except ImportError:  # pragma: no cover - set-up problem, not a finding
    sys.exit("check_tf.py: python-hcl2 is missing (it comes with checkov; run scripts/setup-test-deps.sh)")


def flat(value):
    """hcl2 wraps attribute values in lists; yields the scalars inside."""
    if isinstance(value, list):
        for v in value:
            yield from flat(v)
    else:
        yield value


def first(value):
    for v in flat(value):
        return v
    return None


def documented_exceptions(readme: pathlib.Path) -> set:
    sids, in_section = set(), False
    for line in readme.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            in_section = "exception" in line.lower()
            continue
        if in_section and line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            m = re.fullmatch(r"`([A-Za-z0-9]+)`", cells[0]) if cells else None
            if m:
                sids.add(m.group(1))
    return sids


def statements(node, where):
    """Yields (statement, where) for every policy-document statement, dynamic ones included."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "statement":
                for st in flat(value):
                    if isinstance(st, dict):
                        yield st, where
            elif key == "dynamic":
                for dyn in flat(value):
                    if isinstance(dyn, dict) and "statement" in dyn:
                        for content in flat(dyn["statement"].get("content", [])):
                            if isinstance(content, dict):
                                yield content, where + " (dynamic)"
                    yield from statements(dyn, where)
            else:
                yield from statements(value, where)
    elif isinstance(node, list):
        for v in node:
            yield from statements(v, where)


def check_file(path: pathlib.Path, exceptions: set, findings: list):
    try:
        doc = hcl2.load(path.open(encoding="utf-8"))
    except Exception as e:  # the parser raises several lark error types
        print(f"{path}: cannot parse: {e}", file=sys.stderr)
        sys.exit(2)

    for block in doc.get("variable", []):
        for name, body in block.items():
            line = body.get("__start_line__", "?")
            if not str(first(body.get("description")) or "").strip():
                findings.append(f"{path}:{line}: variable {name} has no description")
            if first(body.get("type")) is None:
                findings.append(f"{path}:{line}: variable {name} has no type")

    for block in doc.get("output", []):
        for name, body in block.items():
            line = body.get("__start_line__", "?")
            if not str(first(body.get("description")) or "").strip():
                findings.append(f"{path}:{line}: output {name} has no description")

    for kind in ("data", "resource"):
        for block in doc.get(kind, []):
            for rtype, named in block.items():
                for rname, body in named.items():
                    where = f"{path}:{body.get('__start_line__', '?')}: {rtype}.{rname}"
                    for st, at in statements(body, where):
                        sid = first(st.get("sid")) or "(no sid)"
                        for key in ("actions", "not_actions"):
                            for action in flat(st.get(key, [])):
                                if "*" in str(action):
                                    findings.append(f"{at}: statement {sid}: wildcard action {action!r}")
                        resources = [str(r) for r in flat(st.get("resources", []))]
                        if "*" in resources and "principals" not in st and sid not in exceptions:
                            findings.append(
                                f"{at}: statement {sid}: Resource \"*\" is not a documented exception in the README"
                            )

    # Policies written as JSON or jsonencode() instead of policy documents.
    text = path.read_text(encoding="utf-8")
    for m in re.finditer(r'"?(Not)?Action"?\s*[:=]\s*\[?\s*"[^"]*\*[^"]*"', text):
        line = text.count("\n", 0, m.start()) + 1
        findings.append(f"{path}:{line}: wildcard action in an inline policy: {m.group(0)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readme", required=True, type=pathlib.Path)
    ap.add_argument("dirs", nargs="+", type=pathlib.Path)
    args = ap.parse_args()

    if not args.readme.is_file():
        print(f"check_tf.py: README {args.readme} not found", file=sys.stderr)
        return 2
    exceptions = documented_exceptions(args.readme)
    files = sorted(
        p for d in args.dirs for p in d.rglob("*.tf") if ".terraform" not in p.parts
    )
    if not files:
        print(f"check_tf.py: no .tf files under {', '.join(map(str, args.dirs))}", file=sys.stderr)
        return 2
    findings = []
    for f in files:
        check_file(f, exceptions, findings)
    for line in findings:
        print(line)
    print(f"check_tf.py: {len(files)} files, {len(findings)} findings, documented exceptions: {sorted(exceptions)}")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
